// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Principal component analysis of patch features and the usual DINOv2 picture: the first
/// three components of the patch tokens shown as RGB, optionally on the foreground only.
///
/// The fit is exact: the D x D covariance of the samples is accumulated in double precision and
/// decomposed with Eigen's SelfAdjointEigenSolver (src/pca.cpp). This costs N*D^2 for N samples
/// and D^3 for the decomposition, and D^2 memory whatever N is (D = 384 .. 1536), which is cheaper
/// than a thin SVD of the N x D sample matrix when N >> D, as it is for patches (hundreds to
/// thousands per image); double precision keeps the squared condition number of the covariance
/// harmless. A randomized SVD would be faster only for D in the thousands and is not exact.
///
/// Conventions, all documented where they apply:
/// - components are ordered by decreasing variance and have unit norm; the sign of each is
///   fixed so that its largest-magnitude entry is positive (eigenvectors have no sign of their
///   own; this makes results deterministic, but compare with other tools up to sign);
/// - colours scale each component jointly over all images, so one colour means one feature
///   direction across the whole set;
/// - the foreground mask orients the first component so that the patches on the border of the
///   grid score lower on average than the others (the background usually touches the border).
///
/// This header includes neither Eigen nor OpenCV. All functions throw dinov2::Error (InputError
/// for bad shapes or values, RuntimeError(kRuntime) when LibTorch, Eigen or OpenCV fail).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dinov2/patch_grid.hpp"

namespace dinov2 {

/// @brief A fitted PCA: the sample mean and the top-k principal directions.
///
/// An immutable value; const methods may be called concurrently.
class PatchPca {
 public:
  /// @brief An empty PCA (components() == 0) to assign to; use fit().
  PatchPca() = default;
  /// @brief Fits the top `components` principal directions of `samples`.
  /// @param samples [..., D] float (any floating dtype, any device), flattened to N = numel / D
  ///        rows; N >= 2, all finite.
  /// @param components k, 1 <= k <= D (directions beyond rank N - 1 have variance 0 and an
  ///        arbitrary orientation).
  static PatchPca fit(const at::Tensor& samples, int64_t components = 3);
  /// @brief Fits jointly over several tensors of the same width D (e.g. the [h, w, D] patch maps
  /// of images of different sizes), as if their rows were concatenated.
  static PatchPca fit(const std::vector<at::Tensor>& samples, int64_t components = 3);

  /// @brief k: the number of components kept.
  int64_t components() const { return basis_.defined() ? basis_.size(0) : 0; }
  /// @brief D: the sample width.
  int64_t dim() const { return mean_.defined() ? mean_.size(0) : 0; }
  /// @brief Number of samples N the PCA was fitted on.
  int64_t samples() const { return samples_; }
  /// @brief [D] float32 CPU: the sample mean.
  const at::Tensor& mean() const { return mean_; }
  /// @brief [k, D] float32 CPU: the principal directions as unit rows, by decreasing variance,
  /// each with its largest-magnitude entry positive.
  const at::Tensor& basis() const { return basis_; }
  /// @brief [k] float32 CPU: the variance along each direction (covariance eigenvalue, divided
  /// by N - 1).
  const at::Tensor& variance() const { return variance_; }

  /// @brief Coordinates of `x` along the components: (x - mean) @ basis^T.
  /// @param x [..., D] floating, any device.
  /// @return [..., k] float32 on x's device.
  at::Tensor project(const at::Tensor& x) const;

 private:
  at::Tensor mean_;
  at::Tensor basis_;
  at::Tensor variance_;
  int64_t samples_ = 0;
};

/// @brief How a patch-resolution map is enlarged to pixels.
enum class Upsampling {
  kNearest,   ///< each patch a flat block: shows exactly the model's resolution (the default)
  kBilinear,  ///< smooth (OpenCV INTER_LINEAR, pixel centres aligned as align_corners=false)
};

/// @brief Choices for pca_colors().
struct PcaOptions {
  /// @brief Components mapped to colour channels, 1..3: 3 gives R, G, B; 1 a grey image; 2 fills
  /// R and G and leaves B at 0. Default 3.
  int64_t components = 3;
  /// @brief Compute a foreground mask from the first component of a PCA over all patches, then
  /// fit the colour PCA on the foreground patches only and paint the background black (the
  /// procedure of the DINOv2 paper's figures). Default off.
  bool foreground_mask = false;
  /// @brief The mask keeps patches whose first component, min-max scaled to [0, 1] over all
  /// patches of all images and oriented as documented in this file, is above this. Default 0.5.
  double mask_threshold = 0.5;
  /// @brief Colour scaling: each component is mapped linearly from its `clip_percentile`-th to
  /// its (100 - clip_percentile)-th percentile (NumPy's default linear interpolation, over the
  /// patches coloured, jointly over all images) onto [0, 1], and clipped. 0 gives plain min-max
  /// scaling; the default 1 keeps a few extreme patches (such as the high-norm artefact tokens
  /// of models without registers) from washing out the picture. In [0, 50).
  double clip_percentile = 1.0;
};

/// @brief The colour maps of a set of images.
struct PcaColors {
  /// @brief Per image, [h, w, 3] float32 CPU in [0, 1]; background patches are 0 when masked.
  std::vector<at::Tensor> colors;
  /// @brief Per image, [h, w] bool CPU, true on the foreground; empty unless
  /// PcaOptions::foreground_mask.
  std::vector<at::Tensor> masks;
  /// @brief The PCA whose components give the colours (fitted on the foreground when masked).
  PatchPca pca;
  /// @brief Per colour channel used, the values mapped to 0 and to 1 ([components, 2] float32).
  at::Tensor ranges;
};

/// @brief The PCA picture of the patch maps of several images, fitted jointly.
/// @param patches per image [h, w, D] floating (grids may differ between images; D may not), or
///        one [B, h, w, D] tensor given as a single element, which counts as B images.
/// Throws InputError for bad shapes, too few patches (fewer than components + 1, or no
/// foreground patch left by the mask) or bad options.
PcaColors pca_colors(const std::vector<at::Tensor>& patches, const PcaOptions& options = {});

/// @brief Indices of the patches on the border of an h x w grid, in row-major order: the first
/// and last rows and columns (all patches when h or w is at most 2).
std::vector<int64_t> border_patches(int64_t rows, int64_t cols);

/// @brief A patch-resolution map stretched over an image of height x width pixels.
/// @param colors [h, w, C] float in [0, 1] (C = 1 or 3) or uint8.
/// @return [height, width, C] uint8 CPU (floats rounded after clipping to [0, 1]).
at::Tensor upsample_map(const at::Tensor& colors, int64_t height, int64_t width,
                        Upsampling mode = Upsampling::kNearest);

/// @brief A patch-resolution map placed on the original image of `grid`: the map covers the
/// grid's crop box (original pixels; see PatchGrid), pixels outside it are 0.
/// @param colors as for upsample_map().
/// @return [grid.original_height, grid.original_width, C] uint8 CPU.
at::Tensor upsample_to_original(const at::Tensor& colors, const PatchGrid& grid,
                                Upsampling mode = Upsampling::kNearest);

/// @brief A contact sheet: each row's images (e.g. original | PCA | mask) scaled to `height`
/// pixels keeping their aspect ratio (area interpolation), side by side with `gap` black pixels
/// between them; rows stacked, left-aligned, padded with black to the widest row. An image more
/// than 8 times wider than high is scaled to 8 * height pixels wide instead (and centred
/// vertically), so that no tile is wider than that.
/// @param rows per row, images [H, W, 3] or [H, W] uint8 RGB (grey is replicated).
/// @return [H, W, 3] uint8 RGB CPU.
at::Tensor contact_sheet(const std::vector<std::vector<at::Tensor>>& rows, int64_t height = 256,
                         int64_t gap = 4);

/// @brief Writes an [H, W, 3] RGB or [H, W] grey uint8 image as a PNG file (OpenCV), replacing
/// an existing file. Throws InputError when the tensor is not such an image or the file cannot
/// be written.
void save_png(const std::string& path, const at::Tensor& image);

}  // namespace dinov2
