// SPDX-License-Identifier: Apache-2.0
// The OpenVINO backend (detail/backend.hpp): an ONNX graph written by dinov2-export (--output
// FILE.onnx), compiled once for any batch and size by OpenVINO's CPU plugin. The graph starts
// after the position-embedding interpolation, which ONNX cannot express for every variant: it is
// computed here with the LibTorch operators the TorchScript file runs, from the trained table the
// graph carries as its constant output `pos_embed_table` (docs/FORMAT.md).
#include <fmt/format.h>

#include "detail/backend.hpp"
#include "dinov2/error.hpp"

#if DINOV2_WITH_OPENVINO
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <openvino/core/version.hpp>
#include <openvino/frontend/manager.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/openvino.hpp>
#include <utility>

#include "detail/boundary.hpp"
#include "detail/model_file.hpp"
#include "detail/runtime_setup.hpp"

namespace dinov2::detail {

namespace {

constexpr const char* kMetadataKey = "dinov2";  // the ONNX metadata entry (metadata_props)
constexpr const char* kTableOutput = "pos_embed_table";
// Position embeddings kept for reuse, one per patch grid; beyond this the cache starts over.
constexpr size_t kMaxCachedGrids = 32;

std::string ov_message(const std::exception& e) { return first_line(e.what()); }

bool has_name(const ov::Output<ov::Node>& port, const std::string& name) {
  return port.get_names().count(name) > 0;
}

class OpenVinoBackend final : public ForwardOnlyBackend {
 public:
  OpenVinoBackend(const std::string& path, const Options& options);

  /// Always with prenorm (the graph computes it anyway).
  std::vector<at::Tensor> forward(const at::Tensor& pixels, bool /*with_prenorm*/) const override {
    c10::InferenceMode guard;
    const at::Tensor x = pixels.to(at::kFloat).contiguous();
    const ModelInfo& info = setup_.info;
    const int64_t b = x.size(0);
    const int64_t h0 = x.size(2) / info.patch_size;
    const int64_t w0 = x.size(3) / info.patch_size;
    const int64_t d = info.embed_dim;
    const int64_t r = info.num_register_tokens;
    const at::Tensor pos = position_embedding(h0, w0);
    // The outputs are written by OpenVINO straight into tensors the caller receives.
    std::vector<at::Tensor> out{at::empty({b, d}, at::kFloat), at::empty({b, r, d}, at::kFloat),
                                at::empty({b, h0 * w0, d}, at::kFloat),
                                at::empty({b, 1 + r + h0 * w0, d}, at::kFloat)};
    ov::InferRequest request = acquire();
    try {
      request.set_tensor(pixels_, wrap(x));
      request.set_tensor(pos_, wrap(pos));
      for (size_t i = 0; i < out.size(); ++i) {
        if (out[i].numel() > 0) request.set_tensor(outputs_[i], wrap(out[i]));  // R may be 0
      }
      request.infer();
    } catch (...) {
      release(std::move(request));
      throw;
    }
    release(std::move(request));
    return out;
  }

 private:
  /// `t` (contiguous float32 on the CPU) as an OpenVINO tensor over the same memory.
  static ov::Tensor wrap(const at::Tensor& t) {
    ov::Shape shape(t.sizes().begin(), t.sizes().end());
    return ov::Tensor(ov::element::f32, shape, t.data_ptr<float>());
  }

  /// The position embedding of an h0 x w0 patch grid, [1, 1 + h0*w0, D]: the operations of the
  /// exporter's DinoV2.interpolate_pos_encoding, so the same numbers as the TorchScript file.
  at::Tensor position_embedding(int64_t h0, int64_t w0) const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = pos_cache_.find({h0, w0});
      if (it != pos_cache_.end()) return it->second;
    }
    const ModelInfo& info = setup_.info;
    const int64_t gh = info.pos_grid_h;
    const int64_t gw = info.pos_grid_w;
    at::Tensor pos = table_;
    if (h0 != gh || w0 != gw) {
      const at::Tensor cls_pos = table_.slice(1, 0, 1);
      at::Tensor grid =
          table_.slice(1, 1).reshape({1, gh, gw, info.embed_dim}).permute({0, 3, 1, 2});
      if (offset_ > 0.0) {
        // The scale factor with its offset drives the sampling grid (docs/FORMAT.md).
        const std::vector<double> scale{(static_cast<double>(h0) + offset_) / gh,
                                        (static_cast<double>(w0) + offset_) / gw};
        const at::OptionalIntArrayRef no_size;
        const std::optional<c10::ArrayRef<double>> factors(scale);
        grid = antialias_ ? at::_upsample_bicubic2d_aa(grid, no_size, false, factors)
                          : at::upsample_bicubic2d(grid, no_size, false, factors);
      } else {
        const std::vector<int64_t> size{h0, w0};
        const at::OptionalIntArrayRef out_size(size);
        const std::optional<c10::ArrayRef<double>> no_factors;
        grid = antialias_ ? at::_upsample_bicubic2d_aa(grid, out_size, false, no_factors)
                          : at::upsample_bicubic2d(grid, out_size, false, no_factors);
      }
      grid = grid.permute({0, 2, 3, 1}).reshape({1, h0 * w0, info.embed_dim});
      pos = at::cat({cls_pos, grid}, 1).contiguous();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (pos_cache_.size() >= kMaxCachedGrids) pos_cache_.clear();
    pos_cache_.emplace(std::make_pair(h0, w0), pos);
    return pos;
  }

  /// An idle inference request, or a new one: a request runs one call at a time, a Model may be
  /// called from several threads at once.
  ov::InferRequest acquire() const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        ov::InferRequest request = std::move(idle_.back());
        idle_.pop_back();
        return request;
      }
    }
    return compiled_.create_infer_request();
  }

  void release(ov::InferRequest request) const {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(request));
  }

  at::Tensor table_;  // the trained position embedding, [1, 1 + gh*gw, D] float32
  double offset_ = 0.0;
  bool antialias_ = false;
  mutable ov::CompiledModel compiled_;  // create_infer_request is thread-safe, not const
  ov::Output<const ov::Node> pixels_;
  ov::Output<const ov::Node> pos_;
  std::vector<ov::Output<const ov::Node>> outputs_;  // cls, registers, patches, prenorm
  mutable std::mutex mutex_;
  mutable std::vector<ov::InferRequest> idle_;
  mutable std::map<std::pair<int64_t, int64_t>, at::Tensor> pos_cache_;
};

OpenVinoBackend::OpenVinoBackend(const std::string& path, const Options& options)
    : ForwardOnlyBackend("not in ONNX exports") {
  ModelSetup& s = setup_;
  if (options.device != Device::kCPU) {
    throw DeviceError(fmt::format(
        "dinov2: '{}' is an ONNX export, which the library runs on the CPU with OpenVINO; use "
        "Options::device kCPU, or the TorchScript (.pt) export for CUDA",
        path));
  }
  if (options.dtype != DType::kAuto && options.dtype != DType::kFloat32) {
    throw DeviceError(
        fmt::format("dinov2: '{}' is an ONNX export, which runs in float32; Options::dtype is {}; "
                    "use kFloat32 or kAuto, or the TorchScript (.pt) export for {}",
                    path, to_string(options.dtype), to_string(options.dtype)));
  }
  ov::Core core;
  std::shared_ptr<ov::Model> model;
  try {
    // The ONNX reader alone: ov::Core::read_model would offer the bytes to every frontend.
    ov::frontend::FrontEndManager frontends;
    const auto onnx = frontends.load_by_framework("onnx");
    model = onnx->convert(onnx->load(path));
  } catch (const std::exception& e) {
    throw ModelFileError(
        fmt::format("dinov2: '{}' is not a readable ONNX graph ({}); write one "
                    "with dinov2-export --output FILE.onnx",
                    path, ov_message(e)));
  }
  if (!model->has_rt_info("framework", kMetadataKey)) {
    throw ModelFileError(
        fmt::format("dinov2: '{}' is an ONNX graph but not a DINOv2 export (no '{}' metadata "
                    "entry); write one with dinov2-export --output FILE.onnx",
                    path, kMetadataKey));
  }
  const auto text = model->get_rt_info<std::string>("framework", kMetadataKey);
  s.info = parse_metadata(text, path);
  if (s.info.backend != Backend::kOpenVINO) {
    bad_metadata(path, "an .onnx export must describe an 'openvino' backend");
  }
  try {
    const auto j = nlohmann::json::parse(text);
    const auto& interp = j.at("interpolation");
    offset_ = interp.at("offset").get<double>();
    antialias_ = interp.at("antialias").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    bad_metadata(path, fmt::format("interpolation.offset and .antialias are required ({})",
                                   first_line(e.what())));
  }
  if (!(offset_ >= 0.0 && offset_ < 1.0)) {
    bad_metadata(path, fmt::format("interpolation.offset {} is outside [0, 1)", offset_));
  }

  // The trained table: read from its constant output, then dropped from what is compiled.
  const ModelInfo& info = s.info;
  std::shared_ptr<ov::op::v0::Result> table_result;
  for (const auto& result : model->get_results()) {
    if (has_name(result->output(0), kTableOutput) || has_name(result->input_value(0), kTableOutput))
      table_result = result;
  }
  const auto constant = table_result ? ov::as_type_ptr<ov::op::v0::Constant>(
                                           table_result->input_value(0).get_node_shared_ptr())
                                     : nullptr;
  const ov::Shape want{1, static_cast<size_t>(1 + info.pos_grid_h * info.pos_grid_w),
                       static_cast<size_t>(info.embed_dim)};
  if (!constant || constant->get_element_type() != ov::element::f32 ||
      constant->get_shape() != want) {
    bad_metadata(path, fmt::format("the graph needs a float32 constant output '{}' of shape {} "
                                   "(embed_dim {}, pos_grid {}x{})",
                                   kTableOutput, want.to_string(), info.embed_dim, info.pos_grid_h,
                                   info.pos_grid_w));
  }
  table_ = at::from_blob(const_cast<float*>(constant->get_data_ptr<float>()),
                         {1, 1 + info.pos_grid_h * info.pos_grid_w, info.embed_dim}, at::kFloat)
               .clone();
  model->remove_result(table_result);

  ensure_runtime_configured();
  s.device = c10::Device(c10::DeviceType::CPU);
  s.dtype = at::kFloat;
  s.compute_dtype = DType::kFloat32;
  s.dtype_reason = options.dtype == DType::kAuto ? "auto: float32, the only dtype of ONNX exports"
                                                 : "float32 (asked for)";
  if (options.threads > 0) at::set_num_threads(options.threads);  // deprecated, process-wide
  // One thread setting for the library: OpenVINO's pool is as wide as LibTorch's.
  const ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                          ov::hint::inference_precision(ov::element::f32),
                          ov::inference_num_threads(at::get_num_threads())};
  try {
    compiled_ = core.compile_model(model, "CPU", config);
    const auto find = [&](const std::vector<ov::Output<const ov::Node>>& ports,
                          const std::string& name, const char* kind) {
      for (const auto& p : ports) {
        if (p.get_names().count(name)) return p;
      }
      bad_metadata(path, fmt::format("the graph has no {} '{}'", kind, name));
    };
    pixels_ = find(compiled_.inputs(), "pixels", "input");
    pos_ = find(compiled_.inputs(), "pos_embed", "input");
    for (const char* name : {"cls", "registers", "patches", "prenorm"}) {
      outputs_.push_back(find(compiled_.outputs(), name, "output"));
    }
    if (compiled_.inputs().size() != 2 || compiled_.outputs().size() != 4) {
      bad_metadata(
          path, fmt::format("the graph has {} inputs and {} outputs besides '{}'; a "
                            "dinov2 export has 2 (pixels, pos_embed) and 4",
                            compiled_.inputs().size(), compiled_.outputs().size(), kTableOutput));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelFileError(
        fmt::format("dinov2: OpenVINO cannot compile '{}' ({})", path, ov_message(e)));
  }
  const auto threads = compiled_.get_property(ov::inference_num_threads);
  s.fusion_reason = fmt::format(
      "not applied: OpenVINO {} compiles the graph itself (CPU plugin, float32, latency hint, "
      "{} threads)",
      ov::get_openvino_version().buildNumber, threads);
}

}  // namespace

std::unique_ptr<ModelBackend> load_openvino(const std::string& path, const Options& options) {
  return std::make_unique<OpenVinoBackend>(path, options);
}

}  // namespace dinov2::detail

#else  // DINOV2_WITH_OPENVINO

namespace dinov2::detail {

std::unique_ptr<ModelBackend> load_openvino(const std::string& path, const Options& /*options*/) {
  throw ModelFileError(
      fmt::format("dinov2: '{}' is an ONNX export, and this build of the library has no OpenVINO "
                  "backend; rebuild it with -DDINOV2_WITH_OPENVINO=ON (docs/FORMAT.md), or load "
                  "the TorchScript (.pt) export",
                  path));
}

}  // namespace dinov2::detail

#endif  // DINOV2_WITH_OPENVINO
