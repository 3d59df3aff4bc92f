// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Features (the output of Model::extract_features) and LayerFeatures (per-block outputs).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "dinov2/patch_grid.hpp"

namespace dinov2 {

/// @brief The tokens of one batch after the final LayerNorm, split by kind and laid out on the
/// patch grid.
///
/// Every tensor is float32 and contiguous, on the device the model runs on, whatever the compute
/// dtype (Options::dtype): reduced-precision outputs are widened once so that callers handle one
/// dtype. B is the batch size, D the width, R the register count (0 or 4), h x w the patch grid.
struct Features {
  /// @brief [B, D] float32: the CLS token (the image embedding used by kNN and linear probes).
  at::Tensor cls;
  /// @brief [B, R, D] float32: the register tokens; [B, 0, D] for models without registers.
  at::Tensor registers;
  /// @brief [B, h, w, D] float32: the patch tokens, patches[b, i, j] is grid row i, column j.
  at::Tensor patches;
  /// @brief [B, 1+R+h*w, D] float32: the last block's output before the final LayerNorm, tokens
  /// ordered [cls, registers, patches row-major]. Undefined unless requested (with_prenorm).
  at::Tensor prenorm;
  /// @brief One grid per image, mapping patches back to the original pixels.
  std::vector<PatchGrid> grids;

  /// @brief Number of images B.
  int64_t batch_size() const { return cls.defined() ? cls.size(0) : 0; }

  /// @brief [B, 2*D] float32 on the features' device: cat(cls, mean of the patches over the
  /// grid) along the last dimension, the input of the official one-layer linear classifier.
  at::Tensor pooled() const;

  /// @brief A copy with cls, registers and patches divided by their L2 norm along D (norms below
  /// 1e-12 are clamped to it), as for cosine similarity. prenorm and grids are kept as they are.
  Features normalized() const;

  /// @brief A copy with every tensor moved to the CPU (a no-op copy of handles when already there),
  /// e.g. before taking Eigen views.
  Features cpu() const;
};

/// @brief Which block outputs to compute: what a head reads (each head's layers()), given to
/// Model::intermediate_layers or PipelineOptions::layers.
struct LayerRequest {
  /// @brief 0-based block indices, negative ones counted from the end (-1 = the last block).
  std::vector<int64_t> blocks{-1};
  /// @brief Pass each output through the final LayerNorm (true for the classifiers and the
  /// segmentation heads; the official depth heads use false).
  bool norm = true;
};

/// @brief Outputs of chosen transformer blocks (Model::intermediate_layers); registers dropped.
struct LayerFeatures {
  /// @brief The block of each entry: 0-based, negative indices resolved, in the order asked for.
  std::vector<int64_t> indices;
  /// @brief Per entry, [B, h, w, D] float32: the patch tokens after that block.
  std::vector<at::Tensor> patches;
  /// @brief Per entry, [B, D] float32: the CLS token after that block.
  std::vector<at::Tensor> cls;
  /// @brief One grid per image.
  std::vector<PatchGrid> grids;

  /// @brief Number of entries (the number of block indices asked for).
  size_t size() const { return indices.size(); }
};

}  // namespace dinov2
