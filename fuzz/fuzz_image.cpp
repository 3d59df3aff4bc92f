// SPDX-License-Identifier: Apache-2.0
// Image file bytes -> dinov2::try_decode_image (integrity walk, header pixel limit, OpenCV
// decoder) -> Preprocessor (patch-aligned recipe, ImageNet normalisation).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <string_view>

#include "dinov2/opencv.hpp"
#include "dinov2/preprocess.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dinov2::fuzz::require;
  // A lower pixel limit than the default keeps each run small; the check is the same.
  const auto limits = dinov2::ImageLimits{}.with_max_pixels(int64_t{1} << 22);
  const auto decoded =
      dinov2::try_decode_image(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!decoded.ok()) {
    require(decoded.image.empty(), "a refused image has no pixels");
    return 0;
  }
  const cv::Mat& image = decoded.image;
  require(image.type() == CV_8UC3 && image.rows > 0 && image.cols > 0, "decoded images are 8UC3");
  require(int64_t{image.rows} * image.cols <= limits.max_pixels, "decoded images obey the limit");
  dinov2::fuzz::only_dinov2_errors([&] {
    static const dinov2::Preprocessor pre(dinov2::Recipe::patch_aligned(112, 64));
    const dinov2::Batch batch = pre(dinov2::image_view(image));
    require(batch.pixels.dim() == 4 && batch.grids.size() == 1, "one image in, one out");
    require(batch.pixels.size(2) % 14 == 0 && batch.pixels.size(3) % 14 == 0,
            "the input is a whole number of patches");
    require(batch.grids[0].tokens() <= 64, "the token cap holds");
    require(batch.pixels.isfinite().all().item<bool>(), "normalised pixels are finite");
  });
  return 0;
}
