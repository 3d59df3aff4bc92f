// SPDX-License-Identifier: Apache-2.0
// The TorchScript backend (detail/backend.hpp): loading a dinov2-export TorchScript file,
// checking it against its metadata, fusing linear + GELU for oneDNN, and running its methods.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/subgraph_rewrite.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/runtime/graph_iterator.h>
#include <torch/script.h>

#include <functional>
#include <map>
#include <tuple>
#include <utility>

#include "detail/archive_check.hpp"
#include "detail/backend.hpp"
#include "detail/boundary.hpp"
#include "detail/model_file.hpp"
#include "detail/runtime_setup.hpp"
#include "detail/weights.hpp"
#include "dinov2/error.hpp"
#include "dinov2/runtime.hpp"

namespace dinov2::detail {

namespace {

/// The metadata must describe the graph's own weights: numbers that disagree with the parameters
/// (a hand-edited or damaged file) would fail later inside TorchScript, or compute garbage.
void check_against_weights(const torch::jit::Module& module, const ModelInfo& info,
                           const std::string& path) {
  std::map<std::string, at::Tensor> params;
  int64_t blocks = 0;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    params.emplace(item.name, item.value);
    if (item.name.rfind("blocks.", 0) == 0 &&
        item.name.find(".norm1.weight") != std::string::npos) {
      ++blocks;
    }
  }
  const auto get = [&](const char* name) {
    const auto it = params.find(name);
    if (it == params.end())
      bad_metadata(path, fmt::format("the graph has no parameter '{}'", name));
    return it->second;
  };
  const at::Tensor proj = get("patch_embed.proj.weight");
  if (proj.dim() != 4 || proj.size(0) != info.embed_dim || proj.size(1) != 3 ||
      proj.size(2) != info.patch_size || proj.size(3) != info.patch_size) {
    bad_metadata(path, fmt::format("embed_dim {} and patch_size {} disagree with the graph's patch "
                                   "embedding {}",
                                   info.embed_dim, info.patch_size, shape_of(proj)));
  }
  const at::Tensor pos = get("pos_embed");
  if (pos.dim() != 3 || pos.size(1) != 1 + info.pos_grid_h * info.pos_grid_w ||
      pos.size(2) != info.embed_dim) {
    bad_metadata(path,
                 fmt::format("pos_grid {}x{} disagrees with the graph's position embedding {}",
                             info.pos_grid_h, info.pos_grid_w, shape_of(pos)));
  }
  if (blocks != info.depth) {
    bad_metadata(path,
                 fmt::format("depth {} disagrees with the graph's {} blocks", info.depth, blocks));
  }
  const int64_t registers = params.count("register_tokens") ? get("register_tokens").size(1) : 0;
  if (registers != info.num_register_tokens) {
    bad_metadata(path, fmt::format("num_register_tokens {} disagrees with the graph's {} register "
                                   "tokens",
                                   info.num_register_tokens, registers));
  }
}

/// What DType::kAuto stands for with these options on this machine, and why; other dtypes are
/// taken as asked.
std::pair<DType, std::string> resolve_dtype(const Options& o) {
  if (o.dtype != DType::kAuto) {
    return {o.dtype, fmt::format("{} (asked for)", to_string(o.dtype))};
  }
  if (o.device == Device::kCUDA) {
    bool bf16 = false;
    try {
      const c10::DeviceGuard guard(
          c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(o.device_index)));
      bf16 = at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
    } catch (const std::exception&) {
      bf16 = false;
    }
    if (bf16) return {DType::kBFloat16, "auto: bfloat16, which this CUDA device computes natively"};
    return {DType::kFloat32,
            "auto: float32, since this CUDA device is older than compute capability 8.0 and has no "
            "native bfloat16"};
  }
  const CpuInfo cpu = cpu_info();
  if (cpu.native_bfloat16) {
    return {DType::kBFloat16,
            fmt::format("auto: bfloat16, which this CPU ({}, oneDNN {}) computes in hardware",
                        cpu.model, cpu.onednn_isa)};
  }
  return {DType::kFloat32,
          fmt::format("auto: float32, since this CPU ({}, oneDNN {}) has no bfloat16 hardware "
                      "(AVX512-BF16 or AMX) and emulated bfloat16 is slower than float32",
                      cpu.model, cpu.onednn_isa)};
}

/// Whether oneDNN has bfloat16 kernels on this CPU under the process's ISA limit (LibTorch's own
/// test, which its bfloat16 matrix products follow). Without them oneDNN cannot build the fused
/// bfloat16 linear.
bool onednn_has_bfloat16() {
  try {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "")
                               .typed<bool()>();
    return op.call();
  } catch (const std::exception&) {
    return false;
  }
}

/// The methods of a backbone file that run the model.
constexpr const char* kMethods[] = {"forward", "intermediate_layers", "cls_attention"};

/// What fuse_linear_gelu changed: linear + GELU pairs fused, other linear layers moved to oneDNN,
/// weights prepacked in oneDNN's blocked layout.
struct FusedCounts {
  int gelu_pairs = 0;
  int other_linears = 0;
  int packed_weights = 0;
};

/// The attribute path of `value` from `self` ("blocks.0.mlp.fc1.weight"), or "" when `value` is
/// not read through attributes.
std::string attribute_path(torch::jit::Value* value, const torch::jit::Value* self) {
  std::vector<std::string> names;
  while (value != self) {
    const torch::jit::Node* node = value->node();
    if (node->kind() != c10::prim::GetAttr) return {};
    names.push_back(node->s(c10::attr::name));
    value = node->input(0);
  }
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

/// Replaces, in `module`, each linear weight that every method uses only as the weight of a
/// oneDNN linear by the same weight in oneDNN's blocked layout, so that no call reorders it
/// again (1.03x-1.10x a layer on a Zen 4 EPYC). The packed tensor replaces the plain one: memory
/// does not grow. Returns how many weights were packed.
int prepack_linear_weights(torch::jit::Module& module) {
  static const auto linear = c10::Symbol::fromQualString("mkldnn::_linear_pointwise");
  std::map<std::string, bool> packable;  // weight path -> every use is a oneDNN linear's weight
  for (const char* name : kMethods) {
    auto graph = module.get_method(name).graph();
    const torch::jit::Value* self = graph->inputs().at(0);
    torch::jit::DepthFirstGraphNodeIterator it(graph);
    for (auto* node = it.next(); node != nullptr; node = it.next()) {
      if (node->kind() != c10::prim::GetAttr || node->s(c10::attr::name) != "weight") continue;
      const std::string path = attribute_path(node->output(), self);
      if (path.empty()) continue;
      bool ok = true;
      for (const auto& use : node->output()->uses()) {
        ok = ok && use.user->kind() == linear && use.offset == 1;
      }
      const auto [entry, added] = packable.emplace(path, ok);
      if (!added) entry->second = entry->second && ok;
    }
  }
  static const auto reorder = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                                  .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  int packed = 0;
  for (const auto& [path, ok] : packable) {
    if (!ok) continue;
    torch::jit::Module owner = module;
    size_t start = 0;
    for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', start)) {
      owner = owner.attr(path.substr(start, dot - start)).toModule();
      start = dot + 1;
    }
    const at::Tensor weight = owner.attr("weight").toTensor();
    if (weight.dim() != 2 || weight.is_mkldnn()) continue;
    // Without the guard autograd would keep the plain weight alive as the packed one's input.
    const torch::NoGradGuard no_grad;
    owner.setattr("weight", reorder.call(weight.detach(), std::nullopt));
    ++packed;
  }
  return packed;
}

/// Counts the nodes of `kind` in `graph`, blocks included.
int count_nodes(std::shared_ptr<torch::jit::Graph> graph, const char* kind) {
  const auto symbol = c10::Symbol::fromQualString(kind);
  int n = 0;
  torch::jit::DepthFirstGraphNodeIterator it(graph);
  for (auto* node = it.next(); node != nullptr; node = it.next()) n += node->kind() == symbol;
  return n;
}

/// Rewrites linear + exact GELU into one oneDNN linear with a GELU post-op in the methods of
/// `module` (after inlining their calls), and with `all_linears` every other linear layer into a
/// oneDNN linear without post-op.
FusedCounts fuse_linear_gelu(torch::jit::Module& module, bool all_linears) {
  torch::jit::SubgraphRewriter rewriter;
  rewriter.RegisterRewritePattern(R"IR(
graph(%x, %w, %b, %approximate):
  %h = aten::linear(%x, %w, %b)
  %y = aten::gelu(%h, %approximate)
  return (%y))IR",
                                  R"IR(
graph(%x, %w, %b, %approximate):
  %attr : str = prim::Constant[value="gelu"]()
  %scalars : Scalar?[] = prim::ListConstruct()
  %y = mkldnn::_linear_pointwise(%x, %w, %b, %attr, %scalars, %approximate)
  return (%y))IR");
  torch::jit::SubgraphRewriter linears;
  linears.RegisterRewritePattern(R"IR(
graph(%x, %w, %b):
  %y = aten::linear(%x, %w, %b)
  return (%y))IR",
                                 R"IR(
graph(%x, %w, %b):
  %attr : str = prim::Constant[value="none"]()
  %scalars : Scalar?[] = prim::ListConstruct()
  %algorithm : str = prim::Constant[value=""]()
  %y = mkldnn::_linear_pointwise(%x, %w, %b, %attr, %scalars, %algorithm)
  return (%y))IR");
  FusedCounts counts;
  for (const char* name : kMethods) {
    auto graph = module.get_method(name).graph();
    torch::jit::Inline(*graph);
    const int gelus = count_nodes(graph, "aten::gelu");
    rewriter.runOnGraph(graph);
    counts.gelu_pairs += gelus - count_nodes(graph, "aten::gelu");
    if (all_linears) {
      const int linear = count_nodes(graph, "aten::linear");
      linears.runOnGraph(graph);
      counts.other_linears += linear - count_nodes(graph, "aten::linear");
    }
  }
  if (all_linears) counts.packed_weights = prepack_linear_weights(module);
  return counts;
}

/// The plan Kernels::kAuto takes on this CPU (float32 or bfloat16 on the CPU, oneDNN present),
/// with the reason. Where oneDNN may use AVX2 or better, every linear layer on oneDNN with
/// prepacked weights: for the whole model 1.05x-1.15x the fused GELU alone on a Zen 4 EPYC,
/// under AVX-512 and under an AVX2 limit (docs/BENCHMARKS.md). Below AVX2, unmeasured: the fused
/// GELU alone, as before.
std::pair<Kernels, std::string> auto_kernels() {
  const CpuInfo cpu = cpu_info();
  const std::string where =
      fmt::format("Kernels::kAuto on {}, oneDNN {}", cpu.model, cpu.onednn_isa);
  if (cpu.onednn_isa.rfind("AVX512", 0) == 0 || cpu.onednn_isa.rfind("AVX2", 0) == 0) {
    return {Kernels::kOneDNN, where};
  }
  return {Kernels::kFusedGelu, where};
}

class TorchScriptBackend final : public ModelBackend {
 public:
  /// Reads the module with `read` (again, should fusing fail), checks and prepares it; `path`
  /// names it in messages. See load_torchscript.
  TorchScriptBackend(const std::string& path, const std::function<LoadedModule()>& read,
                     const Options& options);

  std::vector<at::Tensor> forward(const at::Tensor& pixels, bool with_prenorm) const override {
    const std::vector<c10::IValue> items = call("forward", pixels).toTupleRef().elements().vec();
    std::vector<at::Tensor> out{items.at(0).toTensor(), items.at(1).toTensor(),
                                items.at(2).toTensor()};
    if (with_prenorm) out.push_back(items.at(3).toTensor());
    return out;
  }

  void require(const char* /*method*/) const override {}

  LayerOutputs intermediate_layers(const at::Tensor& pixels, const std::vector<int64_t>& blocks,
                                   bool norm) const override {
    auto out = call("intermediate_layers", pixels, {c10::List<int64_t>(blocks), norm}).toTuple();
    return {out->elements().at(0).toTensorVector(), out->elements().at(1).toTensorVector()};
  }

  at::Tensor cls_attention(const at::Tensor& pixels) const override {
    return call("cls_attention", pixels).toTensor();
  }

 private:
  /// Runs a method of the module on the pixels (copied to the model's device and dtype) and
  /// further arguments, without autograd bookkeeping.
  c10::IValue call(const char* method, const at::Tensor& pixels,
                   std::vector<c10::IValue> more = {}) const {
    c10::InferenceMode guard;
    std::vector<c10::IValue> args{to_model(pixels)};
    for (auto& a : more) args.push_back(std::move(a));
    return module_.get_method(method)(std::move(args));
  }

  torch::jit::Module module_;
};

/// Reads a dinov2-export file: its module and metadata, refusing what is not a backbone export.
LoadedModule read_export(const std::string& path) {
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}, {kHeadMetadataFile, ""}};
  LoadedModule out;
  try {
    // Without the debug pickles (source ranges for error messages): in a damaged file they make
    // TorchScript's ErrorReport::what(), which is noexcept, throw and so terminate the process
    // (found by fuzz_head). Errors still quote the scripted code itself.
    out.module = torch::jit::load(path, c10::Device(c10::DeviceType::CPU), extra,
                                  /*load_debug_files=*/false);
  } catch (const std::exception& e) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is not a readable TorchScript archive ({}); a file saved with torch.save "
        "(a state dict) is not enough, and a damaged file must be exported again: export the "
        "model with dinov2-export",
        path, first_line(e.what())));
  }
  if (extra[kMetadataFile].empty()) {
    if (!extra[kHeadMetadataFile].empty()) {
      throw ModelFileError(fmt::format(
          "dinov2: '{}' is a dinov2 head file, not a backbone; load it with the heads API", path));
    }
    throw ModelFileError(
        fmt::format("dinov2: '{}' is a TorchScript file but not a DINOv2 export (no {} inside); "
                    "export the backbone with dinov2-export",
                    path, kMetadataFile));
  }
  out.metadata = extra[kMetadataFile];
  return out;
}

TorchScriptBackend::TorchScriptBackend(const std::string& path,
                                       const std::function<LoadedModule()>& read,
                                       const Options& options) {
  ModelSetup& s = setup_;
  const auto read_module = [&] {
    LoadedModule loaded = read();
    if (s.info.variant.empty()) s.info = parse_metadata(loaded.metadata, path);
    return std::move(loaded.module);
  };
  module_ = read_module();
  if (s.info.backend != Backend::kTorchScript) {
    bad_metadata(path, fmt::format("a TorchScript file must describe a 'torchscript' backend, not "
                                   "'{}'",
                                   to_string(s.info.backend)));
  }
  for (const char* method : kMethods) {
    if (!module_.find_method(method)) {
      throw ModelFileError(fmt::format(
          "dinov2: '{}' has dinov2 metadata but no '{}' method; re-export it with dinov2-export",
          path, method));
    }
  }
  check_against_weights(module_, s.info, path);

  std::tie(s.compute_dtype, s.dtype_reason) = resolve_dtype(options);
  s.device = torch_device(options);
  s.dtype = scalar_type(s.compute_dtype);
  ensure_runtime_configured();
  // The deprecated process-wide fields of Options, when set (dinov2/runtime.hpp replaces them).
  if (options.threads > 0) at::set_num_threads(options.threads);
  if (options.profiled_runs >= 0) {
    torch::jit::getNumProfiledRuns() = static_cast<size_t>(options.profiled_runs);
  }
  bool fuse = false;
  if (!options.fused_kernels) {
    s.fusion_reason = "off (Options::fused_kernels is false)";
  } else if (options.device != Device::kCPU) {
    s.fusion_reason = "not applied on CUDA";
  } else if (s.compute_dtype == DType::kFloat16) {
    s.fusion_reason = "not applied in float16";
  } else if (!at::hasMKLDNN()) {
    s.fusion_reason = "not applied: this LibTorch has no oneDNN";
  } else if (s.compute_dtype == DType::kBFloat16 && !onednn_has_bfloat16()) {
    const CpuInfo cpu = cpu_info();
    s.fusion_reason = fmt::format(
        "not applied: oneDNN has no bfloat16 kernels on this CPU ({}, oneDNN {}), so bfloat16 "
        "runs LibTorch's emulated kernels, unfused",
        cpu.model, cpu.onednn_isa);
  } else if (options.kernels == Kernels::kExported) {
    s.fusion_reason = "off (Options::kernels is Kernels::kExported)";
  } else {
    fuse = true;
  }
  Kernels plan = options.kernels;
  std::string why =
      fmt::format("Kernels::{} asked for", plan == Kernels::kOneDNN ? "kOneDNN" : "kFusedGelu");
  if (fuse && plan == Kernels::kAuto) std::tie(plan, why) = auto_kernels();
  const auto prepare = [&] {
    translate_errors("moving the model to its device and dtype", [&] {
      module_.eval();
      module_.to(s.device, s.dtype);
      const FusedCounts counts =
          fuse ? fuse_linear_gelu(module_, plan == Kernels::kOneDNN) : FusedCounts{};
      s.fused_layers = counts.gelu_pairs;
      if (fuse && plan == Kernels::kOneDNN) {
        s.fusion_reason = fmt::format(
            "{} linear + GELU pairs fused into oneDNN calls, {} other linear layers on oneDNN, "
            "{} weights prepacked ({})",
            counts.gelu_pairs, counts.other_linears, counts.packed_weights, why);
      } else if (fuse) {
        s.fusion_reason = fmt::format("{} linear + GELU pairs fused into oneDNN calls ({})",
                                      counts.gelu_pairs, why);
      }
    });
  };
  prepare();
  // One patch through the forward pass now. Reduced-precision kernels are not all present on
  // every device, so a failure is a DeviceError at load time rather than an error in the first
  // call; and without profiled runs the executor builds its optimised plan on the first call,
  // which is then paid here (docs/BENCHMARKS.md: about 0.1 s for ViT-S/14) instead of by the
  // first batch. With profiled runs the plan would be specialised to this tiny input: skip it.
  // The TorchScript interpreter rethrows kernel failures as c10::Error or std::runtime_error.
  const auto one_patch = [&]() -> std::string {
    try {
      c10::InferenceMode guard;
      const int64_t p = s.info.patch_size;
      module_.forward(
          {at::zeros({1, 3, p, p}, at::TensorOptions().device(s.device).dtype(s.dtype))});
      return {};
    } catch (const c10::Error& e) {
      return torch_message(e);
    } catch (const std::exception& e) {
      return first_line(e.what());
    }
  };
  if (s.compute_dtype != DType::kFloat32 || torch::jit::getNumProfiledRuns() == 0 || fuse) {
    std::string failure = one_patch();
    if (!failure.empty() && fuse) {
      // The fused oneDNN call is the part most tied to the CPU: run the file's graph instead.
      s.fusion_reason =
          fmt::format("not applied: oneDNN could not run the fused call on this CPU ({})", failure);
      fuse = false;
      module_ = read_module();
      prepare();
      failure = one_patch();
    }
    if (!failure.empty()) {
      if (s.compute_dtype == DType::kFloat32) {
        // float32 runs everywhere, so the file's own code is at fault.
        throw ModelFileError(fmt::format(
            "dinov2: '{}' failed on a one-patch input at load time ({}); its code or weights are "
            "damaged: re-export it with dinov2-export",
            path, failure));
      }
      throw DeviceError(fmt::format(
          "dinov2: {} inference does not run on {} with this LibTorch ({}); use DType::kBFloat16 "
          "or DType::kFloat32",
          to_string(s.compute_dtype), s.device.str(), failure));
    }
  }
}

}  // namespace

std::unique_ptr<ModelBackend> load_torchscript(const std::string& path, const Options& options) {
  if (const std::string problem = pickle_problem(path); !problem.empty()) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is damaged ({}); export the model again with dinov2-export", path, problem));
  }
  return std::make_unique<TorchScriptBackend>(
      path, [&] { return read_export(path); }, options);
}

std::unique_ptr<ModelBackend> load_weights(const std::string& path, ModelSource source,
                                           const Options& options) {
  return std::make_unique<TorchScriptBackend>(
      path,
      [&] {
        BuiltBackbone built = build_backbone(path, source, options.architecture_file);
        return LoadedModule{std::move(built.module), std::move(built.metadata)};
      },
      options);
}

}  // namespace dinov2::detail
