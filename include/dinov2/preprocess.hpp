// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Preprocessing: a Recipe (how an image becomes a model input of patch-aligned size) and
/// the Preprocessor that applies it (Pillow-compatible antialiased bicubic resize, optional
/// centre crop, ImageNet normalisation, batching).
///
/// This header has no OpenCV include: images arrive as an ImageView (a borrowed pixel buffer) or
/// an at::Tensor. `dinov2/opencv.hpp` turns a cv::Mat into an ImageView and loads image files.
/// The algorithms and the agreement with Pillow are documented in docs/PREPROCESSING.md.
///
/// Thread safety: Recipe, Normalization and Preprocessor are immutable values; every const member
/// function may be called concurrently. Resizing uses LibTorch's intra-op thread pool.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dinov2/patch_grid.hpp"

namespace dinov2 {

class Model;

/// @brief Pixels per patch side of every DINOv2 backbone; recipe sizes are multiples of it.
inline constexpr int kPatchSize = 14;

/// @brief The largest resized image (height x width, before the crop) a Recipe plans: 178,956,970
/// pixels, Pillow's decompression-bomb limit. An image whose plan needs more (an extreme aspect
/// ratio under eval_center_crop, say 1x3000 resized to 256x768000) is refused with InputError
/// before any pixel is allocated.
inline constexpr int64_t kMaxResizedPixels = 178956970;

/// @brief Where one image's pixels go under a recipe: the bicubic resize, then the crop.
struct ResizePlan {
  int64_t resized_height = 0;  ///< size of the resized image, before cropping
  int64_t resized_width = 0;
  int64_t crop_top = 0;  ///< offset of the crop in the resized image (0 without a crop)
  int64_t crop_left = 0;
  PatchGrid grid;  ///< the model input: grid.height() x grid.width() pixels, and its crop box
};

/// @brief How an image of any size becomes a model input whose sides are multiples of 14.
///
/// A value type made by one of the named factories. Every size below is in pixels; the factories
/// throw InputError (code kInvalidArgument) for a size that is not positive or, where the model
/// input size is given directly, not a multiple of 14.
class Recipe {
 public:
  /// @brief The recipe families.
  enum class Kind {
    kSquare,          ///< resize to size x size, aspect not kept
    kEvalCenterCrop,  ///< shorter side to `resize` keeping aspect, centre crop `crop` x `crop`
    kPatchAligned,    ///< keep aspect, sides rounded to multiples of 14, token count capped
    kResize,          ///< resize to height x width, aspect not kept
  };

  /// @brief Resize to size x size (Pillow `Image.resize((size, size), BICUBIC)`); the default
  /// recipe of this library. The model input covers the whole image.
  static Recipe square(int size = 518);

  /// @brief The official evaluation transform: resize the shorter side to `resize` keeping the
  /// aspect ratio (the longer side becomes `int(resize * long / short)`, as torchvision's
  /// `Resize(resize)` computes it), then centre crop `crop` x `crop` with torchvision's offsets
  /// `int(round((side - crop) / 2.0))` (round half to even). `crop` must be a multiple of 14 and
  /// at most `resize`.
  static Recipe eval_center_crop(int resize = 256, int crop = 224);

  /// @brief Keep the aspect ratio: scale so that the longer side is about `max_side`, round each
  /// side to the nearest multiple of 14 (at least 14), and shrink until rows * cols is at most
  /// `max_tokens`. The formula is in docs/PREPROCESSING.md and in plan(). Images of different
  /// aspect ratios give different input sizes (see Preprocessor::group_by_shape).
  static Recipe patch_aligned(int max_side = 518, int64_t max_tokens = 16384);

  /// @brief Resize to exactly height x width (both multiples of 14), aspect not kept.
  static Recipe resize(int height, int width);

  /// @brief Parses the text written by to_string(), e.g. "square(518)",
  /// "eval_center_crop(256,224)", "patch_aligned(518,16384)", "resize(224,308)"; spaces are
  /// ignored and a bare name uses the default arguments ("square", "eval_center_crop",
  /// "patch_aligned"). Throws InputError (kInvalidArgument) naming the text otherwise.
  static Recipe parse(const std::string& text);

  /// @brief The family of this recipe.
  Kind kind() const noexcept { return kind_; }
  /// @brief A stable text form that parse() reads back, e.g. "eval_center_crop(256,224)"; record
  /// it with every output so that results can be reproduced.
  std::string to_string() const;

  /// @brief The geometry for an image of height x width pixels: resize size, crop offsets and the
  /// resulting PatchGrid (crop box in original pixels). Throws InputError when a side is not
  /// positive, or when the resized image would exceed kMaxResizedPixels.
  ResizePlan plan(int64_t height, int64_t width) const;

  /// @brief The most patch tokens one image can give under this recipe, whatever its size: the
  /// fixed grid of square, resize and eval_center_crop; for patch_aligned, the smaller of its
  /// token cap and the grid of a square image. Compare it with Options::max_tokens before reading
  /// any image, as the `dinov2` tool does.
  int64_t token_bound() const;

  /// @brief Token cap of kPatchAligned; 0 for the other kinds. (The sizes are in to_string(); the
  /// geometry for an image is plan().)
  int64_t max_tokens() const noexcept { return max_tokens_; }

  /// @brief Same family and same sizes.
  friend bool operator==(const Recipe& x, const Recipe& y) {
    return x.kind_ == y.kind_ && x.a_ == y.a_ && x.b_ == y.b_ && x.max_tokens_ == y.max_tokens_;
  }
  /// @brief Not operator==.
  friend bool operator!=(const Recipe& x, const Recipe& y) { return !(x == y); }

 private:
  Recipe(Kind kind, int a, int b, int64_t max_tokens)
      : kind_(kind), a_(a), b_(b), max_tokens_(max_tokens) {}
  Kind kind_;
  int a_;
  int b_;
  int64_t max_tokens_;
};

/// @brief Per-channel normalisation after scaling to [0, 1]: `(x - mean[c]) / stddev[c]`, RGB
/// order (torchvision's `Normalize(mean, std)`).
/// Defaults to the ImageNet statistics that every DINOv2 checkpoint was trained with; a model
/// file's metadata carries the values to use (see from()).
struct Normalization {
  std::array<float, 3> mean{{0.485f, 0.456f, 0.406f}};    ///< R, G, B
  std::array<float, 3> stddev{{0.229f, 0.224f, 0.225f}};  ///< R, G, B; all positive

  /// @brief The ImageNet mean and std (the defaults).
  static Normalization imagenet() { return {}; }
  /// @brief From the `mean` and `std` lists of a model's metadata. Throws InputError
  /// (kInvalidArgument) unless both have 3 finite entries and every stddev is positive.
  static Normalization from(const std::vector<double>& mean, const std::vector<double>& stddev);
};

/// @brief Order of the colour channels in memory. Alpha, when present, is always the 4th channel.
enum class ChannelOrder {
  kRGB,  ///< red first (PIL, torchvision, most tensors)
  kBGR,  ///< blue first (OpenCV's cv::imread and cv::Mat convention)
};

/// @brief Sample types an ImageView may hold, and how each maps to intensity.
enum class SampleType {
  kUInt8,    ///< 0..255; resized exactly as Pillow resizes 8-bit images (uint8 intermediate)
  kUInt16,   ///< 0..65535; v means v / 257 on the 8-bit scale (v / 65535 in [0, 1])
  kFloat32,  ///< intensity in [0, 1] (not clipped); resized in floating point
  kFloat64,  ///< as kFloat32
};

/// @brief A borrowed image with interleaved channels (pixel after pixel, channel after channel),
/// rows `row_stride` bytes apart. Nothing is copied or owned: the pixels must outlive the call
/// that reads them.
struct ImageView {
  const void* data = nullptr;  ///< first sample of the top-left pixel
  int64_t height = 0;          ///< rows
  int64_t width = 0;           ///< pixels per row
  int channels = 3;            ///< 1 (gray, replicated to RGB), 3 (colour) or 4 (alpha dropped)
  int64_t row_stride = 0;      ///< bytes from one row to the next; 0 means tightly packed
  SampleType type = SampleType::kUInt8;
  ChannelOrder order = ChannelOrder::kRGB;  ///< order of the colour channels (3 or 4 channels)
};

/// @brief How the dimensions of a 3-D image tensor are ordered.
enum class TensorLayout {
  /// Decide from the shape [a, b, c]: HWC when c is 1, 3 or 4 and a is not; CHW when a is 1, 3
  /// or 4 and c is not; otherwise (both or neither) throw InputError asking for a layout.
  kAuto,
  kHWC,  ///< [height, width, channels]
  kCHW,  ///< [channels, height, width]
};

/// @brief Images that share one model input size, and where they were in the input list.
struct ShapeGroup {
  std::vector<std::size_t> indices;  ///< positions in the list given to group_by_shape
  Batch batch;                       ///< the preprocessed images, in the order of `indices`
};

/// @brief Applies a Recipe and a Normalization to images: antialiased bicubic resize that agrees
/// with Pillow (`Image.resize(size, Image.BICUBIC)`), the recipe's crop, conversion to float RGB
/// in [0, 1], normalisation, and stacking into a Batch.
///
/// Inputs: ImageView (any of the SampleType / channel combinations above; see
/// dinov2/opencv.hpp for cv::Mat) or at::Tensor (uint8, uint16 or a floating dtype, on any
/// device; [H, W] gray, [H, W, C] / [C, H, W] per TensorLayout, or [B, ...] for a batch).
/// 8-bit images follow Pillow's integer arithmetic exactly; 16-bit and floating images are
/// resized in float32 without intermediate rounding (as Pillow's mode "F").
///
/// Every failure throws InputError with a message naming the value and the fix.
class Preprocessor {
 public:
  /// @brief A preprocessor for `recipe` (default Recipe::square(518)) and `normalization`
  /// (default ImageNet).
  explicit Preprocessor(Recipe recipe = Recipe::square(), Normalization normalization = {});
  /// @brief The preprocessor `model` expects under `recipe`: the normalisation stored in the
  /// model file (ModelInfo::mean and std). Throws InputError (kInvalidArgument) when the file's
  /// patch size is not kPatchSize (every recipe plans in 14-pixel patches) or its normalisation
  /// is not finite with positive std.
  static Preprocessor for_model(const Model& model, Recipe recipe = Recipe::square());

  /// @brief The recipe applied.
  const Recipe& recipe() const noexcept { return recipe_; }
  /// @brief The normalisation applied.
  const Normalization& normalization() const noexcept { return normalization_; }

  /// @brief One image as a batch of one.
  /// @return pixels [1, 3, H, W] float32 CPU (normalised RGB) and its PatchGrid.
  Batch operator()(const ImageView& image) const;
  /// @brief Several images that the recipe maps to the same input size (always true for square,
  /// resize and eval_center_crop). Throws InputError when patch_aligned gives different sizes:
  /// use group_by_shape() then.
  /// @return pixels [B, 3, H, W] float32 CPU and one PatchGrid per image, in input order.
  Batch operator()(const std::vector<ImageView>& images) const;
  /// @brief An image tensor [H, W], [H, W, C], [C, H, W] or a batch [B, H, W, C] / [B, C, H, W].
  /// `order` gives the colour order of the channels (tensors are usually RGB).
  /// @return pixels [B, 3, H, W] float32 CPU and one PatchGrid per image (B = 1 for a 2-D or 3-D
  /// tensor).
  Batch operator()(const at::Tensor& images, TensorLayout layout = TensorLayout::kAuto,
                   ChannelOrder order = ChannelOrder::kRGB) const;
  /// @brief Several image tensors (each 2-D or 3-D) of one resulting input size.
  Batch operator()(const std::vector<at::Tensor>& images, TensorLayout layout = TensorLayout::kAuto,
                   ChannelOrder order = ChannelOrder::kRGB) const;

  /// @brief Preprocesses images of possibly different input sizes: one ShapeGroup per distinct
  /// size, in order of first appearance.
  std::vector<ShapeGroup> group_by_shape(const std::vector<ImageView>& images) const;
  /// @brief As above, for image tensors (each 2-D or 3-D).
  std::vector<ShapeGroup> group_by_shape(const std::vector<at::Tensor>& images,
                                         TensorLayout layout = TensorLayout::kAuto,
                                         ChannelOrder order = ChannelOrder::kRGB) const;

  /// @brief The resized and cropped image before normalisation, e.g. to draw on.
  /// @return [H, W, 3] RGB on the CPU: uint8 for an 8-bit input (equal to Pillow's result),
  /// float32 in the [0, 1] scale (not clipped) for 16-bit and floating inputs.
  at::Tensor resized(const ImageView& image) const;
  /// @brief As above for a 2-D or 3-D image tensor.
  at::Tensor resized(const at::Tensor& image, TensorLayout layout = TensorLayout::kAuto,
                     ChannelOrder order = ChannelOrder::kRGB) const;

 private:
  Recipe recipe_;
  Normalization normalization_;
};

}  // namespace dinov2
