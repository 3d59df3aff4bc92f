// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief What the machine this process runs on can do, as far as the library's kernels care:
/// the CPU's model, the vector instructions ATen and oneDNN use, and whether bfloat16 and int8
/// arithmetic run in hardware. Model::load uses it to choose DType::kAuto and the fused kernels;
/// the `dinov2` tool prints it and records it in every output file.
#pragma once

#include <string>

namespace dinov2 {

/// @brief The CPU as the library's kernels see it. Hardware flags come from the processor (via
/// LibTorch's cpuinfo); the `aten_capability` and `onednn_isa` fields and the `native_*` verdicts
/// also honour the process's limits, ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA (or
/// DNNL_MAX_CPU_ISA), so an AVX-512 machine limited to AVX2 reports what an AVX2 machine does.
struct CpuInfo {
  std::string model;            ///< the processor's name, e.g. "AMD EPYC" ("unknown" if none)
  std::string aten_capability;  ///< vector ISA of ATen's kernels: "AVX512", "AVX2" or "DEFAULT"
  std::string onednn_isa;       ///< best ISA oneDNN may use, e.g. "AVX2", "AVX512_CORE_AMX"
  std::string onednn_limit;     ///< the ONEDNN_MAX_CPU_ISA value in force; empty when unset
  std::string aten_limit;       ///< the ATEN_CPU_CAPABILITY value in force; empty when unset
  bool avx2 = false;            ///< hardware: AVX2 and FMA
  bool avx512 = false;          ///< hardware: AVX-512 F, BW, VL and DQ
  bool avx512_bf16 = false;     ///< hardware: AVX512-BF16 (bfloat16 dot products)
  bool amx = false;             ///< hardware: AMX tiles with bfloat16 and int8
  bool vnni = false;            ///< hardware: AVX512-VNNI or AVX-VNNI (int8 dot products)
  /// bfloat16 matrix products run in hardware (AVX512-BF16 or AMX) and oneDNN may use them.
  /// Elsewhere LibTorch emulates bfloat16 matrix products in float32, which measured 8x slower
  /// than float32 on an AVX2 EPYC (docs/BENCHMARKS.md).
  bool native_bfloat16 = false;
  bool native_int8 = false;  ///< int8 dot products in hardware (VNNI or AMX), oneDNN may use them
  int threads = 0;           ///< LibTorch's intra-op thread count at the time of the call
};

/// @brief The CPU this process runs on. The hardware part is read once; `threads` is current.
/// Never throws.
CpuInfo cpu_info();

/// @brief One line for logs and file metadata, e.g. "AMD EPYC; ATen AVX2; oneDNN AVX2; bfloat16
/// emulated; int8 VNNI no; AMX no; 2 threads".
std::string to_string(const CpuInfo& cpu);

/// @brief The same facts as a JSON object (compact), as the `dinov2` tool records them in output
/// metadata under "cpu".
std::string to_json(const CpuInfo& cpu);

/// @brief Process-wide LibTorch settings, shared by every Model in the process (the split of ONNX
/// Runtime's Ort::Env and its per-session options): Options holds what belongs to one model,
/// this what belongs to the process. Set them once with configure_runtime(), before loading
/// models; when it was never called, the first Model::load applies the defaults below.
struct RuntimeSettings {
  /// @brief Intra-op CPU threads (at::set_num_threads). 0 (the default) leaves LibTorch's
  /// default, one per core.
  int threads = 0;
  /// @brief How many profiled runs LibTorch's TorchScript executor makes before it optimises a
  /// graph. The profiling run holds every intermediate tensor and so sets the peak memory of a
  /// process (ViT-S/14 at 518, batch 8: about 950 MB profiled, 560 MB without). 0 (the default)
  /// skips it; -1 leaves LibTorch's setting.
  int profiled_runs = 0;

  /// @brief Sets threads.
  RuntimeSettings& with_threads(int n) {
    threads = n;
    return *this;
  }
  /// @brief Sets profiled_runs.
  RuntimeSettings& with_profiled_runs(int n) {
    profiled_runs = n;
    return *this;
  }
};

/// @brief Applies `settings` to the process now. Throws InputError (kInvalidArgument) for threads
/// below 0 or profiled_runs below -1. Thread-safe; a Model loaded earlier follows the new
/// settings too (they are LibTorch's global state).
void configure_runtime(const RuntimeSettings& settings);

/// @brief The settings last applied by configure_runtime() (the defaults before any call).
RuntimeSettings runtime_settings();

}  // namespace dinov2
