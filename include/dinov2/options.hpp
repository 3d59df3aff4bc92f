// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Options for Model::load: device, compute dtype, fused kernels and the token cap of one
/// model. Process-wide settings (threads, profiling) are RuntimeSettings in dinov2/runtime.hpp.
#pragma once

#include <cstdint>
#include <string>

namespace dinov2 {

/// @brief Where the model runs.
enum class Device {
  kCPU,   ///< the host CPU
  kCUDA,  ///< an NVIDIA GPU; needs a CUDA build of LibTorch and a visible device
};

/// @brief The dtype the model computes in.
enum class DType {
  kFloat32,   ///< full precision; the reference numerics
  kBFloat16,  ///< about 3 significant digits, float32 range: the safe reduced precision
  kFloat16,   ///< about 3 significant digits, range up to 65504: may overflow to NaN/Inf
  /// The fastest dtype that keeps the features (CLS cosine with float32 >= 0.999): bfloat16 on
  /// CPUs that compute it in hardware (CpuInfo::native_bfloat16: AVX512-BF16 or AMX) and on CUDA
  /// devices of compute capability 8.0 and up; float32 everywhere else. Model::dtype() says
  /// which was chosen and Model::dtype_reason() why.
  kAuto,
};

/// @brief Which kernels run the linear layers of a TorchScript model on the CPU (float32 and
/// bfloat16). The plans differ in rounding only; docs/BENCHMARKS.md has what each measured on
/// which CPU.
enum class Kernels {
  /// The plan measured fastest for this CPU: kOneDNN where oneDNN may use AVX2 or AVX-512
  /// (measured 1.05x-1.15x kFusedGelu under both), kFusedGelu on older CPUs (unmeasured there).
  /// Model::fusion_reason() says which was taken.
  kAuto,
  /// Every linear layer as a oneDNN call with its weight prepacked at load in oneDNN's blocked
  /// layout (replacing the plain copy: no extra memory), each MLP's first with its GELU as a
  /// post-op.
  kOneDNN,
  /// Only each MLP's first linear layer and its GELU as one oneDNN call; the other linear
  /// layers as exported (the default of earlier versions).
  kFusedGelu,
  /// The file's graph as exported: bit-identical to PyTorch under the same kernels.
  kExported,
};

/// @brief How Model::load places and runs the model. A plain struct: set fields directly or
/// chain the `with_*` setters, e.g.
/// `Options{}.with_device(Device::kCUDA).with_dtype(DType::kBFloat16)`.
struct Options {
  /// @brief Device for the parameters and the computation. Default: the CPU.
  Device device = Device::kCPU;
  /// @brief Index of the CUDA device (ignored on the CPU). Default 0.
  int device_index = 0;
  /// @brief Compute dtype. The loaded module is converted to it when the file was exported in
  /// another dtype. Outputs are float32 whatever this is. Default float32, the reference
  /// numerics; DType::kAuto picks bfloat16 where the hardware computes it (the throughput
  /// choice). ONNX exports (the OpenVINO backend) run float32 only.
  DType dtype = DType::kFloat32;
  /// @brief Deprecated: a process-wide setting; use configure_runtime() and
  /// RuntimeSettings::threads (dinov2/runtime.hpp). When positive, Model::load still applies it
  /// with at::set_num_threads, for every model in the process. 0 (the default) leaves it.
  int threads = 0;
  /// @brief Largest patch-token count h*w accepted per image; a larger input throws InputError
  /// with ErrorCode::kTooManyTokens before any memory is allocated. Attention memory grows with
  /// the square of this number. Default 16384 (e.g. 1792x1792 pixels).
  int64_t max_tokens = 16384;
  /// @brief On the CPU in float32 or bfloat16, run linear layers as oneDNN calls where that is
  /// faster (`kernels` says which; docs/BENCHMARKS.md has the gains): each MLP's first linear
  /// layer with its GELU as one call (no separate bias copy and GELU pass), and under
  /// Kernels::kOneDNN the other linear layers too. Outputs then differ from the exported graph by
  /// rounding only, as oneDNN's kernel for the CPU rounds (float32 parity tests hold them to
  /// 1e-5 of PyTorch; the fused GELU alone measured bit-identical on an AVX-512 Xeon, within
  /// 1.1e-6 on an AVX2 EPYC and 4.3e-6 on an AVX-512 Zen 4 EPYC). false runs the file's graph
  /// exactly as exported. Ignored on CUDA, in float16, and when LibTorch has no oneDNN; where
  /// oneDNN cannot build its call for this CPU and dtype (bfloat16 without AVX-512, or under
  /// ONEDNN_MAX_CPU_ISA), the model runs as exported and Model::fusion_reason() says why.
  /// Default true; false is the same as `kernels = Kernels::kExported`.
  bool fused_kernels = true;
  /// @brief Which kernels run the linear layers on the CPU (see Kernels); ignored when
  /// fused_kernels is false, on CUDA, in float16, and for AOTInductor packages and ONNX exports
  /// (OpenVINO compiles those itself). Default
  /// Kernels::kAuto, the plan measured fastest for this CPU.
  Kernels kernels = Kernels::kAuto;
  /// @brief Deprecated: a process-wide setting; use configure_runtime() and
  /// RuntimeSettings::profiled_runs (dinov2/runtime.hpp), whose default (0: no profiling run)
  /// the first Model::load applies. When >= 0, Model::load still sets it for the whole process.
  /// -1 (the default) leaves it.
  int profiled_runs = -1;
  /// @brief For weights only (a Hugging Face folder or safetensors file, an official .pth): the
  /// architecture file to fill instead of the one built into the library for the variant. The
  /// built-in files have the official depths; a model with another block count (a trimmed or
  /// test model) needs its own, written by `python -m dinov2_export.architecture --variant V
  /// --depth N` (docs/FORMAT.md). Empty (the default): the built-in file. Ignored for .pt and
  /// .pt2 files.
  std::string architecture_file;

  /// @brief Sets device and device_index.
  Options& with_device(Device d, int index = 0) {
    device = d;
    device_index = index;
    return *this;
  }
  /// @brief Sets dtype.
  Options& with_dtype(DType d) {
    dtype = d;
    return *this;
  }
  /// @brief Sets threads (deprecated, process-wide; see the field).
  Options& with_threads(int n) {
    threads = n;
    return *this;
  }
  /// @brief Sets fused_kernels.
  Options& with_fused_kernels(bool on) {
    fused_kernels = on;
    return *this;
  }
  /// @brief Sets kernels.
  Options& with_kernels(Kernels k) {
    kernels = k;
    return *this;
  }
  /// @brief Sets profiled_runs (deprecated, process-wide; see the field).
  Options& with_profiled_runs(int n) {
    profiled_runs = n;
    return *this;
  }
  /// @brief Sets max_tokens.
  Options& with_max_tokens(int64_t n) {
    max_tokens = n;
    return *this;
  }
};

/// @brief "cpu" or "cuda".
inline const char* to_string(Device d) { return d == Device::kCUDA ? "cuda" : "cpu"; }
/// @brief "auto", "onednn", "fused-gelu" or "exported".
inline const char* to_string(Kernels k) {
  switch (k) {
    case Kernels::kOneDNN:
      return "onednn";
    case Kernels::kFusedGelu:
      return "fused-gelu";
    case Kernels::kExported:
      return "exported";
    default:
      return "auto";
  }
}

/// @brief "float32", "bfloat16", "float16" (the names used in the file metadata) or "auto".
inline const char* to_string(DType d) {
  switch (d) {
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    case DType::kAuto:
      return "auto";
    default:
      return "float32";
  }
}

}  // namespace dinov2
