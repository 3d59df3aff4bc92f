// SPDX-License-Identifier: Apache-2.0
// Loads the backbone named on the command line and prints the shape of its features for one
// 224 x 224 input. Includes the umbrella header so that every installed header is compiled.
#include <ATen/ops/zeros.h>
#include <dinov2/dinov2.hpp>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt\n";
    return 2;
  }
  try {
    const auto model = dinov2::Model::load(argv[1]);
    const auto features = model.extract_features(at::zeros({1, 3, 224, 224}));
    const auto cls = dinov2::cls_matrix(features);
    std::cout << model.info().variant << ": cls " << features.cls.sizes() << ", patches "
              << features.patches.sizes() << " (dinov2 " << dinov2::kVersion << ", |cls| "
              << cls.row(0).norm() << ")\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << '\n';
    return 1;
  }
}
