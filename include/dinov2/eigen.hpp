// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Zero-copy Eigen views of float32 CPU features (the only public header with Eigen).
///
/// A view points into the tensor's memory: it is valid while that tensor (or the Features or
/// LayerFeatures holding it) lives, and it is read-only. Views of temporaries are refused at
/// compile time. Features on a GPU must be brought to the CPU first (Features::cpu()).
#pragma once

#include <ATen/core/Tensor.h>

#include <Eigen/Core>

#include <cstdint>
#include <string>

#include "dinov2/error.hpp"
#include "dinov2/features.hpp"

namespace dinov2 {

/// @brief A read-only row-major float matrix mapped onto tensor memory.
using MatrixView =
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

namespace detail {
inline void check_viewable(const at::Tensor& t, const char* what) {
  if (!t.defined()) {
    throw InputError(std::string("dinov2: cannot view ") + what + ": the tensor is undefined");
  }
  if (!t.device().is_cpu()) {
    throw InputError(std::string("dinov2: cannot view ") + what + " on " + t.device().str() +
                     " as an Eigen matrix; call Features::cpu() first");
  }
  if (t.scalar_type() != at::kFloat) {
    throw InputError(std::string("dinov2: cannot view ") + what + " of dtype " +
                     std::string(c10::toString(t.scalar_type())) +
                     " as an Eigen float matrix; convert it to float32 first");
  }
  if (!t.is_contiguous()) {
    throw InputError(std::string("dinov2: cannot view ") + what +
                     " as an Eigen matrix: it is not contiguous; call .contiguous() first");
  }
}
}  // namespace detail

/// @brief [rows x cols] view of a contiguous float32 CPU tensor of any rank, flattened to
/// rows = numel / size(-1) rows of its last dimension.
inline MatrixView as_matrix(const at::Tensor& t) {
  detail::check_viewable(t, "the tensor");
  if (t.dim() < 1) throw InputError("dinov2: cannot view a 0-dimensional tensor as a matrix");
  const int64_t cols = t.size(-1);
  const int64_t rows = cols == 0 ? 0 : t.numel() / cols;
  return MatrixView(t.data_ptr<float>(), rows, cols);
}
MatrixView as_matrix(at::Tensor&&) = delete;  // the view would outlive the tensor

/// @brief [B x D] view of the CLS tokens (Features::cls).
inline MatrixView cls_matrix(const Features& f) {
  detail::check_viewable(f.cls, "Features::cls");
  return MatrixView(f.cls.data_ptr<float>(), f.cls.size(0), f.cls.size(1));
}
MatrixView cls_matrix(Features&&) = delete;  // the view would outlive the features

/// @brief [h*w x D] view of the patch tokens of image `image`, rows in row-major grid order
/// (row i*w + j is grid row i, column j).
inline MatrixView patch_matrix(const Features& f, int64_t image) {
  detail::check_viewable(f.patches, "Features::patches");
  const int64_t batch = f.patches.size(0);
  if (image < 0 || image >= batch) {
    throw InputError::invalid_argument("dinov2: image index " + std::to_string(image) +
                                       " is out of range for a batch of " + std::to_string(batch));
  }
  const int64_t tokens = f.patches.size(1) * f.patches.size(2);
  const int64_t dim = f.patches.size(3);
  return MatrixView(f.patches.data_ptr<float>() + image * tokens * dim, tokens, dim);
}
MatrixView patch_matrix(Features&&, int64_t) = delete;  // the view would outlive the features

/// @brief [R x D] view of the register tokens of image `image` (0 rows without registers).
inline MatrixView register_matrix(const Features& f, int64_t image) {
  detail::check_viewable(f.registers, "Features::registers");
  const int64_t batch = f.registers.size(0);
  if (image < 0 || image >= batch) {
    throw InputError::invalid_argument("dinov2: image index " + std::to_string(image) +
                                       " is out of range for a batch of " + std::to_string(batch));
  }
  const int64_t count = f.registers.size(1);
  const int64_t dim = f.registers.size(2);
  return MatrixView(f.registers.data_ptr<float>() + image * count * dim, count, dim);
}
MatrixView register_matrix(Features&&, int64_t) = delete;  // the view would outlive the features

}  // namespace dinov2
