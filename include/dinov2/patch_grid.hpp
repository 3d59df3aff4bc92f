// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief PatchGrid (where each patch of the model input came from) and Batch (model input).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace dinov2 {

/// @brief The patch grid of one preprocessed image and how it maps back to the original pixels.
///
/// The model input covers the rectangle (crop_x, crop_y, crop_width, crop_height) of the
/// original image, in original pixel units, stretched to rows*patch_size x cols*patch_size.
struct PatchGrid {
  int64_t rows = 0;             ///< h: patches per column of the input
  int64_t cols = 0;             ///< w: patches per row of the input
  int patch_size = 14;          ///< pixels per patch side
  int64_t original_height = 0;  ///< the image as given, before preprocessing
  int64_t original_width = 0;
  double crop_x = 0.0;      ///< left edge of the covered region, original pixels
  double crop_y = 0.0;      ///< top edge of the covered region, original pixels
  double crop_width = 0.0;  ///< width of the covered region, original pixels
  double crop_height = 0.0;

  /// @brief Height of the model input in pixels (rows * patch_size).
  int64_t height() const { return rows * patch_size; }
  /// @brief Width of the model input in pixels (cols * patch_size).
  int64_t width() const { return cols * patch_size; }
  /// @brief Number of patch tokens (rows * cols).
  int64_t tokens() const { return rows * cols; }

  /// @brief A grid for a raw model input of height x width pixels with no preprocessing.
  static PatchGrid for_input(int64_t height, int64_t width, int patch = 14) {
    PatchGrid g;
    g.rows = height / patch;
    g.cols = width / patch;
    g.patch_size = patch;
    g.original_height = height;
    g.original_width = width;
    g.crop_width = static_cast<double>(width);
    g.crop_height = static_cast<double>(height);
    return g;
  }
};

/// @brief A model input: normalised pixels and the grid of each image.
struct Batch {
  at::Tensor pixels;             ///< [B, 3, H, W] float32, CPU, ImageNet-normalised RGB
  std::vector<PatchGrid> grids;  ///< one per image; all share rows and cols
};

}  // namespace dinov2
