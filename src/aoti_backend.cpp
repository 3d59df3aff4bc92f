// SPDX-License-Identifier: Apache-2.0
// The AOTInductor backend (detail/backend.hpp): loading a package (.pt2) compiled by
// dinov2-export --aot, and running its forward pass, the one method compiled into it.
#include <ATen/Parallel.h>
#include <ATen/ops/cat.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <utility>

#include "detail/backend.hpp"
#include "detail/boundary.hpp"
#include "detail/model_file.hpp"
#include "detail/runtime_setup.hpp"
#include "dinov2/error.hpp"

namespace dinov2::detail {

namespace {

class AotiBackend final : public ForwardOnlyBackend {
 public:
  /// Reads and checks the package; see load_aoti_package.
  AotiBackend(const std::string& path, const Options& options);

  /// The compiled size only, batches split to max_batch; always with prenorm.
  std::vector<at::Tensor> forward(const at::Tensor& pixels, bool /*with_prenorm*/) const override {
    const ModelInfo& info = setup_.info;
    const auto [ch, cw] = info.compiled_size;
    if (pixels.size(2) != ch || pixels.size(3) != cw) {
      throw InputError(fmt::format(
          "dinov2: this AOTInductor package was compiled for {}x{} (HxW) inputs, got {}x{}; "
          "resize to {}x{}, compile a package for this size, or use the TorchScript file",
          ch, cw, pixels.size(2), pixels.size(3), ch, cw));
    }
    c10::InferenceMode guard;
    const at::Tensor x = to_model(pixels).contiguous();
    std::vector<std::vector<at::Tensor>> parts;
    for (int64_t begin = 0; begin < x.size(0); begin += info.max_batch) {
      const int64_t end = std::min(x.size(0), begin + info.max_batch);
      parts.push_back(package_->run({x.slice(0, begin, end).contiguous()}));
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

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package_;
};

AotiBackend::AotiBackend(const std::string& path, const Options& options)
    : ForwardOnlyBackend("not compiled into AOTInductor packages") {
  ModelSetup& s = setup_;
  try {
    const auto meta =
        torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    const auto it = meta.find(kMetadataFile);
    if (it == meta.end() || it->second.empty()) {
      throw ModelFileError(
          fmt::format("dinov2: '{}' is an AOTInductor package but not a DINOv2 export (no {} in "
                      "its metadata); compile it with dinov2-export --aot",
                      path, kMetadataFile));
    }
    s.info = parse_metadata(it->second, path);
    const auto device = meta.find("AOTI_DEVICE_KEY");
    const std::string want = options.device == Device::kCUDA ? "cuda" : "cpu";
    if (device != meta.end() && device->second != want) {
      throw DeviceError(
          fmt::format("dinov2: '{}' was compiled for {}, but Options::device is {}; compile a "
                      "package for this device with dinov2-export --aot",
                      path, device->second, want));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is not a readable AOTInductor package ({}); compile one with dinov2-export "
        "--aot",
        path, e.what()));
  }
  if (s.info.backend != Backend::kAOTInductor) {
    bad_metadata(path, "a .pt2 package must describe an 'aotinductor' backend");
  }
  if (options.dtype == DType::kAuto) {
    s.compute_dtype = s.info.dtype == "bfloat16"  ? DType::kBFloat16
                      : s.info.dtype == "float16" ? DType::kFloat16
                                                  : DType::kFloat32;
    s.dtype_reason = fmt::format("auto: {}, the dtype the package was compiled for", s.info.dtype);
  } else if (to_string(options.dtype) != s.info.dtype) {
    throw DeviceError(fmt::format(
        "dinov2: '{}' was compiled for {}, but Options::dtype is {}; a package runs in the dtype "
        "it was compiled for (dinov2-export --aot --dtype)",
        path, s.info.dtype, to_string(options.dtype)));
  } else {
    s.compute_dtype = options.dtype;
    s.dtype_reason = fmt::format("{} (asked for)", to_string(options.dtype));
  }
  ensure_runtime_configured();
  if (options.threads > 0) at::set_num_threads(options.threads);  // deprecated, process-wide
  s.device = torch_device(options);
  s.dtype = scalar_type(s.compute_dtype);
  s.fusion_reason = "not applied: AOTInductor packages are compiled as they are";
  try {
    package_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, "model", /*run_single_threaded=*/false, /*num_runners=*/1,
        static_cast<c10::DeviceIndex>(options.device == Device::kCUDA ? options.device_index : -1));
  } catch (const std::exception& e) {
    throw ModelFileError(fmt::format(
        "dinov2: cannot load the AOTInductor package '{}' ({}); it must be compiled with the "
        "PyTorch version this library links",
        path, first_line(e.what())));
  }
}

}  // namespace

std::unique_ptr<ModelBackend> load_aoti_package(const std::string& path, const Options& options) {
  return std::make_unique<AotiBackend>(path, options);
}

}  // namespace dinov2::detail
