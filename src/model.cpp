// SPDX-License-Identifier: Apache-2.0
// Model: checking the options and the input, running a backbone through its backend
// (detail/backend.hpp), and turning the outputs into Features.
#include "dinov2/model.hpp"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_and.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "detail/backend.hpp"
#include "detail/boundary.hpp"
#include "detail/model_file.hpp"
#include "detail/weights.hpp"
#include "dinov2/error.hpp"

namespace dinov2 {

namespace {

using detail::translate_errors;

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

void check_device(const Options& o) {
  if (o.device != Device::kCUDA) return;
  if (!torch::cuda::is_available()) {
    throw DeviceError(
        "dinov2: Options::device is CUDA, but LibTorch sees no CUDA device (a CPU-only LibTorch "
        "build, no GPU, or no driver); use Device::kCPU or a CUDA build of LibTorch");
  }
  const int64_t count = torch::cuda::device_count();
  if (o.device_index < 0 || o.device_index >= count) {
    throw DeviceError(fmt::format(
        "dinov2: Options::device_index is {}, but there {} {} CUDA device{} (indices 0..{})",
        o.device_index, count == 1 ? "is" : "are", count, count == 1 ? "" : "s", count - 1));
  }
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
  std::unique_ptr<detail::ModelBackend> backend;
  Options options;

  const ModelInfo& info() const { return backend->setup().info; }

  /// Checks a pixel batch and returns its patch grid size {h, w}.
  std::pair<int64_t, int64_t> check_pixels(const at::Tensor& x) const {
    if (!x.defined()) throw InputError("dinov2: the pixel tensor is undefined (empty at::Tensor)");
    if (x.dim() != 4) {
      throw InputError(fmt::format(
          "dinov2: expected a [B, 3, H, W] batch, got a tensor with {} dimensions {}; add a batch "
          "dimension with unsqueeze(0)",
          x.dim(), detail::shape_of(x)));
    }
    if (x.size(1) != 3) {
      throw InputError(fmt::format(
          "dinov2: expected 3 channels (RGB) in dimension 1, got {} (shape {}); the input must be "
          "[B, 3, H, W]",
          x.size(1), detail::shape_of(x)));
    }
    if (x.size(0) < 1) throw InputError("dinov2: the batch is empty (B = 0)");
    if (!at::isFloatingType(x.scalar_type())) {
      throw InputError(fmt::format(
          "dinov2: expected normalised floating-point pixels, got dtype {}; convert and normalise "
          "with the Preprocessor (or (x / 255 - mean) / std)",
          c10::toString(x.scalar_type())));
    }
    const int64_t p = info().patch_size;
    const int64_t height = x.size(2);
    const int64_t width = x.size(3);
    if (height < p || width < p || height % p != 0 || width % p != 0) {
      auto nearest = [p](int64_t side) { return std::max(p, (side + p / 2) / p * p); };
      throw InputError(fmt::format(
          "dinov2: image size {}x{} (HxW) is not a positive multiple of the patch size {}; resize "
          "or crop to e.g. {}x{}",
          height, width, p, nearest(height), nearest(width)));
    }
    const int64_t h = height / p;
    const int64_t w = width / p;
    if (h * w > options.max_tokens) {
      throw InputError::too_many_tokens(fmt::format(
          "dinov2: image is {}x{}, which needs {} tokens; the limit is {} (Options::max_tokens)",
          height, width, with_commas(h * w), with_commas(options.max_tokens)));
    }
    return {h, w};
  }

  std::vector<PatchGrid> grids_for(const at::Tensor& x) const {
    return std::vector<PatchGrid>(
        static_cast<size_t>(x.size(0)),
        PatchGrid::for_input(x.size(2), x.size(3), static_cast<int>(info().patch_size)));
  }

  std::vector<PatchGrid> grids_for(const Batch& batch, int64_t h, int64_t w) const {
    if (batch.grids.empty()) return grids_for(batch.pixels);
    if (static_cast<int64_t>(batch.grids.size()) != batch.pixels.size(0)) {
      throw InputError(fmt::format(
          "dinov2: the batch holds {} images but {} grids; give one grid per image or none",
          batch.pixels.size(0), batch.grids.size()));
    }
    for (size_t i = 0; i < batch.grids.size(); ++i) {
      const PatchGrid& g = batch.grids[i];
      if (g.rows != h || g.cols != w || g.patch_size != info().patch_size) {
        throw InputError(fmt::format(
            "dinov2: grid {} is {}x{} patches of {} px, but the pixels make {}x{} patches of {} px",
            i, g.rows, g.cols, g.patch_size, h, w, info().patch_size));
      }
    }
    return batch.grids;
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
    if (backend->setup().dtype == at::kHalf) {
      throw RuntimeError(
          "dinov2: the model produced NaN or Inf in float16 (an overflow of the "
          "activations); load it with DType::kBFloat16 or DType::kFloat32");
    }
    throw RuntimeError(
        fmt::format("dinov2: the model produced NaN or Inf in {}; check the input for NaN or Inf "
                    "values",
                    to_string(backend->setup().compute_dtype)));
  }

  Features run(const at::Tensor& pixels, std::vector<PatchGrid> grids, int64_t h, int64_t w,
               bool with_prenorm) const {
    return translate_errors("running the model", [&] {
      const std::vector<at::Tensor> items = backend->forward(pixels, with_prenorm);
      Features f;
      f.cls = to_output(items.at(0));
      f.registers = to_output(items.at(1));
      const at::Tensor& patches = items.at(2);
      f.patches = to_output(patches).view({patches.size(0), h, w, patches.size(2)});
      if (with_prenorm) f.prenorm = to_output(items.at(3));
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
    backend->require("intermediate_layers");
    const int64_t depth = info().depth;
    LayerFeatures lf;
    for (int64_t b : blocks) {
      if (b < -depth || b >= depth) {
        throw InputError::invalid_argument(fmt::format(
            "dinov2: block index {} is out of range for a model with {} blocks (valid: 0..{} or "
            "-{}..-1)",
            b, depth, depth - 1, depth));
      }
      lf.indices.push_back(b < 0 ? b + depth : b);
    }
    return translate_errors("running intermediate_layers", [&] {
      const detail::LayerOutputs out = backend->intermediate_layers(pixels, blocks, norm);
      const auto& patches = out.patches;
      const auto& cls = out.cls;
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
        fmt::format("dinov2: Options::max_tokens is {}; it must be positive", options.max_tokens));
  }
  if (options.threads < 0) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: Options::threads is {}; use 0 for LibTorch's default or a positive "
                    "count",
                    options.threads));
  }
  if (options.profiled_runs < -1) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: Options::profiled_runs is {}; use -1 to keep LibTorch's setting, 0 "
                    "or a positive count",
                    options.profiled_runs));
  }
  const auto kernels = static_cast<int>(options.kernels);
  if (kernels < static_cast<int>(Kernels::kAuto) ||
      kernels > static_cast<int>(Kernels::kExported)) {
    throw InputError::invalid_argument(fmt::format(
        "dinov2: Options::kernels is {}, not a dinov2::Kernels value (kAuto, kOneDNN, kFusedGelu "
        "or kExported)",
        kernels));
  }
  const detail::ModelSource source = detail::model_source(path);
  switch (source) {
    case detail::ModelSource::kExport:
    case detail::ModelSource::kPackage:
      detail::check_file(path);
      break;
    default:
      break;
  }
  check_device(options);
  auto impl = std::make_unique<Impl>();
  switch (source) {
    case detail::ModelSource::kPackage:
      impl->backend = detail::load_aoti_package(path, options);
      break;
    case detail::ModelSource::kOnnx:
      impl->backend = detail::load_openvino(path, options);
      break;
    case detail::ModelSource::kExport:
      impl->backend = detail::load_torchscript(path, options);
      break;
    default:
      impl->backend = detail::load_weights(path, source, options);
  }
  impl->options = std::move(options);
  return Model(std::move(impl));
}

bool backend_available(Backend b) noexcept {
  return b != Backend::kOpenVINO || DINOV2_WITH_OPENVINO;
}

const ModelInfo& Model::info() const { return impl_->info(); }
const Options& Model::options() const { return impl_->options; }
int Model::fused_layers() const { return impl_->backend->setup().fused_layers; }
const std::string& Model::fusion_reason() const { return impl_->backend->setup().fusion_reason; }
DType Model::dtype() const { return impl_->backend->setup().compute_dtype; }
const std::string& Model::dtype_reason() const { return impl_->backend->setup().dtype_reason; }

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
  impl_->backend->require("cls_attention");
  const auto grid = impl_->check_pixels(pixels);
  const int64_t h = grid.first;
  const int64_t w = grid.second;
  return translate_errors("running cls_attention", [&] {
    const at::Tensor attn = impl_->backend->cls_attention(pixels);
    at::Tensor out = Impl::to_output(attn).view({attn.size(0), attn.size(1), h, w});
    impl_->check_finite({out});
    return out;
  });
}

ModelInfo convert_weights(const std::string& weights, const std::string& output,
                          const std::string& architecture_file) {
  return detail::reading_file(weights, [&] {
    const detail::ModelSource source = detail::model_source(weights);
    if (source == detail::ModelSource::kExport || source == detail::ModelSource::kPackage) {
      detail::check_file(weights);  // a missing path gets its usual message
      throw ModelFileError(fmt::format(
          "dinov2: '{}' is already a dinov2-export file; convert reads weights: a Hugging Face "
          "folder or model.safetensors, or an official .pth",
          weights));
    }
    detail::BuiltBackbone built = detail::build_backbone(weights, source, architecture_file);
    const ModelInfo info = detail::parse_metadata(built.metadata, weights);
    const std::string partial = output + ".partial";
    try {
      built.module.save(partial, {{detail::kMetadataFile, built.metadata}});
    } catch (const c10::Error& e) {
      std::remove(partial.c_str());
      throw InputError(
          fmt::format("dinov2: cannot write '{}' ({})", output, detail::torch_message(e)));
    }
    if (std::rename(partial.c_str(), output.c_str()) != 0) {
      std::remove(partial.c_str());
      throw InputError(
          fmt::format("dinov2: cannot move the converted file to "
                      "'{}' ({})",
                      output, std::strerror(errno)));
    }
    return info;
  });
}

}  // namespace dinov2
