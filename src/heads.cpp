// SPDX-License-Identifier: Apache-2.0
// The linear heads: reading head files (TorchScript archive + dinov2/head.json) and computing
// the heads with ATen operations on the parameters they hold.
#include "dinov2/heads.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/script.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "detail/archive_check.hpp"
#include "detail/backend.hpp"
#include "detail/boundary.hpp"
#include "detail/json_fields.hpp"
#include "dinov2/error.hpp"
#include "dinov2/model.hpp"
#include "dinov2/version.hpp"

namespace dinov2 {

namespace {

using detail::torch_message;

using nlohmann::json;

constexpr const char* kHeadFile = "dinov2/head.json";
constexpr const char* kBackboneFile = "dinov2/metadata.json";
constexpr const char* kClassifier = "linear_classifier";
constexpr const char* kDepth = "depth_linear";
constexpr const char* kSegmentation = "segmentation_linear";

/// Runs `f` in inference mode, turning LibTorch exceptions into dinov2::Error.
template <class F>
auto compute(const char* what, F&& f) -> decltype(f()) {
  try {
    c10::InferenceMode guard;
    return f();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw RuntimeError(fmt::format("dinov2: LibTorch failed while {}: {}", what, torch_message(e)));
  } catch (const std::bad_alloc&) {
    throw RuntimeError(fmt::format("dinov2: out of memory while {}", what));
  } catch (const std::exception& e) {
    throw RuntimeError(
        fmt::format("dinov2: failed while {}: {}", what, detail::first_line(e.what())));
  }
}

// -- reading head files -------------------------------------------------------------------------

[[noreturn]] void bad_head(const std::string& path, const std::string& problem) {
  throw ModelFileError(
      fmt::format("dinov2: head file '{}' is invalid ({}); re-export it with dinov2-export-head",
                  path, problem));
}

template <class T>
T field(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) bad_head(path, fmt::format("{} has no field '{}'", kHeadFile, key));
  try {
    return detail::exact_get<T>(j.at(key));
  } catch (const std::exception&) {
    bad_head(path, fmt::format("field '{}' of {} has the wrong type or is out of range ({})", key,
                               kHeadFile, j.at(key).dump()));
  }
}

template <class T>
T field_or(const json& j, const char* key, T fallback, const std::string& path) {
  return j.contains(key) ? field<T>(j, key, path) : fallback;
}

void check_file(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) throw ModelFileError("dinov2: no head file path given");
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    throw ModelFileError(fmt::format(
        "dinov2: head file '{}' does not exist; export one with dinov2-export-head", path));
  }
  if (fs::is_directory(path, ec)) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is a directory; give the .pt file written by dinov2-export-head", path));
  }
  if (!detail::has_zip_magic(path)) {
    throw ModelFileError(
        fmt::format("dinov2: '{}' is not a TorchScript archive; an official .pth head must first "
                    "be converted with dinov2-export-head",
                    path));
  }
}

HeadInfo parse_info(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    bad_head(path, fmt::format("{} is not valid JSON: {}", kHeadFile, e.what()));
  }
  if (!j.is_object()) bad_head(path, fmt::format("{} is not a JSON object", kHeadFile));
  const auto format = field<std::string>(j, "format", path);
  if (format != "dinov2-head") {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' holds a '{}' file, not a 'dinov2-head'; export heads with dinov2-export-head",
        path, format));
  }
  HeadInfo info;
  info.format_version = field<int>(j, "format_version", path);
  if (info.format_version > kFormatVersion || info.format_version < 1) {
    throw ModelFileError(fmt::format(
        "dinov2: head file '{}' uses format version {}, but this dinov2 library ({}) reads "
        "versions 1 to {}; upgrade the library or re-export the head with dinov2-export-head {}",
        path, info.format_version, kVersion, kFormatVersion, kVersion));
  }
  info.kind = field<std::string>(j, "kind", path);
  info.head = field_or<std::string>(j, "head", info.kind, path);
  info.variant = field<std::string>(j, "variant", path);
  info.embed_dim = field<int64_t>(j, "embed_dim", path);
  info.patch_size = field_or<int64_t>(j, "patch_size", 14, path);
  info.dataset = field_or<std::string>(j, "dataset", "", path);
  info.blocks = field<std::vector<int64_t>>(j, "blocks", path);
  info.norm = field<bool>(j, "norm", path);
  if (info.embed_dim <= 0 || info.patch_size <= 0 || info.blocks.empty()) {
    bad_head(path, fmt::format("embed_dim {}, patch_size {} and {} blocks do not describe a head",
                               info.embed_dim, info.patch_size, info.blocks.size()));
  }
  if (info.kind == kClassifier || info.kind == kSegmentation) {
    info.num_classes = field<int64_t>(j, "num_classes", path);
    info.class_names = field<std::vector<std::string>>(j, "class_names", path);
    if (static_cast<int64_t>(info.class_names.size()) != info.num_classes) {
      bad_head(path, fmt::format("{} class names for {} classes", info.class_names.size(),
                                 info.num_classes));
    }
  }
  if (info.kind == kSegmentation) {
    for (const auto& rgb : field<std::vector<std::vector<int>>>(j, "palette", path)) {
      if (rgb.size() != 3) bad_head(path, "a palette entry is not an RGB triple");
      for (int v : rgb) {
        if (v < 0 || v > 255) {
          bad_head(path, fmt::format("palette entry [{}, {}, {}] has a value outside 0..255",
                                     rgb[0], rgb[1], rgb[2]));
        }
      }
      info.palette.push_back({static_cast<uint8_t>(rgb[0]), static_cast<uint8_t>(rgb[1]),
                              static_cast<uint8_t>(rgb[2])});
    }
    if (static_cast<int64_t>(info.palette.size()) != info.num_classes) {
      bad_head(path, fmt::format("{} palette colours for {} classes", info.palette.size(),
                                 info.num_classes));
    }
  }
  if (info.kind == kDepth) {
    info.upsample = field<int64_t>(j, "upsample", path);
    info.bins = field<int64_t>(j, "bins", path);
    info.min_depth = field<double>(j, "min_depth", path);
    info.max_depth = field<double>(j, "max_depth", path);
    info.score_offset = field<double>(j, "score_offset", path);
    if (info.upsample < 1 || info.bins < 1 || !(info.min_depth < info.max_depth)) {
      bad_head(path, fmt::format("upsample {}, {} bins and depth range [{}, {}] are not valid",
                                 info.upsample, info.bins, info.min_depth, info.max_depth));
    }
  }
  if (j.contains("weights") && j["weights"].is_object()) {
    info.weights_source = field_or<std::string>(j["weights"], "source", "", path);
    info.weights_sha256 = field_or<std::string>(j["weights"], "sha256", "", path);
  }
  info.metadata_json = text;
  return info;
}

std::string class_for(const std::string& kind) {
  if (kind == kClassifier) return "LinearClassifier";
  if (kind == kDepth) return "DepthHead";
  if (kind == kSegmentation) return "SegmentationHead";
  return "";
}

at::Tensor attribute(const torch::jit::Module& m, const char* name, const std::string& path) {
  if (!m.hasattr(name)) bad_head(path, fmt::format("the module has no '{}' tensor", name));
  const auto value = m.attr(name);
  if (!value.isTensor()) bad_head(path, fmt::format("'{}' is not a tensor", name));
  return value.toTensor().to(at::kFloat).contiguous();
}

detail::HeadData read_head(const std::string& path, const char* kind) {
  check_file(path);
  torch::jit::ExtraFilesMap extra{{kHeadFile, ""}, {kBackboneFile, ""}};
  torch::jit::Module module;
  if (const std::string problem = detail::pickle_problem(path); !problem.empty()) {
    bad_head(path, problem);
  }
  try {
    // Without the debug pickles (source ranges for error messages): in a damaged file they make
    // TorchScript's ErrorReport::what(), which is noexcept, throw and so terminate the process
    // (found by fuzz_head). Errors still quote the scripted code itself.
    module = torch::jit::load(path, c10::Device(c10::DeviceType::CPU), extra,
                              /*load_debug_files=*/false);
  } catch (const c10::Error& e) {
    // torch.save writes zip files too: an official .pth head lands here.
    throw ModelFileError(
        fmt::format("dinov2: '{}' is not a TorchScript archive ({}); an official .pth head must "
                    "first be converted with dinov2-export-head",
                    path, torch_message(e)));
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    // TorchScript's compiler on damaged code (ErrorReport, JITException, std::runtime_error).
    bad_head(path, fmt::format("its TorchScript code does not compile: {}",
                               detail::first_line(e.what())));
  }
  if (extra[kHeadFile].empty()) {
    if (!extra[kBackboneFile].empty()) {
      throw ModelFileError(fmt::format(
          "dinov2: '{}' is a dinov2 backbone file, not a head; load it with Model::load", path));
    }
    throw ModelFileError(
        fmt::format("dinov2: '{}' is a TorchScript file but not a dinov2 head (no {} inside); "
                    "export the head with dinov2-export-head",
                    path, kHeadFile));
  }
  detail::HeadData d;
  d.info = parse_info(extra[kHeadFile], path);
  if (d.info.kind != kind) {
    const std::string other = class_for(d.info.kind);
    throw ModelFileError(
        fmt::format("dinov2: '{}' holds a {} head ('{}'), but {}::load needs a {} head{}", path,
                    d.info.kind, d.info.head, class_for(kind), kind,
                    other.empty() ? std::string() : fmt::format("; load it with {}::load", other)));
  }

  const HeadInfo& info = d.info;
  const auto layers = static_cast<int64_t>(info.blocks.size());
  int64_t out = 0;
  int64_t in = 0;
  if (info.kind == kClassifier) {
    out = info.num_classes;
    in = (1 + layers) * info.embed_dim;
  } else if (info.kind == kDepth) {
    out = info.bins;
    in = 2 * layers * info.embed_dim;
  } else {
    out = info.num_classes;
    in = info.embed_dim;
  }
  try {
    d.weight = attribute(module, "weight", path);
    d.bias = attribute(module, "bias", path);
    if (info.kind == kDepth) d.bins = attribute(module, "bins", path);
  } catch (const c10::Error& e) {
    bad_head(path, torch_message(e));
  }
  if (d.weight.sizes() != at::IntArrayRef({out, in})) {
    bad_head(path, fmt::format("'weight' has shape {}, expected [{}, {}]",
                               detail::shape_of(d.weight), out, in));
  }
  if (d.bias.sizes() != at::IntArrayRef({out})) {
    bad_head(path,
             fmt::format("'bias' has shape {}, expected [{}]", detail::shape_of(d.bias), out));
  }
  if (d.bins.defined() && d.bins.sizes() != at::IntArrayRef({out})) {
    bad_head(path,
             fmt::format("'bins' has shape {}, expected [{}]", detail::shape_of(d.bins), out));
  }
  return d;
}

/// read_head behind the boundary: whatever else the file makes LibTorch or the standard library
/// throw leaves as ModelFileError (or Error when memory runs out).
detail::HeadData load_head(const std::string& path, const char* kind) {
  return detail::reading_file(path, [&] { return read_head(path, kind); });
}

detail::HeadData load_for(const std::string& path, const char* kind, const Model& model) {
  detail::HeadData d = load_head(path, kind);
  const c10::Device device = detail::torch_device(model.options());
  compute("moving the head to the model's device", [&] {
    d.weight = d.weight.to(device);
    d.bias = d.bias.to(device);
    if (d.bins.defined()) d.bins = d.bins.to(device);
    return 0;
  });
  return d;
}

// -- checks -------------------------------------------------------------------------------------

void check_model(const HeadInfo& head, const ModelInfo& model) {
  if (head.embed_dim != model.embed_dim) {
    throw ModelFileError(
        fmt::format("dinov2: head expects width {} ({}), model has {} ({}); use the head exported "
                    "for {} or the backbone the head was trained on",
                    head.embed_dim, head.variant, model.embed_dim, model.variant, model.variant));
  }
  if (head.variant != model.variant) {
    throw ModelFileError(
        fmt::format("dinov2: head was trained on {}, but the model is {}; the features differ, so "
                    "use the head exported for {}",
                    head.variant, model.variant, model.variant));
  }
  for (int64_t b : head.blocks) {
    if (b >= model.depth || b < -model.depth) {
      throw ModelFileError(
          fmt::format("dinov2: the {} head reads block {}, but the model has {} blocks (a reduced "
                      "export?); use a full-depth backbone",
                      head.head, b, model.depth));
    }
  }
}

/// Checks a [B, h, w, D] patch map and returns it.
const at::Tensor& check_patches(const at::Tensor& t, int64_t dim, const char* what) {
  if (!t.defined() || t.dim() != 4 || t.size(3) != dim) {
    throw InputError(
        fmt::format("dinov2: {} must be [B, h, w, {}], got {}", what, dim, detail::shape_of(t)));
  }
  return t;
}

/// Checks a [B, D] token and returns it.
const at::Tensor& check_token(const at::Tensor& t, int64_t batch, int64_t dim, const char* what) {
  if (!t.defined() || t.dim() != 2 || t.size(0) != batch || t.size(1) != dim) {
    throw InputError(
        fmt::format("dinov2: {} must be [{}, {}], got {}", what, batch, dim, detail::shape_of(t)));
  }
  return t;
}

/// Checks that `lf` holds the blocks the head reads (where the head names them absolutely).
void check_layers(const HeadInfo& head, const LayerFeatures& lf) {
  const size_t n = head.blocks.size();
  if (lf.size() != n || lf.patches.size() != n || lf.cls.size() != n) {
    throw InputError(
        fmt::format("dinov2: the {} head reads {} block(s) {}, but the features hold {}; use "
                    "Model::intermediate_layers(pixels, head.layers())",
                    head.head, n, fmt::join(head.blocks, ","), lf.size()));
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t want = head.blocks[i];
    const bool relative_ok = want < 0 && (i == 0 || lf.indices[i] == lf.indices[i - 1] + 1);
    if (want >= 0 ? lf.indices[i] != want : !relative_ok) {
      throw InputError(
          fmt::format("dinov2: the {} head reads blocks {}, but the features come from blocks {}; "
                      "use Model::intermediate_layers(pixels, head.layers())",
                      head.head, fmt::join(head.blocks, ","), fmt::join(lf.indices, ",")));
    }
    check_patches(lf.patches[i], head.embed_dim, "LayerFeatures::patches");
    check_token(lf.cls[i], lf.patches[i].size(0), head.embed_dim, "LayerFeatures::cls");
  }
}

std::pair<at::Tensor, at::Tensor> params_on(const detail::HeadData& d, const at::Device& device) {
  return {d.weight.to(device), d.bias.to(device)};
}

at::Tensor classifier_logits(const detail::HeadData& d, const std::vector<at::Tensor>& cls,
                             const at::Tensor& last_patches) {
  return compute("computing classifier logits", [&] {
    auto [w, b] = params_on(d, last_patches.device());
    std::vector<at::Tensor> parts;
    for (const auto& c : cls) parts.push_back(c.to(at::kFloat));
    parts.push_back(last_patches.to(at::kFloat).mean({1, 2}));
    return at::linear(at::cat(parts, 1), w, b);
  });
}

at::Tensor segmentation_logits(const detail::HeadData& d, const at::Tensor& patches) {
  check_patches(patches, d.info.embed_dim, "the patch tokens");
  return compute("computing segmentation logits", [&] {
    auto [w, b] = params_on(d, patches.device());
    // [B, h, w, D] x [C, D]^T -> [B, h, w, C] -> [B, C, h, w]
    return at::linear(patches.to(at::kFloat), w, b).permute({0, 3, 1, 2}).contiguous();
  });
}

}  // namespace

// -- LinearClassifier ---------------------------------------------------------------------------

LinearClassifier LinearClassifier::load(const std::string& path) {
  return LinearClassifier(load_head(path, kClassifier));
}

LinearClassifier LinearClassifier::load(const std::string& path, const Model& model) {
  LinearClassifier head(load_for(path, kClassifier, model));
  head.check_compatible(model.info());
  return head;
}

void LinearClassifier::check_compatible(const ModelInfo& model) const {
  check_model(d_.info, model);
}

at::Tensor LinearClassifier::logits(const Features& features) const {
  if (n_last_blocks() != 1) {
    throw InputError(
        fmt::format("dinov2: this {} head needs the CLS tokens of the last {} blocks, which "
                    "Features do not hold; pass Model::intermediate_layers(pixels, head.layers())",
                    d_.info.head, n_last_blocks()));
  }
  const at::Tensor& p = check_patches(features.patches, d_.info.embed_dim, "Features::patches");
  check_token(features.cls, p.size(0), d_.info.embed_dim, "Features::cls");
  return classifier_logits(d_, {features.cls}, p);
}

at::Tensor LinearClassifier::logits(const LayerFeatures& features) const {
  check_layers(d_.info, features);
  return classifier_logits(d_, features.cls, features.patches.back());
}

at::Tensor LinearClassifier::predict(const Features& features) const {
  return logits(features).argmax(1);
}

at::Tensor LinearClassifier::predict(const LayerFeatures& features) const {
  return logits(features).argmax(1);
}

std::vector<std::vector<ClassScore>> LinearClassifier::top_k(const at::Tensor& logits,
                                                             int64_t k) const {
  const int64_t c = d_.info.num_classes;
  if (!logits.defined() || logits.dim() != 2 || logits.size(1) != c) {
    throw InputError(
        fmt::format("dinov2: top_k expects logits [B, {}], got {}", c, detail::shape_of(logits)));
  }
  return dinov2::top_k(logits, k, d_.info.class_names);
}

std::vector<std::vector<ClassScore>> top_k(const at::Tensor& logits, int64_t k,
                                           const std::vector<std::string>& class_names) {
  if (!logits.defined() || logits.dim() != 2 || logits.size(1) < 1) {
    throw InputError(
        fmt::format("dinov2: top_k expects logits [B, C], got {}", detail::shape_of(logits)));
  }
  const int64_t c = logits.size(1);
  if (!class_names.empty() && static_cast<int64_t>(class_names.size()) != c) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: top_k got {} class names for {} classes", class_names.size(), c));
  }
  if (k < 1 || k > c) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: top_k k is {}; it must be in 1..{}", k, c));
  }
  auto [values, indices] = compute("ranking classes", [&] {
    auto probs = at::softmax(logits.to(at::kFloat), 1);
    auto top = at::topk(probs, k, 1, /*largest=*/true, /*sorted=*/true);
    return std::make_pair(std::get<0>(top).cpu().contiguous(), std::get<1>(top).cpu().contiguous());
  });
  std::vector<std::vector<ClassScore>> out(static_cast<size_t>(logits.size(0)));
  const float* pv = values.data_ptr<float>();
  const int64_t* pi = indices.data_ptr<int64_t>();
  for (size_t b = 0; b < out.size(); ++b) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t idx = pi[static_cast<int64_t>(b) * k + j];
      out[b].push_back(
          {idx, pv[static_cast<int64_t>(b) * k + j],
           class_names.empty() ? std::to_string(idx) : class_names[static_cast<size_t>(idx)]});
    }
  }
  return out;
}

// -- DepthHead ----------------------------------------------------------------------------------

DepthHead DepthHead::load(const std::string& path) { return DepthHead(load_head(path, kDepth)); }

DepthHead DepthHead::load(const std::string& path, const Model& model) {
  DepthHead head(load_for(path, kDepth, model));
  head.check_compatible(model.info());
  return head;
}

void DepthHead::check_compatible(const ModelInfo& model) const { check_model(d_.info, model); }

at::Tensor DepthHead::predict(const LayerFeatures& features, int64_t height, int64_t width) const {
  const HeadInfo& info = d_.info;
  check_layers(info, features);
  const at::Tensor& first = features.patches.front();
  const int64_t b = first.size(0);
  const int64_t h = first.size(1);
  const int64_t w = first.size(2);
  for (const auto& p : features.patches) {
    if (p.size(0) != b || p.size(1) != h || p.size(2) != w) {
      throw InputError(fmt::format("dinov2: the block outputs have different shapes ({} and {})",
                                   detail::shape_of(first), detail::shape_of(p)));
    }
  }
  if (height < 0 || width < 0) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: depth output size {}x{} is negative", height, width));
  }
  if (height == 0) height = h * info.patch_size;
  if (width == 0) width = w * info.patch_size;
  return compute("predicting depth", [&] {
    auto [weight, bias] = params_on(d_, first.device());
    const at::Tensor bins = d_.bins.to(first.device());
    const int64_t dim = info.embed_dim;
    // The 1x1 convolution runs on the patch grid, before the upsampling: both are linear and
    // the bilinear weights sum to one, so this equals the official order (upsample, then conv)
    // with far less work; the CLS half of each block's input is one vector per image.
    at::Tensor logit = bias.view({1, 1, 1, -1});
    for (size_t i = 0; i < features.size(); ++i) {
      const auto off = static_cast<int64_t>(2 * i) * dim;
      const at::Tensor wp = weight.narrow(1, off, dim);
      const at::Tensor wc = weight.narrow(1, off + dim, dim);
      logit = logit + at::matmul(features.patches[i].to(at::kFloat), wp.t());
      logit = logit + at::matmul(features.cls[i].to(at::kFloat), wc.t()).view({b, 1, 1, -1});
    }
    logit = logit.permute({0, 3, 1, 2}).contiguous();  // [B, bins, h, w]
    logit = at::upsample_bilinear2d(logit, {h * info.upsample, w * info.upsample}, false);
    at::Tensor p = at::relu(logit) + info.score_offset;
    p = p / p.sum(1, /*keepdim=*/true);
    at::Tensor depth = (p * bins.view({1, -1, 1, 1})).sum(1, /*keepdim=*/true);
    depth = depth.clamp(info.min_depth, info.max_depth);
    depth = at::upsample_bilinear2d(depth, {height, width}, false);
    return depth.squeeze(1).contiguous();
  });
}

// -- SegmentationHead ---------------------------------------------------------------------------

SegmentationHead SegmentationHead::load(const std::string& path) {
  return SegmentationHead(load_head(path, kSegmentation));
}

SegmentationHead SegmentationHead::load(const std::string& path, const Model& model) {
  SegmentationHead head(load_for(path, kSegmentation, model));
  head.check_compatible(model.info());
  return head;
}

void SegmentationHead::check_compatible(const ModelInfo& model) const {
  check_model(d_.info, model);
}

at::Tensor SegmentationHead::logits(const Features& features) const {
  return segmentation_logits(d_, features.patches);
}

at::Tensor SegmentationHead::logits(const LayerFeatures& features) const {
  check_layers(d_.info, features);
  return segmentation_logits(d_, features.patches.front());
}

at::Tensor SegmentationHead::labels(const at::Tensor& logits, int64_t height, int64_t width) const {
  const int64_t c = d_.info.num_classes;
  if (!logits.defined() || logits.dim() != 4 || logits.size(1) != c) {
    throw InputError(fmt::format("dinov2: labels expects logits [B, {}, h, w], got {}", c,
                                 detail::shape_of(logits)));
  }
  if (height < 1 || width < 1) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: label map size {}x{} must be positive", height, width));
  }
  return compute("computing labels", [&] {
    // As the official evaluation: resize the logits, then take the arg-max per pixel.
    return at::upsample_bilinear2d(logits.to(at::kFloat), {height, width}, false).argmax(1);
  });
}

at::Tensor SegmentationHead::predict(const Features& features) const {
  const at::Tensor l = logits(features);
  return labels(l, l.size(2) * d_.info.patch_size, l.size(3) * d_.info.patch_size);
}

at::Tensor SegmentationHead::predict(const LayerFeatures& features) const {
  const at::Tensor l = logits(features);
  return labels(l, l.size(2) * d_.info.patch_size, l.size(3) * d_.info.patch_size);
}

at::Tensor SegmentationHead::colorize(const at::Tensor& labels) const {
  const auto c = static_cast<int64_t>(d_.info.palette.size());
  if (!labels.defined() || labels.dim() != 3 || at::isFloatingType(labels.scalar_type())) {
    throw InputError(fmt::format("dinov2: colorize expects integer labels [B, H, W], got {}",
                                 detail::shape_of(labels)));
  }
  return compute("colouring labels", [&] {
    at::Tensor flat = labels.to(at::kCPU, at::kLong).reshape({-1});
    if (flat.numel() > 0) {
      const int64_t lo = flat.min().item<int64_t>();
      const int64_t hi = flat.max().item<int64_t>();
      if (lo < 0 || hi >= c) {
        throw InputError(
            fmt::format("dinov2: colorize got label {} outside 0..{}", lo < 0 ? lo : hi, c - 1));
      }
    }
    at::Tensor palette = at::empty({c, 3}, at::kByte);
    auto* p = palette.data_ptr<uint8_t>();
    for (int64_t i = 0; i < c; ++i) {
      for (int64_t k = 0; k < 3; ++k) p[i * 3 + k] = d_.info.palette[i][k];
    }
    return palette.index_select(0, flat).view({labels.size(0), labels.size(1), labels.size(2), 3});
  });
}

}  // namespace dinov2
