// SPDX-License-Identifier: Apache-2.0
// Depth probe: the official linear depth probe (a head exported with
// `dinov2-export-head --kind depth_linear`) on one image, written as a colour-mapped PNG.
//
//   depth_probe MODEL.pt DEPTH_HEAD.pt IMAGE OUT.png
#include <dinov2/heads.hpp>
#include <dinov2/model.hpp>
#include <dinov2/opencv.hpp>
#include <dinov2/preprocess.hpp>

#include <ATen/ATen.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt DEPTH_HEAD.pt IMAGE OUT.png\n";
    return 2;
  }
  try {
    const dinov2::Model model = dinov2::Model::load(argv[1]);
    // Loading the head for the model checks that it was trained on this backbone.
    const dinov2::DepthHead head = dinov2::DepthHead::load(argv[2], model);
    const auto pre = dinov2::Preprocessor::for_model(model, dinov2::Recipe::patch_aligned(518));
    const cv::Mat image = dinov2::load_image(argv[3]);
    const dinov2::Batch batch = pre(dinov2::image_view(image));

    // The flow runs one way: the model gives the block outputs the head reads, the head predicts.
    const dinov2::LayerFeatures blocks = model.intermediate_layers(batch, head.layers());
    const at::Tensor depth = head.predict(blocks)[0].cpu();  // [H, W] metres
    const float lo = depth.min().item<float>(), hi = depth.max().item<float>();
    // Near is bright: scale from the farthest (0) to the nearest (255) depth of this image.
    const at::Tensor u8 =
        ((hi - depth) / std::max(hi - lo, 1e-6f) * 255.0f).round().to(at::kByte).contiguous();
    const cv::Mat grey(static_cast<int>(u8.size(0)), static_cast<int>(u8.size(1)), CV_8UC1,
                       u8.data_ptr());
    cv::Mat colour, full;
    cv::applyColorMap(grey, colour, cv::COLORMAP_INFERNO);
    cv::resize(colour, full, image.size(), 0, 0, cv::INTER_LINEAR);  // back to the photo's size
    if (!cv::imwrite(argv[4], full)) {
      std::cerr << "cannot write " << argv[4] << "\n";
      return 1;
    }
    std::cout << argv[3] << ": depth " << lo << " .. " << hi << " m (" << head.info().dataset
              << " head, " << batch.grids[0].rows << "x" << batch.grids[0].cols << " patches) -> "
              << argv[4] << "\n";
    return 0;
  } catch (const dinov2::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
