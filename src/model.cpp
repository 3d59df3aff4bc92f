// SPDX-License-Identifier: Apache-2.0
// Model: loading a dinov2-export TorchScript file, checking its metadata, and running it.
#include "dinov2/model.hpp"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/StringUtil.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/subgraph_rewrite.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/runtime/graph_iterator.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "detail/archive_check.hpp"
#include "detail/boundary.hpp"
#include "detail/model_file.hpp"
#include "detail/runtime_setup.hpp"
#include "dinov2/error.hpp"
#include "dinov2/runtime.hpp"
#include "dinov2/version.hpp"

namespace dinov2 {

namespace {

using detail::torch_message;

using nlohmann::json;

using detail::bad_metadata;
using detail::check_file;
using detail::is_package_path;
using detail::kHeadMetadataFile;
using detail::kMetadataFile;
using detail::parse_metadata;

/// 98536 -> "98,536", as in the token-cap message.
std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

/// Runs `f`, turning LibTorch exceptions into dinov2::Error (dinov2 errors pass through).
template <class F>
auto translate_errors(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::OutOfMemoryError& e) {
    throw RuntimeError(c10::str("dinov2: out of memory while ", what, ": ", torch_message(e),
                                "; use a smaller batch or input, or lower Options::max_tokens"));
  } catch (const c10::Error& e) {
    const std::string msg = torch_message(e);
    if (msg.rfind("dinov2:", 0) == 0) throw InputError(msg);
    throw RuntimeError(c10::str("dinov2: LibTorch failed while ", what, ": ", msg));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // the AOTInductor runtime throws std::runtime_error
    throw RuntimeError(c10::str("dinov2: LibTorch failed while ", what, ": ", e.what()));
  }
}

at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat16:
      return at::kHalf;
    default:
      return at::kFloat;
  }
}

// -- loading ----------------------------------------------------------------------------------

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
    if (it == params.end()) bad_metadata(path, c10::str("the graph has no parameter '", name, "'"));
    return it->second;
  };
  const at::Tensor proj = get("patch_embed.proj.weight");
  if (proj.dim() != 4 || proj.size(0) != info.embed_dim || proj.size(1) != 3 ||
      proj.size(2) != info.patch_size || proj.size(3) != info.patch_size) {
    bad_metadata(path,
                 c10::str("embed_dim ", info.embed_dim, " and patch_size ", info.patch_size,
                          " disagree with the graph's patch embedding ", detail::shape_of(proj)));
  }
  const at::Tensor pos = get("pos_embed");
  if (pos.dim() != 3 || pos.size(1) != 1 + info.pos_grid_h * info.pos_grid_w ||
      pos.size(2) != info.embed_dim) {
    bad_metadata(
        path, c10::str("pos_grid ", info.pos_grid_h, "x", info.pos_grid_w,
                       " disagrees with the graph's position embedding ", detail::shape_of(pos)));
  }
  if (blocks != info.depth) {
    bad_metadata(path,
                 c10::str("depth ", info.depth, " disagrees with the graph's ", blocks, " blocks"));
  }
  const int64_t registers = params.count("register_tokens") ? get("register_tokens").size(1) : 0;
  if (registers != info.num_register_tokens) {
    bad_metadata(path, c10::str("num_register_tokens ", info.num_register_tokens,
                                " disagrees with the graph's ", registers, " register tokens"));
  }
}

void check_device(const Options& o) {
  if (o.device != Device::kCUDA) return;
  if (!torch::cuda::is_available()) {
    throw DeviceError(
        "dinov2: Options::device is CUDA, but LibTorch sees no CUDA device (a CPU-only LibTorch "
        "build, no GPU, or no driver); use Device::kCPU or a CUDA build of LibTorch");
  }
  const int64_t count = torch::cuda::device_count();
  if (o.device_index < 0 || o.device_index >= count) {
    throw DeviceError(c10::str("dinov2: Options::device_index is ", o.device_index, ", but there ",
                               count == 1 ? "is" : "are", " ", count, " CUDA device",
                               count == 1 ? "" : "s", " (indices 0..", count - 1, ")"));
  }
}

c10::Device torch_device(const Options& o) {
  return o.device == Device::kCUDA
             ? c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(o.device_index))
             : c10::Device(c10::DeviceType::CPU);
}

/// What DType::kAuto stands for with these options on this machine, and why; other dtypes are
/// taken as asked.
std::pair<DType, std::string> resolve_dtype(const Options& o) {
  if (o.dtype != DType::kAuto) return {o.dtype, c10::str(to_string(o.dtype), " (asked for)")};
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
    return {DType::kBFloat16, c10::str("auto: bfloat16, which this CPU (", cpu.model, ", oneDNN ",
                                       cpu.onednn_isa, ") computes in hardware")};
  }
  return {DType::kFloat32,
          c10::str("auto: float32, since this CPU (", cpu.model, ", oneDNN ", cpu.onednn_isa,
                   ") has no bfloat16 hardware (AVX512-BF16 or AMX) and emulated bfloat16 is "
                   "slower than float32")};
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

/// Rewrites linear + exact GELU into one oneDNN linear with a GELU post-op in the methods of
/// `module` (after inlining their calls). Returns how many pairs were fused.
int fuse_linear_gelu(torch::jit::Module& module) {
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
  int fused = 0;
  for (const char* name : kMethods) {
    auto graph = module.get_method(name).graph();
    torch::jit::Inline(*graph);
    const auto count = [&] {
      int n = 0;
      torch::jit::DepthFirstGraphNodeIterator it(graph);
      for (auto* node = it.next(); node != nullptr; node = it.next()) {
        n += node->kind() == c10::Symbol::fromQualString("aten::gelu") ? 1 : 0;
      }
      return n;
    };
    const int before = count();
    rewriter.runOnGraph(graph);
    fused += before - count();
  }
  return fused;
}

}  // namespace

// -- Features ---------------------------------------------------------------------------------

at::Tensor Features::pooled() const {
  if (!cls.defined() || !patches.defined()) {
    throw InputError::invalid_argument("dinov2: Features::pooled() on empty features");
  }
  return translate_errors("pooling features", [&] {
    return at::cat({cls, patches.mean({1, 2})}, -1);
  });
}

Features Features::normalized() const {
  return translate_errors("normalising features", [&] {
    auto l2 = [](const at::Tensor& t) {
      if (!t.defined() || t.numel() == 0) return t;
      return t / t.norm(2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
    };
    Features out;
    out.cls = l2(cls);
    out.registers = l2(registers);
    out.patches = l2(patches);
    out.prenorm = prenorm;
    out.grids = grids;
    return out;
  });
}

Features Features::cpu() const {
  return translate_errors("copying features to the CPU", [&] {
    auto host = [](const at::Tensor& t) { return t.defined() ? t.cpu() : t; };
    Features out;
    out.cls = host(cls);
    out.registers = host(registers);
    out.patches = host(patches);
    out.prenorm = host(prenorm);
    out.grids = grids;
    return out;
  });
}

// -- Model ------------------------------------------------------------------------------------

struct Model::Impl {
  /// Opens and checks an AOTInductor package (.pt2).
  static std::unique_ptr<Impl> open_package(const std::string& path, Options options);

  torch::jit::Module module;
  /// Set instead of `module` for an AOTInductor package.
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
  ModelInfo info;
  Options options;
  c10::Device device{c10::DeviceType::CPU};
  at::ScalarType dtype = at::kFloat;
  DType compute_dtype = DType::kFloat32;
  std::string dtype_reason;
  int fused_layers = 0;
  std::string fusion_reason;

  /// Checks a pixel batch and returns its patch grid size {h, w}.
  std::pair<int64_t, int64_t> check_pixels(const at::Tensor& x) const {
    if (!x.defined()) throw InputError("dinov2: the pixel tensor is undefined (empty at::Tensor)");
    if (x.dim() != 4) {
      throw InputError(c10::str("dinov2: expected a [B, 3, H, W] batch, got a tensor with ",
                                x.dim(), " dimensions ", x.sizes(),
                                "; add a batch dimension with unsqueeze(0)"));
    }
    if (x.size(1) != 3) {
      throw InputError(c10::str("dinov2: expected 3 channels (RGB) in dimension 1, got ", x.size(1),
                                " (shape ", x.sizes(), "); the input must be [B, 3, H, W]"));
    }
    if (x.size(0) < 1) throw InputError("dinov2: the batch is empty (B = 0)");
    if (!at::isFloatingType(x.scalar_type())) {
      throw InputError(
          c10::str("dinov2: expected normalised floating-point pixels, got dtype ",
                   c10::toString(x.scalar_type()),
                   "; convert and normalise with the Preprocessor (or (x / 255 - mean) / std)"));
    }
    const int64_t p = info.patch_size;
    const int64_t height = x.size(2);
    const int64_t width = x.size(3);
    if (height < p || width < p || height % p != 0 || width % p != 0) {
      auto nearest = [p](int64_t side) { return std::max(p, (side + p / 2) / p * p); };
      throw InputError(c10::str("dinov2: image size ", height, "x", width,
                                " (HxW) is not a positive multiple of the patch size ", p,
                                "; resize or crop to e.g. ", nearest(height), "x", nearest(width)));
    }
    const int64_t h = height / p;
    const int64_t w = width / p;
    if (h * w > options.max_tokens) {
      throw InputError::too_many_tokens(c10::str(
          "dinov2: image is ", height, "x", width, ", which needs ", with_commas(h * w),
          " tokens; the limit is ", with_commas(options.max_tokens), " (Options::max_tokens)"));
    }
    return {h, w};
  }

  std::vector<PatchGrid> grids_for(const at::Tensor& x) const {
    return std::vector<PatchGrid>(
        static_cast<size_t>(x.size(0)),
        PatchGrid::for_input(x.size(2), x.size(3), static_cast<int>(info.patch_size)));
  }

  std::vector<PatchGrid> grids_for(const Batch& batch, int64_t h, int64_t w) const {
    if (batch.grids.empty()) return grids_for(batch.pixels);
    if (static_cast<int64_t>(batch.grids.size()) != batch.pixels.size(0)) {
      throw InputError(c10::str("dinov2: the batch holds ", batch.pixels.size(0), " images but ",
                                batch.grids.size(), " grids; give one grid per image or none"));
    }
    for (size_t i = 0; i < batch.grids.size(); ++i) {
      const PatchGrid& g = batch.grids[i];
      if (g.rows != h || g.cols != w || g.patch_size != info.patch_size) {
        throw InputError(c10::str("dinov2: grid ", i, " is ", g.rows, "x", g.cols, " patches of ",
                                  g.patch_size, " px, but the pixels make ", h, "x", w,
                                  " patches of ", info.patch_size, " px"));
      }
    }
    return batch.grids;
  }

  /// The pixels on the model's device in its dtype. A CPU batch bound for a CUDA model is staged
  /// in page-locked (pinned) memory, unless it is already there, and copied without blocking the
  /// host: the copy is queued on the current CUDA stream of the model's device, the stream the
  /// forward pass then runs on, so it needs no synchronisation (the caching host allocator keeps
  /// the staging buffer until the copy is done). Everything else is an ordinary `to`.
  at::Tensor to_model(const at::Tensor& pixels) const {
    if (device.is_cuda() && pixels.device().is_cpu()) {
      const at::Tensor host = pixels.is_pinned() ? pixels : pixels.pin_memory();
      return host.to(device, dtype, /*non_blocking=*/true);
    }
    return pixels.to(device, dtype);
  }

  /// Runs a method of the module on the pixels (copied to the model's device and dtype) and
  /// further arguments, without autograd bookkeeping.
  c10::IValue call(const char* method, const at::Tensor& pixels,
                   std::vector<c10::IValue> more = {}) const {
    c10::InferenceMode guard;
    std::vector<c10::IValue> args{to_model(pixels)};
    for (auto& a : more) args.push_back(std::move(a));
    return module.get_method(method)(std::move(args));
  }

  /// float32, contiguous, and not an inference tensor: called outside InferenceMode, so that
  /// callers may use the result in autograd code (e.g. to train a probe) without a clone.
  static at::Tensor to_output(const at::Tensor& t) {
    at::Tensor out = t.to(at::kFloat).contiguous();
    return out.is_inference() ? out.clone() : out;
  }

  void check_finite(const std::vector<at::Tensor>& outputs) const {
    at::Tensor ok;
    for (const auto& t : outputs) {
      if (!t.defined() || t.numel() == 0) continue;
      auto finite = at::isfinite(t).all();
      ok = ok.defined() ? at::logical_and(ok, finite) : finite;
    }
    if (!ok.defined() || ok.item<bool>()) return;
    if (dtype == at::kHalf) {
      throw RuntimeError(
          "dinov2: the model produced NaN or Inf in float16 (an overflow of the "
          "activations); load it with DType::kBFloat16 or DType::kFloat32");
    }
    throw RuntimeError(c10::str("dinov2: the model produced NaN or Inf in ",
                                to_string(compute_dtype),
                                "; check the input for NaN or Inf values"));
  }

  /// An AOTInductor package's forward: the compiled size only, batches split to max_batch.
  std::vector<at::Tensor> run_package(const at::Tensor& pixels) const {
    const auto [ch, cw] = info.compiled_size;
    if (pixels.size(2) != ch || pixels.size(3) != cw) {
      throw InputError(c10::str("dinov2: this AOTInductor package was compiled for ", ch, "x", cw,
                                " (HxW) inputs, got ", pixels.size(2), "x", pixels.size(3),
                                "; resize to ", ch, "x", cw,
                                ", compile a package for this size, or use the TorchScript file"));
    }
    c10::InferenceMode guard;
    const at::Tensor x = to_model(pixels).contiguous();
    std::vector<std::vector<at::Tensor>> parts;
    for (int64_t begin = 0; begin < x.size(0); begin += info.max_batch) {
      const int64_t end = std::min(x.size(0), begin + info.max_batch);
      parts.push_back(package->run({x.slice(0, begin, end).contiguous()}));
    }
    if (parts.size() == 1) return parts[0];
    std::vector<at::Tensor> out;
    for (size_t i = 0; i < parts[0].size(); ++i) {
      std::vector<at::Tensor> pieces;
      for (const auto& p : parts) pieces.push_back(p.at(i));
      out.push_back(at::cat(pieces, 0));
    }
    return out;
  }

  [[noreturn]] void not_in_package(const char* method) const {
    throw InputError::invalid_argument(
        c10::str("dinov2: ", method,
                 " is not compiled into AOTInductor packages (they hold the forward pass "
                 "only); load the TorchScript (.pt) export of the model for it"));
  }

  Features run(const at::Tensor& pixels, std::vector<PatchGrid> grids, int64_t h, int64_t w,
               bool with_prenorm) const {
    return translate_errors("running the model", [&] {
      std::vector<c10::IValue> items;
      if (package) {
        for (auto& t : run_package(pixels)) items.emplace_back(std::move(t));
      } else {
        items = call("forward", pixels).toTupleRef().elements().vec();
      }
      Features f;
      f.cls = to_output(items.at(0).toTensor());
      f.registers = to_output(items.at(1).toTensor());
      const at::Tensor patches = items.at(2).toTensor();
      f.patches = to_output(patches).view({patches.size(0), h, w, patches.size(2)});
      if (with_prenorm) f.prenorm = to_output(items.at(3).toTensor());
      check_finite({f.cls, f.registers, f.patches});
      f.grids = std::move(grids);
      return f;
    });
  }

  LayerFeatures run_layers(const at::Tensor& pixels, std::vector<PatchGrid> grids, int64_t h,
                           int64_t w, const std::vector<int64_t>& blocks, bool norm) const {
    if (blocks.empty()) {
      throw InputError::invalid_argument(
          "dinov2: intermediate_layers needs at least one block index");
    }
    if (package) not_in_package("intermediate_layers");
    LayerFeatures lf;
    for (int64_t b : blocks) {
      if (b < -info.depth || b >= info.depth) {
        throw InputError::invalid_argument(
            c10::str("dinov2: block index ", b, " is out of range for a model with ", info.depth,
                     " blocks (valid: 0..", info.depth - 1, " or -", info.depth, "..-1)"));
      }
      lf.indices.push_back(b < 0 ? b + info.depth : b);
    }
    return translate_errors("running intermediate_layers", [&] {
      auto out = call("intermediate_layers", pixels, {c10::List<int64_t>(blocks), norm}).toTuple();
      const auto patches = out->elements().at(0).toTensorVector();
      const auto cls = out->elements().at(1).toTensorVector();
      for (size_t i = 0; i < patches.size(); ++i) {
        lf.patches.push_back(
            to_output(patches[i]).view({patches[i].size(0), h, w, patches[i].size(2)}));
        lf.cls.push_back(to_output(cls[i]));
      }
      std::vector<at::Tensor> all(lf.patches);
      all.insert(all.end(), lf.cls.begin(), lf.cls.end());
      check_finite(all);
      lf.grids = std::move(grids);
      return lf;
    });
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, Options options) {
  // The boundary: whatever LibTorch, TorchScript or the standard library throws while reading a
  // file leaves as a dinov2::Error.
  return detail::reading_file(path, [&] { return load_checked(path, std::move(options)); });
}

Model Model::load_checked(const std::string& path, Options options) {
  if (options.max_tokens <= 0) {
    throw InputError::invalid_argument(
        c10::str("dinov2: Options::max_tokens is ", options.max_tokens, "; it must be positive"));
  }
  if (options.threads < 0) {
    throw InputError::invalid_argument(
        c10::str("dinov2: Options::threads is ", options.threads,
                 "; use 0 for LibTorch's default or a positive count"));
  }
  if (options.profiled_runs < -1) {
    throw InputError::invalid_argument(
        c10::str("dinov2: Options::profiled_runs is ", options.profiled_runs,
                 "; use -1 to keep LibTorch's setting, 0 or a positive count"));
  }
  check_file(path);
  check_device(options);
  if (is_package_path(path)) return Model(Impl::open_package(path, std::move(options)));

  auto impl = std::make_unique<Impl>();
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}, {kHeadMetadataFile, ""}};
  const auto read_module = [&] {
    try {
      // Without the debug pickles (source ranges for error messages): in a damaged file they make
      // TorchScript's ErrorReport::what(), which is noexcept, throw and so terminate the process
      // (found by fuzz_head). Errors still quote the scripted code itself.
      return torch::jit::load(path, c10::Device(c10::DeviceType::CPU), extra,
                              /*load_debug_files=*/false);
    } catch (const std::exception& e) {
      throw ModelFileError(c10::str("dinov2: '", path, "' is not a readable TorchScript archive (",
                                    detail::first_line(e.what()),
                                    "); a file saved with torch.save (a state dict) is not "
                                    "enough, and a damaged file must be exported again: export "
                                    "the model with dinov2-export"));
    }
  };
  if (const std::string problem = detail::pickle_problem(path); !problem.empty()) {
    throw ModelFileError(c10::str("dinov2: '", path, "' is damaged (", problem,
                                  "); export the model again with dinov2-export"));
  }
  impl->module = read_module();
  if (extra[kMetadataFile].empty()) {
    if (!extra[kHeadMetadataFile].empty()) {
      throw ModelFileError(
          c10::str("dinov2: '", path,
                   "' is a dinov2 head file, not a backbone; load it with the heads API"));
    }
    throw ModelFileError(
        c10::str("dinov2: '", path, "' is a TorchScript file but not a DINOv2 export (no ",
                 kMetadataFile, " inside); export the backbone with dinov2-export"));
  }
  impl->info = parse_metadata(extra[kMetadataFile], path);
  for (const char* method : kMethods) {
    if (!impl->module.find_method(method)) {
      throw ModelFileError(c10::str("dinov2: '", path, "' has dinov2 metadata but no '", method,
                                    "' method; re-export it with dinov2-export"));
    }
  }
  check_against_weights(impl->module, impl->info, path);

  std::tie(impl->compute_dtype, impl->dtype_reason) = resolve_dtype(options);
  impl->options = options;
  impl->device = torch_device(options);
  impl->dtype = scalar_type(impl->compute_dtype);
  detail::ensure_runtime_configured();
  // The deprecated process-wide fields of Options, when set (dinov2/runtime.hpp replaces them).
  if (options.threads > 0) at::set_num_threads(options.threads);
  if (options.profiled_runs >= 0) {
    torch::jit::getNumProfiledRuns() = static_cast<size_t>(options.profiled_runs);
  }
  bool fuse = false;
  if (!options.fused_kernels) {
    impl->fusion_reason = "off (Options::fused_kernels is false)";
  } else if (options.device != Device::kCPU) {
    impl->fusion_reason = "not applied on CUDA";
  } else if (impl->compute_dtype == DType::kFloat16) {
    impl->fusion_reason = "not applied in float16";
  } else if (!at::hasMKLDNN()) {
    impl->fusion_reason = "not applied: this LibTorch has no oneDNN";
  } else if (impl->compute_dtype == DType::kBFloat16 && !onednn_has_bfloat16()) {
    const CpuInfo cpu = cpu_info();
    impl->fusion_reason = c10::str("not applied: oneDNN has no bfloat16 kernels on this CPU (",
                                   cpu.model, ", oneDNN ", cpu.onednn_isa,
                                   "), so bfloat16 runs LibTorch's emulated kernels, unfused");
  } else {
    fuse = true;
  }
  const auto prepare = [&] {
    translate_errors("moving the model to its device and dtype", [&] {
      impl->module.eval();
      impl->module.to(impl->device, impl->dtype);
      impl->fused_layers = fuse ? fuse_linear_gelu(impl->module) : 0;
      if (fuse) {
        impl->fusion_reason =
            c10::str(impl->fused_layers, " linear + GELU pairs fused into oneDNN calls");
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
      const int64_t p = impl->info.patch_size;
      impl->module.forward(
          {at::zeros({1, 3, p, p}, at::TensorOptions().device(impl->device).dtype(impl->dtype))});
      return {};
    } catch (const c10::Error& e) {
      return torch_message(e);
    } catch (const std::exception& e) {
      return detail::first_line(e.what());
    }
  };
  if (impl->compute_dtype != DType::kFloat32 || torch::jit::getNumProfiledRuns() == 0 || fuse) {
    std::string failure = one_patch();
    if (!failure.empty() && fuse) {
      // The fused oneDNN call is the part most tied to the CPU: run the file's graph instead.
      impl->fusion_reason =
          c10::str("not applied: oneDNN could not run the fused call on this CPU (", failure, ")");
      fuse = false;
      impl->module = read_module();
      prepare();
      failure = one_patch();
    }
    if (!failure.empty()) {
      if (impl->compute_dtype == DType::kFloat32) {
        // float32 runs everywhere, so the file's own code is at fault.
        throw ModelFileError(c10::str("dinov2: '", path,
                                      "' failed on a one-patch input at load time (", failure,
                                      "); its code or weights are damaged: re-export it with "
                                      "dinov2-export"));
      }
      throw DeviceError(c10::str("dinov2: ", to_string(impl->compute_dtype),
                                 " inference does not run on ", impl->device.str(),
                                 " with this LibTorch (", failure,
                                 "); use DType::kBFloat16 or DType::kFloat32"));
    }
  }
  return Model(std::move(impl));
}

std::unique_ptr<Model::Impl> Model::Impl::open_package(const std::string& path, Options options) {
  auto impl = std::make_unique<Impl>();
  try {
    const auto meta =
        torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    const auto it = meta.find(kMetadataFile);
    if (it == meta.end() || it->second.empty()) {
      throw ModelFileError(c10::str("dinov2: '", path,
                                    "' is an AOTInductor package but not a "
                                    "DINOv2 export (no ",
                                    kMetadataFile,
                                    " in its metadata); compile it with dinov2-export --aot"));
    }
    impl->info = parse_metadata(it->second, path);
    const auto device = meta.find("AOTI_DEVICE_KEY");
    const std::string want = options.device == Device::kCUDA ? "cuda" : "cpu";
    if (device != meta.end() && device->second != want) {
      throw DeviceError(c10::str("dinov2: '", path, "' was compiled for ", device->second,
                                 ", but Options::device is ", want,
                                 "; compile a package for this device with dinov2-export --aot"));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelFileError(c10::str("dinov2: '", path, "' is not a readable AOTInductor package (",
                                  e.what(), "); compile one with dinov2-export --aot"));
  }
  if (impl->info.backend != Backend::kAOTInductor) {
    bad_metadata(path, "a .pt2 package must describe an 'aotinductor' backend");
  }
  if (options.dtype == DType::kAuto) {
    impl->compute_dtype = impl->info.dtype == "bfloat16"  ? DType::kBFloat16
                          : impl->info.dtype == "float16" ? DType::kFloat16
                                                          : DType::kFloat32;
    impl->dtype_reason =
        c10::str("auto: ", impl->info.dtype, ", the dtype the package was compiled for");
  } else if (to_string(options.dtype) != impl->info.dtype) {
    throw DeviceError(c10::str("dinov2: '", path, "' was compiled for ", impl->info.dtype,
                               ", but Options::dtype is ", to_string(options.dtype),
                               "; a package runs in the dtype it was compiled for (dinov2-export "
                               "--aot --dtype)"));
  } else {
    impl->compute_dtype = options.dtype;
    impl->dtype_reason = c10::str(to_string(options.dtype), " (asked for)");
  }
  detail::ensure_runtime_configured();
  if (options.threads > 0) at::set_num_threads(options.threads);  // deprecated, process-wide
  impl->options = options;
  impl->device = torch_device(options);
  impl->dtype = scalar_type(impl->compute_dtype);
  impl->fusion_reason = "not applied: AOTInductor packages are compiled as they are";
  try {
    impl->package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", /*run_single_threaded=*/false, /*num_runners=*/1,
        static_cast<c10::DeviceIndex>(options.device == Device::kCUDA ? options.device_index : -1));
  } catch (const std::exception& e) {
    throw ModelFileError(c10::str("dinov2: cannot load the AOTInductor package '", path, "' (",
                                  detail::first_line(e.what()),
                                  "); it must be compiled with the PyTorch version this library "
                                  "links"));
  }
  return impl;
}

const ModelInfo& Model::info() const { return impl_->info; }
const Options& Model::options() const { return impl_->options; }
int Model::fused_layers() const { return impl_->fused_layers; }
const std::string& Model::fusion_reason() const { return impl_->fusion_reason; }
DType Model::dtype() const { return impl_->compute_dtype; }
const std::string& Model::dtype_reason() const { return impl_->dtype_reason; }

Features Model::extract_features(const at::Tensor& pixels, bool with_prenorm) const {
  const auto [h, w] = impl_->check_pixels(pixels);
  return impl_->run(pixels, impl_->grids_for(pixels), h, w, with_prenorm);
}

Features Model::extract_features(const Batch& batch, bool with_prenorm) const {
  const auto [h, w] = impl_->check_pixels(batch.pixels);
  return impl_->run(batch.pixels, impl_->grids_for(batch, h, w), h, w, with_prenorm);
}

LayerFeatures Model::intermediate_layers(const at::Tensor& pixels,
                                         const std::vector<int64_t>& blocks, bool norm) const {
  const auto [h, w] = impl_->check_pixels(pixels);
  return impl_->run_layers(pixels, impl_->grids_for(pixels), h, w, blocks, norm);
}

LayerFeatures Model::intermediate_layers(const Batch& batch, const std::vector<int64_t>& blocks,
                                         bool norm) const {
  const auto [h, w] = impl_->check_pixels(batch.pixels);
  return impl_->run_layers(batch.pixels, impl_->grids_for(batch, h, w), h, w, blocks, norm);
}

at::Tensor Model::cls_attention(const at::Tensor& pixels) const {
  if (impl_->package) impl_->not_in_package("cls_attention");
  const auto grid = impl_->check_pixels(pixels);
  const int64_t h = grid.first;
  const int64_t w = grid.second;
  return translate_errors("running cls_attention", [&] {
    const at::Tensor attn = impl_->call("cls_attention", pixels).toTensor();
    at::Tensor out = Impl::to_output(attn).view({attn.size(0), attn.size(1), h, w});
    impl_->check_finite({out});
    return out;
  });
}

}  // namespace dinov2
