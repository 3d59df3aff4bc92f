// SPDX-License-Identifier: Apache-2.0
// Extract features: load a backbone, preprocess images with the official evaluation transform,
// run the model in batches and save the CLS and patch tokens as a safetensors file.
//
//   extract_features MODEL.pt OUT.safetensors IMAGE...
#include <dinov2/io.hpp>
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/preprocess.hpp>

#include <ATen/ATen.h>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt OUT.safetensors IMAGE...\n";
    return 2;
  }
  try {
    const dinov2::Model model = dinov2::Model::load(argv[1]);
    const auto& info = model.info();
    const dinov2::Preprocessor pre(
        dinov2::Recipe::eval_center_crop(256, 224),
        dinov2::Normalization::from({info.mean[0], info.mean[1], info.mean[2]},
                                    {info.std[0], info.std[1], info.std[2]}));

    std::vector<std::string> paths(argv + 3, argv + argc);
    std::vector<at::Tensor> cls, patches;
    const size_t batch_size = 8;
    for (size_t begin = 0; begin < paths.size(); begin += batch_size) {
      // Every image becomes 224 x 224, so any images can share a batch.
      std::vector<cv::Mat> images;
      for (size_t i = begin; i < std::min(paths.size(), begin + batch_size); ++i) {
        images.push_back(dinov2::load_image(paths[i]));
      }
      const dinov2::Batch batch = pre(dinov2::image_views(images));
      const dinov2::Features features = model.extract_features(batch);
      cls.push_back(features.cls.cpu());          // [B, D]
      patches.push_back(features.patches.cpu());  // [B, 16, 16, D]
      std::cout << "extracted " << begin + images.size() << " of " << paths.size() << "\n";
    }

    std::string list;
    for (const auto& p : paths) list += (list.empty() ? "" : "\n") + p;
    dinov2::save_safetensors(
        argv[2], dinov2::NamedTensors{{"cls", at::cat(cls)}, {"patch", at::cat(patches)}},
        {{"variant", info.variant}, {"recipe", pre.recipe().to_string()}, {"paths", list}});
    std::cout << info.variant << ": cls " << at::cat(cls).sizes() << ", patches "
              << at::cat(patches).sizes() << " -> " << argv[2] << "\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
