// SPDX-License-Identifier: Apache-2.0
// PCA visualisation: the first three principal components of the patch features, fitted jointly
// over the given images, as RGB on the foreground (mask from the first component), written as
// one PNG per image and a contact sheet (original | PCA).
//
//   pca_visualize MODEL.pt OUT_DIR IMAGE...
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/pca.hpp>
#include <dinov2/preprocess.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt OUT_DIR IMAGE...\n";
    return 2;
  }
  try {
    const dinov2::Model model = dinov2::Model::load(argv[1]);
    // Aspect ratio kept, longer side about 448: images of different shapes get different grids.
    const dinov2::Preprocessor pre(dinov2::Recipe::patch_aligned(448));
    fs::create_directories(argv[2]);

    std::vector<at::Tensor> patches, originals;
    std::vector<dinov2::PatchGrid> grids;
    for (int i = 3; i < argc; ++i) {
      const cv::Mat image = dinov2::load_image(argv[i]);
      const dinov2::Batch batch = pre(dinov2::image_view(image));
      patches.push_back(model.extract_features(batch).patches[0]);  // [h, w, D]
      grids.push_back(batch.grids[0]);
      // The original as an RGB tensor for the sheet (load_image gives BGR).
      originals.push_back(
          at::from_blob(image.data, {image.rows, image.cols, 3}, at::kByte).flip({2}).clone());
    }

    dinov2::PcaOptions options;
    options.foreground_mask = true;
    const dinov2::PcaColors pca = dinov2::pca_colors(patches, options);

    std::vector<std::vector<at::Tensor>> sheet;
    for (size_t i = 0; i < patches.size(); ++i) {
      const at::Tensor picture = dinov2::upsample_to_original(pca.colors[i], grids[i]);
      const fs::path out = fs::path(argv[2]) / (fs::path(argv[3 + i]).stem().string() + "_pca.png");
      dinov2::save_png(out.string(), picture);
      sheet.push_back({originals[i], picture});
      std::cout << argv[3 + i] << " -> " << out.string() << " ("
                << pca.masks[i].sum().item<int64_t>() << " of " << pca.masks[i].numel()
                << " patches in the foreground)\n";
    }
    const std::string sheet_path = (fs::path(argv[2]) / "sheet.png").string();
    dinov2::save_png(sheet_path, dinov2::contact_sheet(sheet));
    std::cout << "variance of the three components: " << pca.pca.variance()
              << "\nsheet: " << sheet_path << "\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
