// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The official DINOv2 linear heads: ImageNet classification, depth and segmentation.
///
/// Each head is loaded from a head file written by `dinov2-export-head` (docs/FORMAT.md, "Head
/// files") and computed here with ATen operations on the parameters read from that file. Heads
/// are small copyable values; their const methods may be called from several threads at once.
/// Every failure throws a dinov2::Error: ModelFileError for a missing, foreign or too new file or
/// one whose kind, backbone or width does not fit; InputError for features of the wrong shape.
///
/// Every head has one shape: layers() says which block outputs it reads, and it consumes
/// Features or LayerFeatures, never a Model, so the flow runs one way (model -> features ->
/// head): logits() gives raw scores, predict() the answer (a class, a depth map, a label map).
///
/// A head runs on the device of the features it is given. Heads loaded with a Model are placed
/// on that model's device once; heads loaded without one live on the CPU and copy their
/// parameters to the features' device on every call.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "dinov2/features.hpp"

namespace dinov2 {

class Model;
struct ModelInfo;

/// @brief What a head file says about itself: its embedded `dinov2/head.json`.
struct HeadInfo {
  std::string kind;         ///< "linear_classifier", "depth_linear" or "segmentation_linear"
  std::string head;         ///< exporter kind: "linear", "linear4", "depth_linear", ...
  std::string variant;      ///< backbone the head was trained on, e.g. "dinov2_vits14"
  int64_t embed_dim = 0;    ///< D of that backbone
  int64_t patch_size = 14;  ///< pixels per patch side
  std::string dataset;      ///< "imagenet", "nyu", "kitti", "ade20k" or "voc2012"
  /// @brief Backbone blocks read, in input order; negative = from the end (classifiers).
  std::vector<int64_t> blocks;
  bool norm = true;         ///< whether those block outputs go through the final LayerNorm
  int64_t num_classes = 0;  ///< classifier and segmentation heads
  std::vector<std::string> class_names;         ///< num_classes names in label order
  std::vector<std::array<uint8_t, 3>> palette;  ///< segmentation: RGB per class
  int64_t upsample = 0;        ///< depth: factor from the patch grid to the bin map (4)
  int64_t bins = 0;            ///< depth: number of depth bins (256)
  double min_depth = 0.0;      ///< depth: first bin and lower clamp, metres
  double max_depth = 0.0;      ///< depth: last bin and upper clamp, metres
  double score_offset = 0;     ///< depth: added to the ReLU of the bin scores (0.1)
  std::string weights_source;  ///< "official" or "random"
  std::string weights_sha256;  ///< digest of the source head weights
  std::string metadata_json;   ///< head.json verbatim
  int format_version = 0;      ///< file format version
};

/// @brief One entry of LinearClassifier::top_k.
struct ClassScore {
  int64_t index = 0;         ///< class index in [0, num_classes)
  float probability = 0.0f;  ///< softmax probability of that class
  std::string name;          ///< its name (HeadInfo::class_names)
};

namespace detail {
/// @brief What every head holds: its description and parameters (float32).
struct HeadData {
  HeadInfo info;
  at::Tensor weight;  ///< [out, in] float32
  at::Tensor bias;    ///< [out] float32
  at::Tensor bins;    ///< depth heads: [bins] float32; undefined otherwise
};
}  // namespace detail

/// @brief The k most probable classes of each row of `logits`, most probable first.
/// @param logits [B, C] any device and floating dtype; softmax is taken over C.
/// @param k 1..C.
/// @param class_names C names in label order, or empty (names are then the indices).
std::vector<std::vector<ClassScore>> top_k(const at::Tensor& logits, int64_t k,
                                           const std::vector<std::string>& class_names);

/// @brief ImageNet-1k linear classifier on [CLS of the last L blocks, mean of the last patches].
///
/// L = 1 (`linear` files) reads Features or the last block; L = 4 (`linear4`) reads the last
/// four blocks (normed), which only LayerFeatures hold:
/// @code
/// const auto head = dinov2::LinearClassifier::load("linear4.pt", model);
/// const auto top = head.top_k(head.logits(model.intermediate_layers(batch, head.layers())), 5);
/// @endcode
class LinearClassifier {
 public:
  /// @brief Loads a head file on the CPU; throws ModelFileError if it is not a classifier head.
  static LinearClassifier load(const std::string& path);
  /// @brief Loads a head file for `model`: checks that it was trained on the model's variant
  /// (same width and register count, enough blocks) and places it on the model's device.
  static LinearClassifier load(const std::string& path, const Model& model);

  /// @brief The file's description.
  const HeadInfo& info() const { return d_.info; }
  /// @brief L: how many final blocks contribute a CLS token (1 or 4).
  int64_t n_last_blocks() const { return static_cast<int64_t>(d_.info.blocks.size()); }
  /// @brief The block outputs the head reads: the last L blocks, normed.
  LayerRequest layers() const { return {d_.info.blocks, true}; }
  /// @brief Throws ModelFileError naming the mismatch when this head does not fit `model`.
  void check_compatible(const ModelInfo& model) const;

  /// @brief Logits from Features (L = 1 only; a linear4 head throws InputError).
  /// @return [B, num_classes] float32 on the features' device.
  at::Tensor logits(const Features& features) const;
  /// @brief Logits from the block outputs of layers().
  /// @return [B, num_classes] float32 on the features' device.
  at::Tensor logits(const LayerFeatures& features) const;
  /// @brief The most probable class of each image.
  /// @return [B] int64 on the features' device.
  at::Tensor predict(const Features& features) const;
  /// @brief As above from the block outputs of layers().
  at::Tensor predict(const LayerFeatures& features) const;

  /// @brief The k most probable classes of each image with their ImageNet names.
  /// @param logits [B, num_classes] as returned by logits(); any device.
  /// @param k 1..num_classes.
  std::vector<std::vector<ClassScore>> top_k(const at::Tensor& logits, int64_t k) const;

 private:
  explicit LinearClassifier(detail::HeadData d) : d_(std::move(d)) {}
  detail::HeadData d_;
};

/// @brief Monocular depth (NYU or KITTI) from [patch map, CLS] of 1 or 4 blocks.
class DepthHead {
 public:
  /// @brief Loads a head file on the CPU; throws ModelFileError if it is not a depth head.
  static DepthHead load(const std::string& path);
  /// @brief Loads a head file for `model` (checked as LinearClassifier::load), on its device.
  static DepthHead load(const std::string& path, const Model& model);

  /// @brief The file's description (blocks, norm, depth range).
  const HeadInfo& info() const { return d_.info; }
  /// @brief The block outputs the head reads (info().blocks, normed as info().norm says).
  LayerRequest layers() const { return {d_.info.blocks, d_.info.norm}; }
  /// @brief Throws ModelFileError naming the mismatch when this head does not fit `model`.
  void check_compatible(const ModelInfo& model) const;

  /// @brief Metric depth from the block outputs of layers().
  /// @param height, width output size; 0 means the input size (patch grid x patch_size).
  /// @return [B, height, width] float32 depth in metres within [min_depth, max_depth], on the
  /// features' device.
  at::Tensor predict(const LayerFeatures& features, int64_t height = 0, int64_t width = 0) const;

 private:
  explicit DepthHead(detail::HeadData d) : d_(std::move(d)) {}
  detail::HeadData d_;
};

/// @brief Semantic segmentation (ADE20K or VOC 2012): BatchNorm + 1x1 conv on the last block's
/// normed patch map (the BatchNorm is folded into the convolution at export).
class SegmentationHead {
 public:
  /// @brief Loads a head file on the CPU; throws ModelFileError if it is not a segmentation head.
  static SegmentationHead load(const std::string& path);
  /// @brief Loads a head file for `model` (checked as LinearClassifier::load), on its device.
  static SegmentationHead load(const std::string& path, const Model& model);

  /// @brief The file's description (classes, palette).
  const HeadInfo& info() const { return d_.info; }
  /// @brief The block output the head reads (the last block, normed).
  LayerRequest layers() const { return {d_.info.blocks, d_.info.norm}; }
  /// @brief Throws ModelFileError naming the mismatch when this head does not fit `model`.
  void check_compatible(const ModelInfo& model) const;

  /// @brief Per-patch logits from Features, whose patches are the last block's normed output:
  /// valid for a full-depth model, where that is the block the head reads.
  /// @return [B, num_classes, h, w] float32 on the features' device.
  at::Tensor logits(const Features& features) const;
  /// @brief Per-patch logits from the block output of layers().
  at::Tensor logits(const LayerFeatures& features) const;
  /// @brief Labels at the input size (patch grid x patch_size): logits() then labels().
  /// @return [B, H, W] int64 on the features' device.
  at::Tensor predict(const Features& features) const;
  /// @brief As above from the block output of layers().
  at::Tensor predict(const LayerFeatures& features) const;

  /// @brief Labels at any resolution: logits resized (bilinear) to height x width, arg-max.
  /// @param logits [B, num_classes, h, w] as returned by logits().
  /// @return [B, height, width] int64 on the logits' device.
  at::Tensor labels(const at::Tensor& logits, int64_t height, int64_t width) const;
  /// @brief Colours labels with the dataset palette.
  /// @param labels [B, H, W] integer labels in [0, num_classes).
  /// @return [B, H, W, 3] uint8 RGB on the CPU.
  at::Tensor colorize(const at::Tensor& labels) const;

 private:
  explicit SegmentationHead(detail::HeadData d) : d_(std::move(d)) {}
  detail::HeadData d_;
};

}  // namespace dinov2
