// SPDX-License-Identifier: Apache-2.0
// Linear probe: features of an ImageFolder dataset (one subfolder per class), a stratified
// 80/20 split, a logistic-regression probe on cat(CLS, mean patch), and its validation scores.
//
//   linear_probe MODEL.pt DATASET_DIR [PROBE_OUT.safetensors]
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/preprocess.hpp>
#include <dinov2/probe.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt DATASET_DIR [PROBE_OUT.safetensors]\n";
    return 2;
  }
  try {
    const dinov2::Model model = dinov2::Model::load(argv[1]);
    const dinov2::Preprocessor pre(dinov2::Recipe::eval_center_crop(256, 224));

    // One class per subfolder, in name order; every file in it is an image.
    std::vector<std::string> classes;
    for (const auto& entry : fs::directory_iterator(argv[2])) {
      if (entry.is_directory()) classes.push_back(entry.path().filename().string());
    }
    std::sort(classes.begin(), classes.end());
    std::vector<at::Tensor> features;
    std::vector<int64_t> labels;
    for (size_t c = 0; c < classes.size(); ++c) {
      std::vector<fs::path> files;
      for (const auto& f : fs::directory_iterator(fs::path(argv[2]) / classes[c])) {
        files.push_back(f.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& file : files) {
        const cv::Mat image = dinov2::load_image(file.string());
        features.push_back(model.extract_features(pre(dinov2::image_view(image))).pooled());
        labels.push_back(static_cast<int64_t>(c));
      }
    }
    const at::Tensor x = at::cat(features);  // [N, 2D]
    const at::Tensor y = at::tensor(labels, at::kLong);

    const dinov2::Split split = dinov2::stratified_split(labels, 0.2, /*seed=*/0);
    const at::Tensor train = at::tensor(split.train, at::kLong);
    const at::Tensor val = at::tensor(split.val, at::kLong);
    auto probe = dinov2::LinearProbe::train(x.index_select(0, train), y.index_select(0, train),
                                            static_cast<int64_t>(classes.size()));
    probe.set_class_names(classes);

    const auto e = dinov2::evaluate(probe.predict(x.index_select(0, val)), y.index_select(0, val),
                                    probe.num_classes());
    std::cout << x.size(0) << " images, " << classes.size() << " classes; validation top-1 "
              << 100.0 * e.top1 << " % (" << e.correct << "/" << e.count << ")\n"
              << "confusion matrix (rows: true, columns: predicted):\n"
              << e.confusion << "\n";
    if (argc > 3) probe.save(argv[3]);
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  } catch (const fs::filesystem_error& e) {
    std::cerr << "cannot read the dataset: " << e.what() << "\n";
    return 1;
  }
}
