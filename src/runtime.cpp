// SPDX-License-Identifier: Apache-2.0
// cpu_info(): the processor's flags from LibTorch's cpuinfo, capped by the ISA limits that ATen
// and oneDNN honour, so that the verdicts describe what the kernels will actually run.
#include "dinov2/runtime.hpp"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <fmt/format.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>

#include "detail/runtime_setup.hpp"
#include "dinov2/error.hpp"

namespace dinov2 {

namespace {

// oneDNN's x86 ISA levels, lowest first, under the names ONEDNN_MAX_CPU_ISA takes. Each level
// includes the ones before it; the AVX10 names are oneDNN's newer aliases of the AVX512_CORE_*
// levels beside them.
constexpr std::array<const char*, 11> kOnednnIsa = {"SSE41",
                                                    "AVX",
                                                    "AVX2",
                                                    "AVX2_VNNI",
                                                    "AVX2_VNNI_2",
                                                    "AVX512_CORE",
                                                    "AVX512_CORE_VNNI",
                                                    "AVX512_CORE_BF16",
                                                    "AVX512_CORE_FP16",
                                                    "AVX512_CORE_AMX",
                                                    "AVX512_CORE_AMX_FP16"};
enum Level : int {
  kAvx2 = 2,
  kAvx2Vnni = 3,
  kAvx512Core = 5,
  kAvx512Vnni = 6,
  kAvx512Bf16 = 7,
  kAvx512Amx = 9,
};

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

/// The level named by an ONEDNN_MAX_CPU_ISA value; -1 for no limit (unset, ALL, DEFAULT or a name
/// oneDNN does not know, which it ignores too).
int onednn_limit_level(const std::string& value) {
  std::string v = upper(value);
  if (v == "AVX10_1_512") v = "AVX512_CORE_FP16";
  if (v == "AVX10_1_512_AMX") v = "AVX512_CORE_AMX";
  if (v == "AVX10_1_512_AMX_FP16") v = "AVX512_CORE_AMX_FP16";
  for (size_t i = 0; i < kOnednnIsa.size(); ++i) {
    if (v == kOnednnIsa[i]) return static_cast<int>(i);
  }
  return -1;
}

CpuInfo read_cpu() {
  CpuInfo cpu;
  std::unordered_map<std::string, c10::IValue> caps;
  try {
    caps = at::cpu::get_cpu_capabilities();
  } catch (...) {  // no cpuinfo for this processor: report nothing native
  }
  const auto flag = [&](const char* key) {
    const auto it = caps.find(key);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  const auto name = caps.find("cpu_name");
  cpu.model = name != caps.end() && name->second.isString() && !name->second.toStringRef().empty()
                  ? name->second.toStringRef()
                  : "unknown";
  try {
    cpu.aten_capability = at::get_cpu_capability();
  } catch (...) {
    cpu.aten_capability = "unknown";
  }
  cpu.avx2 = flag("avx2") && flag("fma3");
  cpu.avx512 = flag("avx512_f") && flag("avx512_bw") && flag("avx512_vl") && flag("avx512_dq");
  cpu.avx512_bf16 = cpu.avx512 && flag("avx512_bf16");
  cpu.amx = flag("amx_tile") && flag("amx_bf16") && flag("amx_int8");
  cpu.vnni = flag("avx512_vnni") || flag("avx_vnni");

  int hw = flag("avx") ? 1 : 0;
  if (cpu.avx2) hw = kAvx2;
  if (cpu.avx2 && flag("avx_vnni")) hw = kAvx2Vnni;
  if (cpu.avx2 && flag("avx_vnni") && flag("avx_ne_convert") && flag("avx_vnni_int8")) hw = 4;
  if (cpu.avx512) hw = kAvx512Core;
  if (cpu.avx512 && flag("avx512_vnni")) hw = kAvx512Vnni;
  if (cpu.avx512_bf16 && flag("avx512_vnni")) hw = kAvx512Bf16;
  if (hw == kAvx512Bf16 && flag("avx512_fp16")) hw = 8;
  if (hw >= kAvx512Bf16 && cpu.amx) hw = kAvx512Amx;
  if (hw == kAvx512Amx && flag("amx_fp16")) hw = 10;

  int level = hw;
  const char* limit = env("ONEDNN_MAX_CPU_ISA");
  if (limit == nullptr) limit = env("DNNL_MAX_CPU_ISA");
  if (limit != nullptr) {
    cpu.onednn_limit = limit;
    const int cap = onednn_limit_level(limit);
    if (cap >= 0) level = std::min(level, cap);
  }
  if (const char* aten = env("ATEN_CPU_CAPABILITY")) cpu.aten_limit = aten;
  cpu.onednn_isa = kOnednnIsa[static_cast<size_t>(level)];
  cpu.native_bfloat16 =
      (cpu.avx512_bf16 && level >= kAvx512Bf16) || (cpu.amx && level >= kAvx512Amx);
  cpu.native_int8 = (flag("avx512_vnni") && level >= kAvx512Vnni) ||
                    (flag("avx_vnni") && level >= kAvx2Vnni && level != kAvx512Core) ||
                    (cpu.amx && level >= kAvx512Amx);
  return cpu;
}

}  // namespace

CpuInfo cpu_info() {
  static const CpuInfo hardware = read_cpu();
  CpuInfo cpu = hardware;
  try {
    cpu.threads = at::get_num_threads();
  } catch (...) {
    cpu.threads = 0;
  }
  return cpu;
}

std::string to_string(const CpuInfo& cpu) {
  std::string aten = cpu.aten_capability;
  if (!cpu.aten_limit.empty()) aten += fmt::format(" (ATEN_CPU_CAPABILITY={})", cpu.aten_limit);
  std::string onednn = cpu.onednn_isa;
  if (!cpu.onednn_limit.empty())
    onednn += fmt::format(" (ONEDNN_MAX_CPU_ISA={})", cpu.onednn_limit);
  return fmt::format("{}; ATen {}; oneDNN {}; bfloat16 {}; int8 VNNI {}; AMX {}; {} thread{}",
                     cpu.model, aten, onednn, cpu.native_bfloat16 ? "native" : "emulated",
                     cpu.native_int8 ? "yes" : "no",
                     cpu.amx && onednn_limit_level(cpu.onednn_isa) >= kAvx512Amx ? "yes" : "no",
                     cpu.threads, cpu.threads == 1 ? "" : "s");
}

std::string to_json(const CpuInfo& cpu) {
  nlohmann::json j = {
      {"model", cpu.model},
      {"aten_capability", cpu.aten_capability},
      {"onednn_isa", cpu.onednn_isa},
      {"native_bfloat16", cpu.native_bfloat16},
      {"native_int8", cpu.native_int8},
      {"avx2", cpu.avx2},
      {"avx512", cpu.avx512},
      {"avx512_bf16", cpu.avx512_bf16},
      {"amx", cpu.amx},
      {"vnni", cpu.vnni},
      {"threads", cpu.threads},
  };
  if (!cpu.aten_limit.empty()) j["aten_limit"] = cpu.aten_limit;
  if (!cpu.onednn_limit.empty()) j["onednn_limit"] = cpu.onednn_limit;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// ---------------------------------------------------------------------------------------------
// Process-wide settings

namespace {

std::mutex& runtime_mutex() {
  static std::mutex m;
  return m;
}
RuntimeSettings& current_settings() {
  static RuntimeSettings settings;
  return settings;
}
bool& runtime_configured() {
  static bool configured = false;
  return configured;
}

void apply(const RuntimeSettings& s) {
  if (s.threads > 0) at::set_num_threads(s.threads);
  if (s.profiled_runs >= 0) {
    torch::jit::getNumProfiledRuns() = static_cast<size_t>(s.profiled_runs);
  }
}

}  // namespace

void configure_runtime(const RuntimeSettings& settings) {
  if (settings.threads < 0) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: RuntimeSettings::threads is {}; use 0 for LibTorch's default or a "
                    "positive count",
                    settings.threads));
  }
  if (settings.profiled_runs < -1) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: RuntimeSettings::profiled_runs is {}; use -1 to keep LibTorch's "
                    "setting, 0 or a positive count",
                    settings.profiled_runs));
  }
  std::lock_guard<std::mutex> lock(runtime_mutex());
  apply(settings);
  current_settings() = settings;
  runtime_configured() = true;
}

RuntimeSettings runtime_settings() {
  std::lock_guard<std::mutex> lock(runtime_mutex());
  return current_settings();
}

namespace detail {

void ensure_runtime_configured() {
  std::lock_guard<std::mutex> lock(runtime_mutex());
  if (runtime_configured()) return;
  apply(current_settings());
  runtime_configured() = true;
}

}  // namespace detail

}  // namespace dinov2
