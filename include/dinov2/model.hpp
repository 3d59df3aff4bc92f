// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Model: a DINOv2 backbone loaded from a file written by dinov2-export.
///
/// Contract: Model is a move-only value that owns its module (RAII); every failure throws a
/// dinov2::Error (see error.hpp). This header does not include <torch/script.h>.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dinov2/features.hpp"
#include "dinov2/options.hpp"
#include "dinov2/patch_grid.hpp"

namespace dinov2 {

/// @brief How a backbone file runs.
enum class Backend {
  kTorchScript,  ///< a .pt file: any resolution and batch, every method
  kAOTInductor,  ///< a .pt2 package compiled by dinov2-export --aot for one input size:
                 ///< extract_features only
  kOpenVINO,     ///< an .onnx graph written by dinov2-export, run by OpenVINO on the CPU in
                 ///< float32 (builds with DINOV2_WITH_OPENVINO): any size, extract_features only
};

/// @brief "torchscript", "aotinductor" or "openvino", as the metadata names them.
inline const char* to_string(Backend b) {
  switch (b) {
    case Backend::kAOTInductor:
      return "aotinductor";
    case Backend::kOpenVINO:
      return "openvino";
    default:
      return "torchscript";
  }
}

/// @brief Whether this build of the library runs files of kind `b`: TorchScript and AOTInductor
/// always, OpenVINO when it was built with DINOV2_WITH_OPENVINO.
bool backend_available(Backend b) noexcept;

/// @brief What a backbone file says about itself: its embedded metadata (docs/FORMAT.md).
struct ModelInfo {
  std::string variant;              ///< hub name, e.g. "dinov2_vits14_reg"
  int64_t embed_dim = 0;            ///< D: token width
  int64_t depth = 0;                ///< transformer blocks in the file (reduced test models: fewer)
  int64_t num_heads = 0;            ///< attention heads
  int64_t patch_size = 0;           ///< pixels per patch side (14)
  int64_t num_register_tokens = 0;  ///< R: 0 or 4
  std::string ffn;                  ///< "mlp" or "swiglu"
  int64_t pos_grid_h = 0;           ///< rows of the trained position-embedding grid (37)
  int64_t pos_grid_w = 0;           ///< columns of that grid (37)
  std::array<float, 3> mean{};      ///< RGB normalisation mean expected by the weights
  std::array<float, 3> std{};       ///< RGB normalisation standard deviation
  int64_t default_resolution = 0;   ///< square input side the exporter recommends (518)
  std::string dtype;                ///< parameter dtype in the file ("float32", ...)
  std::string exporter_version;     ///< version of dinov2-export that wrote the file
  std::string torch_version;        ///< PyTorch version used by the exporter
  std::string weights_source;       ///< "official", "huggingface" or "random"
  std::string weights_sha256;       ///< digest of the source weights
  std::string metadata_json;        ///< the embedded metadata, verbatim
  int format_version = 0;           ///< file format version (<= kFormatVersion)
  /// How the file runs: Backend::kTorchScript (a .pt file), Backend::kAOTInductor (a .pt2
  /// package) or Backend::kOpenVINO (an .onnx graph); any_input_size() and all_methods() say
  /// what that allows.
  Backend backend = Backend::kTorchScript;
  /// AOTInductor packages: the {height, width} in pixels they were compiled for; {0, 0} else.
  std::array<int64_t, 2> compiled_size{};
  /// AOTInductor packages: the largest batch one call takes (larger batches are split); 0 else.
  int64_t max_batch = 0;

  /// @brief Whether the file takes any batch and any input size that is a multiple of the patch
  /// size (TorchScript, OpenVINO), rather than compiled_size only (AOTInductor).
  bool any_input_size() const noexcept { return backend != Backend::kAOTInductor; }
  /// @brief Whether intermediate_layers and cls_attention run on this file (TorchScript), not
  /// extract_features alone (AOTInductor, OpenVINO).
  bool all_methods() const noexcept { return backend == Backend::kTorchScript; }
};

/// @brief A DINOv2 backbone ready for inference.
///
/// Thread safety: the inference methods are const and may be called from several threads at
/// once on one Model (each call runs its own interpreter frame on the shared, read-only module;
/// tests/unit/test_model.cpp checks that concurrent results equal sequential ones). Loading,
/// moving and destroying a Model must not race with calls on it.
///
/// Inputs: pixels are [B, 3, H, W] normalised RGB (see ModelInfo::mean/std) of any floating dtype
/// on any device; they are copied to the model's device and dtype. H and W must be positive
/// multiples of the patch size and (H/14)*(W/14) at most Options::max_tokens. Outputs are float32
/// on the model's device (Options::device), whatever Options::dtype is.
///
/// CUDA: a CPU batch is staged in pinned (page-locked) memory and copied without blocking the
/// host; a batch already pinned (`pixels.pin_memory()`) skips the staging copy. The copy and the
/// forward pass are queued on the current CUDA stream of the model's device, so a thread that sets
/// its own stream (c10::cuda::CUDAStreamGuard) runs its calls on that stream.
class Model {
 public:
  /// @brief Loads and checks a backbone: downloaded weights, or a file written by dinov2-export.
  ///
  /// `path` is one of
  /// - a Hugging Face model folder (config.json and model.safetensors, Dinov2Model or
  ///   Dinov2WithRegistersModel), or a bare model.safetensors with Hugging Face key names;
  /// - an official checkpoint (.pth, torch.save's zip format), read with LibTorch's restricted
  ///   unpickler: tensors, dicts and plain values only, never code;
  /// - a TorchScript file (.pt), an AOTInductor package (.pt2, written with --aot) or an ONNX
  ///   graph (.onnx, run by OpenVINO in builds with DINOV2_WITH_OPENVINO; ModelInfo::backend)
  ///   written by dinov2-export.
  /// Weights are filled into the exporter's scripted graph of their variant, built into the
  /// library (docs/ARCHITECTURE.md), so a model loaded from weights computes what the exported
  /// file of the same weights computes, and its ModelInfo is the one that file carries. No
  /// Python is involved.
  ///
  /// Throws ModelFileError when the path is missing or not one of the above; when weights have a
  /// missing, unexpected or mis-shaped key (named, with the expected shape), or a config.json
  /// that contradicts them; when a file is not a dinov2 backbone export, or of a newer format
  /// version than this library reads; DeviceError when the device is unavailable or the dtype
  /// does not run on it; InputError(kInvalidArgument) for bad Options values.
  static Model load(const std::string& path, Options options = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

  /// @brief The file's metadata.
  const ModelInfo& info() const;
  /// @brief The options the model was loaded with.
  const Options& options() const;
  /// @brief How many linear + GELU pairs Options::fused_kernels fused at load time, counted over
  /// the forward, intermediate-layer and attention graphs (a 12-block ViT-S/14: 36); 0 when
  /// fusion is off or does not apply (CUDA, float16, no oneDNN, SwiGLU models).
  int fused_layers() const;
  /// @brief Why fused_layers() is what it is, e.g. "36 linear + GELU pairs fused into oneDNN
  /// calls", "off (Options::fused_kernels is false)", or, where oneDNN cannot build the fused
  /// call for this CPU and dtype, that reason: the model then runs the file's graph unfused.
  const std::string& fusion_reason() const;
  /// @brief The dtype the model computes in: Options::dtype, with DType::kAuto resolved for this
  /// machine (never kAuto).
  DType dtype() const;
  /// @brief Why dtype() was chosen, e.g. "auto: float32, since this CPU (AMD EPYC, oneDNN AVX2)
  /// computes bfloat16 in emulation, which is slower than float32" or "float32 (asked for)".
  const std::string& dtype_reason() const;

  /// @brief Runs the backbone on a batch.
  /// @param pixels [B, 3, H, W] normalised float pixels, any device.
  /// @param with_prenorm also return Features::prenorm (costs one more copy).
  /// @return float32 features on the model's device; grids describe the raw input (no crop).
  Features extract_features(const at::Tensor& pixels, bool with_prenorm = false) const;
  /// @brief As above for a preprocessed batch; the features keep batch.grids (which must have one
  /// grid per image matching the pixel size, or be empty).
  Features extract_features(const Batch& batch, bool with_prenorm = false) const;

  /// @brief Outputs of the given blocks, as the official get_intermediate_layers with a list.
  /// @param pixels [B, 3, H, W] normalised float pixels, any device.
  /// @param blocks 0-based block indices, negative ones counted from the end (-1 = last block);
  ///        at least one; each in [-depth, depth).
  /// @param norm pass each output through the final LayerNorm (true for linear heads; the
  ///        official depth heads use false).
  /// @return per index: patches [B, h, w, D] and cls [B, D], float32 on the model's device.
  LayerFeatures intermediate_layers(const at::Tensor& pixels, const std::vector<int64_t>& blocks,
                                    bool norm = true) const;
  /// @brief As above for a preprocessed batch; keeps batch.grids.
  LayerFeatures intermediate_layers(const Batch& batch, const std::vector<int64_t>& blocks,
                                    bool norm = true) const;
  /// @brief The block outputs a head reads: `intermediate_layers(batch, head.layers())`.
  LayerFeatures intermediate_layers(const Batch& batch, const LayerRequest& request) const {
    return intermediate_layers(batch, request.blocks, request.norm);
  }
  /// @brief As above for normalised pixels [B, 3, H, W].
  LayerFeatures intermediate_layers(const at::Tensor& pixels, const LayerRequest& request) const {
    return intermediate_layers(pixels, request.blocks, request.norm);
  }

  /// @brief Attention of the CLS query over the patch keys in the last block (softmax over all
  /// tokens, then the patch columns kept), the usual DINO attention map.
  /// @param pixels [B, 3, H, W] normalised float pixels, any device.
  /// @return [B, heads, h, w] float32 on the model's device.
  at::Tensor cls_attention(const at::Tensor& pixels) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  static Model load_checked(const std::string& path, Options options);
  std::unique_ptr<Impl> impl_;
};

/// @brief Writes the weights at `weights` (a Hugging Face folder or safetensors file, an official
/// .pth; as Model::load reads them) as a TorchScript backbone file at `output`, the kind of file
/// dinov2-export writes: the same graph, the same float32 parameters and the same metadata, so
/// that the file also loads in Python with torch.jit.load. No Python is involved. The file is
/// written under a temporary name and renamed, so `output` is never half-written.
/// @param architecture_file As Options::architecture_file: empty for the built-in files.
/// @return The metadata of the written file.
/// @throws ModelFileError for weights Model::load refuses, and for a path that is already a
/// dinov2-export file; InputError when `output` cannot be written.
ModelInfo convert_weights(const std::string& weights, const std::string& output,
                          const std::string& architecture_file = "");

}  // namespace dinov2
