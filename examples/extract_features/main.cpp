// SPDX-License-Identifier: Apache-2.0
// Extract features: a Pipeline reads the images (decoding on a worker thread while the model
// runs), preprocesses them with the official evaluation transform and the model's normalisation,
// batches them and returns per image its features or why it failed; the CLS and patch tokens of
// the images that could be read are saved as a safetensors file.
//
//   extract_features MODEL.pt OUT.safetensors IMAGE...
#include <dinov2/error.hpp>
#include <dinov2/io.hpp>
#include <dinov2/model.hpp>
#include <dinov2/pipeline.hpp>

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
    const auto model = dinov2::Model::load(argv[1]);
    const dinov2::Pipeline pipeline(model, dinov2::Recipe::eval_center_crop(256, 224));

    std::vector<at::Tensor> cls, patches;
    std::string paths;
    for (auto& r : pipeline.run(dinov2::ImageSource::files({argv + 3, argv + argc}))) {
      if (!r.ok()) {
        std::cerr << "skipped " << r.name << ": " << r.error << "\n";
        continue;
      }
      cls.push_back(r.cls);          // [D]
      patches.push_back(r.patches);  // [16, 16, D]
      paths += (paths.empty() ? "" : "\n") + r.name;
    }
    if (cls.empty()) {
      std::cerr << "none of the images could be read\n";
      return 1;
    }

    const auto& info = model.info();
    dinov2::save_safetensors(
        argv[2], dinov2::NamedTensors{{"cls", at::stack(cls)}, {"patch", at::stack(patches)}},
        {{"variant", info.variant},
         {"recipe", pipeline.preprocessor().recipe().to_string()},
         {"paths", paths}});
    std::cout << info.variant << ": " << cls.size() << " of " << argc - 3 << " images, cls "
              << at::stack(cls).sizes() << " -> " << argv[2] << "\n";
    return cls.size() == static_cast<size_t>(argc - 3) ? 0 : 3;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
