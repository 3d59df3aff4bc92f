// SPDX-License-Identifier: Apache-2.0
// Private to src/: the seam between Model and the three ways of running a backbone, a TorchScript
// file (torchscript_backend.cpp), an AOTInductor package (aoti_backend.cpp) and an ONNX graph
// on OpenVINO (openvino_backend.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "detail/boundary.hpp"
#include "detail/weights.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"

namespace dinov2::detail {

/// What loading a backbone settled: the file's metadata, and where and how the model runs.
struct ModelSetup {
  ModelInfo info;
  c10::Device device{c10::DeviceType::CPU};
  /// The dtype of the model's tensors, the ATen spelling of `compute_dtype`.
  at::ScalarType dtype = at::kFloat;
  DType compute_dtype = DType::kFloat32;
  std::string dtype_reason;
  int fused_layers = 0;
  std::string fusion_reason;
};

/// The raw outputs of the intermediate_layers method: per block, the patch tokens [B, N, D] and
/// the class token [B, D], on the model's device in its dtype.
struct LayerOutputs {
  std::vector<at::Tensor> patches;
  std::vector<at::Tensor> cls;
};

/// A loaded backbone that runs checked pixels. Model checks the input, calls these inside
/// translate_errors, and turns the raw outputs (on the model's device, in its dtype) into
/// Features; the backend copies the pixels to its device and dtype (to_model) and runs without
/// autograd bookkeeping.
class ModelBackend {
 public:
  ModelBackend() = default;
  ModelBackend(const ModelBackend&) = delete;
  ModelBackend& operator=(const ModelBackend&) = delete;
  virtual ~ModelBackend() = default;

  const ModelSetup& setup() const { return setup_; }

  /// The forward pass: cls [B, D], registers [B, R, D], patches [B, N, D], and prenorm when
  /// `with_prenorm` (a backend may return it anyway).
  virtual std::vector<at::Tensor> forward(const at::Tensor& pixels, bool with_prenorm) const = 0;
  /// Throws InputError::invalid_argument when this backend cannot run `method`
  /// ("intermediate_layers" or "cls_attention"); Model asks before it checks the arguments.
  virtual void require(const char* method) const = 0;
  /// The outputs of the blocks `blocks` (indices checked by Model), normed when `norm`.
  virtual LayerOutputs intermediate_layers(const at::Tensor& pixels,
                                           const std::vector<int64_t>& blocks, bool norm) const = 0;
  /// The class token's attention over the patch tokens in the last block, [B, heads, N].
  virtual at::Tensor cls_attention(const at::Tensor& pixels) const = 0;

 protected:
  /// The pixels on the model's device in its dtype. A CPU batch bound for a CUDA model is staged
  /// in page-locked (pinned) memory, unless it is already there, and copied without blocking the
  /// host: the copy is queued on the current CUDA stream of the model's device, the stream the
  /// forward pass then runs on, so it needs no synchronisation (the caching host allocator keeps
  /// the staging buffer until the copy is done). Everything else is an ordinary `to`.
  at::Tensor to_model(const at::Tensor& pixels) const {
    if (setup_.device.is_cuda() && pixels.device().is_cpu()) {
      const at::Tensor host = pixels.is_pinned() ? pixels : pixels.pin_memory();
      return host.to(setup_.device, setup_.dtype, /*non_blocking=*/true);
    }
    return pixels.to(setup_.device, setup_.dtype);
  }

  ModelSetup setup_;
};

/// A backend that holds the forward pass only (an AOTInductor package, an ONNX export): it
/// refuses intermediate_layers and cls_attention with an InputError that says where they are.
class ForwardOnlyBackend : public ModelBackend {
 public:
  void require(const char* method) const final { refuse(method); }
  LayerOutputs intermediate_layers(const at::Tensor& /*pixels*/,
                                   const std::vector<int64_t>& /*blocks*/,
                                   bool /*norm*/) const final {
    refuse("intermediate_layers");
  }
  at::Tensor cls_attention(const at::Tensor& /*pixels*/) const final { refuse("cls_attention"); }

 protected:
  /// `absent` completes "dinov2: <method> is ...", e.g. "in ONNX exports".
  explicit ForwardOnlyBackend(const char* absent) : absent_(absent) {}

 private:
  [[noreturn]] void refuse(const char* method) const {
    throw InputError::invalid_argument(
        fmt::format("dinov2: {} is {} (they hold the forward pass only); load the TorchScript "
                    "(.pt) export of the model for it",
                    method, absent_));
  }

  const char* absent_;
};

/// A TorchScript backbone module and its metadata JSON (docs/FORMAT.md), before any checks.
struct LoadedModule {
  torch::jit::Module module;
  std::string metadata;
};

/// Opens and checks the TorchScript backbone file (.pt) `path`, and runs one patch through it
/// where that can fail for the device or dtype. `options` are checked, the device exists.
std::unique_ptr<ModelBackend> load_torchscript(const std::string& path, const Options& options);
/// Builds the backbone from the weight file or folder `path` (detail/weights.hpp), then checks
/// and prepares it as load_torchscript does.
std::unique_ptr<ModelBackend> load_weights(const std::string& path, ModelSource source,
                                           const Options& options);
/// Opens and checks the AOTInductor package (.pt2) `path`, with checked `options`.
std::unique_ptr<ModelBackend> load_aoti_package(const std::string& path, const Options& options);
/// Opens, checks and compiles the ONNX export (.onnx) `path` with OpenVINO, with checked
/// `options`. Builds without DINOV2_WITH_OPENVINO throw ModelFileError saying so.
std::unique_ptr<ModelBackend> load_openvino(const std::string& path, const Options& options);

/// Runs `f`, turning LibTorch exceptions into dinov2::Error (dinov2 errors pass through).
template <class F>
auto translate_errors(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::OutOfMemoryError& e) {
    throw RuntimeError(
        fmt::format("dinov2: out of memory while {}: {}; use a smaller batch or input, or lower "
                    "Options::max_tokens",
                    what, torch_message(e)));
  } catch (const c10::Error& e) {
    const std::string msg = torch_message(e);
    if (msg.rfind("dinov2:", 0) == 0) throw InputError(msg);
    throw RuntimeError(fmt::format("dinov2: LibTorch failed while {}: {}", what, msg));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // the AOTInductor runtime throws std::runtime_error
    throw RuntimeError(fmt::format("dinov2: LibTorch failed while {}: {}", what, e.what()));
  }
}

/// The ATen dtype of `d` (float32 for kAuto, which a backend resolves first).
inline at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat16:
      return at::kHalf;
    default:
      return at::kFloat;
  }
}

/// The LibTorch device that Options::device and Options::device_index name.
inline c10::Device torch_device(const Options& o) {
  return o.device == Device::kCUDA
             ? c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(o.device_index))
             : c10::Device(c10::DeviceType::CPU);
}

}  // namespace dinov2::detail
