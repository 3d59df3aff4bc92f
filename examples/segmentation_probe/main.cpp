// SPDX-License-Identifier: Apache-2.0
// Segmentation probe: a linear classifier trained on single patch features to predict the class
// under each patch, on a dataset with known masks (scripts/make_probe_data.py writes one), then
// applied to held-out images: logits upsampled bilinearly to the pixels, arg-max, mean IoU.
//
//   segmentation_probe MODEL.pt SEG_DIR      (SEG_DIR/images/*.png, masks/*.png, classes.txt)
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/preprocess.hpp>
#include <dinov2/probe.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt SEG_DIR\n";
    return 2;
  }
  try {
    const fs::path root = argv[2];
    std::vector<std::string> classes;
    std::ifstream names(root / "classes.txt");
    for (std::string line; std::getline(names, line);) {
      if (!line.empty()) classes.push_back(line);
    }
    std::vector<fs::path> files;
    for (const auto& f : fs::directory_iterator(root / "images")) files.push_back(f.path());
    std::sort(files.begin(), files.end());
    const auto num_classes = static_cast<int64_t>(classes.size());

    const dinov2::Model model = dinov2::Model::load(argv[1]);
    const int patch = static_cast<int>(model.info().patch_size);
    const dinov2::Preprocessor pre(dinov2::Recipe::square(224));
    std::vector<at::Tensor> features, patch_labels, masks;
    for (const auto& file : files) {
      const cv::Mat image = dinov2::load_image(file.string());
      const cv::Mat mask =
          cv::imread((root / "masks" / file.filename()).string(), cv::IMREAD_GRAYSCALE);
      const at::Tensor m =
          at::from_blob(mask.data, {mask.rows, mask.cols}, at::kByte).to(at::kLong);
      const at::Tensor p = model.extract_features(pre(dinov2::image_view(image))).patches[0];
      // The label of a patch: the majority class of its pixels, on the mask resized to the input.
      const at::Tensor onehot = at::one_hot(m, num_classes).permute({2, 0, 1}).unsqueeze(0);
      const at::Tensor resized =
          at::upsample_nearest2d(onehot.to(at::kFloat), {p.size(0) * patch, p.size(1) * patch});
      patch_labels.push_back(at::avg_pool2d(resized, {patch, patch}).argmax(1).reshape({-1}));
      features.push_back(p.reshape({-1, p.size(2)}));  // [h*w, D]
      masks.push_back(m);
    }

    // The first two thirds of the images train the probe; the rest measure it.
    const size_t n_train = files.size() * 2 / 3;
    const auto probe = dinov2::LinearProbe::train(
        at::cat(std::vector<at::Tensor>(features.begin(), features.begin() + n_train)),
        at::cat(std::vector<at::Tensor>(patch_labels.begin(), patch_labels.begin() + n_train)),
        num_classes);

    at::Tensor confusion = at::zeros({num_classes, num_classes}, at::kLong);
    for (size_t i = n_train; i < files.size(); ++i) {
      const int64_t h = 224 / patch, w = 224 / patch;
      const at::Tensor logits =
          probe.logits(features[i]).t().reshape({1, num_classes, h, w});  // [1, C, h, w]
      const at::Tensor pixels = at::upsample_bilinear2d(
          logits, {masks[i].size(0), masks[i].size(1)}, /*align_corners=*/false);
      confusion += dinov2::confusion_matrix(pixels.argmax(1)[0], masks[i], num_classes);
    }
    const auto iou = dinov2::iou_per_class(confusion);
    for (size_t c = 0; c < classes.size(); ++c) {
      std::cout << "IoU " << classes[c] << ": " << iou[c] << "\n";
    }
    std::cout << "trained on " << n_train << " images, evaluated on " << files.size() - n_train
              << "; pixel accuracy "
              << confusion.trace().item<double>() / confusion.sum().item<double>()
              << "\nmIoU: " << dinov2::mean_iou(confusion) << "\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  } catch (const fs::filesystem_error& e) {
    std::cerr << "cannot read the dataset: " << e.what() << "\n";
    return 1;
  }
}
