// SPDX-License-Identifier: Apache-2.0
// Reading and checking a backbone file's metadata (detail/model_file.hpp).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "detail/json_fields.hpp"
#include "detail/model_file.hpp"
#include "dinov2/error.hpp"
#include "dinov2/version.hpp"

namespace dinov2::detail {

using nlohmann::json;

// metadata ---------------------------------------------------------------------------------

[[noreturn]] void bad_metadata(const std::string& path, const std::string& problem) {
  throw ModelFileError(
      fmt::format("dinov2: '{}' has invalid metadata ({}): {}; re-export it with dinov2-export",
                  path, kMetadataFile, problem));
}

template <class T>
T required(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) bad_metadata(path, fmt::format("the field '{}' is missing", key));
  try {
    return detail::exact_get<T>(j.at(key));
  } catch (const std::exception&) {
    bad_metadata(path, fmt::format("the field '{}' has the wrong type or is out of range ({})", key,
                                   j.at(key).dump()));
  }
}

template <class T>
T optional(const json& j, const char* key, T fallback, const std::string& path) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return required<T>(j, key, path);
}

ModelInfo parse_metadata(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    bad_metadata(path, fmt::format("not valid JSON ({})", e.what()));
  }
  if (!j.is_object()) bad_metadata(path, "not a JSON object");

  const auto format = required<std::string>(j, "format", path);
  if (format != "dinov2-backbone") {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' holds a '{}' file, not a 'dinov2-backbone'; Model::load needs a backbone "
        "exported with dinov2-export",
        path, format));
  }
  ModelInfo info;
  info.format_version = required<int>(j, "format_version", path);
  info.exporter_version = optional<std::string>(j, "exporter_version", "unknown", path);
  if (info.format_version > kFormatVersion) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' uses file format version {} (written by dinov2-export {}), but this dinov2 "
        "library ({}) reads format versions up to {}; upgrade the dinov2 library, or re-export "
        "the model with dinov2-export {}",
        path, info.format_version, info.exporter_version, kVersion, kFormatVersion, kVersion));
  }
  if (info.format_version < 1) {
    bad_metadata(path,
                 fmt::format("format_version {} is not a valid version", info.format_version));
  }
  info.variant = required<std::string>(j, "variant", path);
  info.embed_dim = required<int64_t>(j, "embed_dim", path);
  info.depth = required<int64_t>(j, "depth", path);
  info.num_heads = required<int64_t>(j, "num_heads", path);
  info.patch_size = required<int64_t>(j, "patch_size", path);
  info.num_register_tokens = required<int64_t>(j, "num_register_tokens", path);
  info.ffn = optional<std::string>(j, "ffn", "mlp", path);
  const auto grid = optional<std::vector<int64_t>>(j, "pos_grid", {37, 37}, path);
  if (grid.size() != 2) bad_metadata(path, "pos_grid must hold two numbers");
  info.pos_grid_h = grid[0];
  info.pos_grid_w = grid[1];
  const auto mean = required<std::vector<float>>(j, "mean", path);
  const auto stdev = required<std::vector<float>>(j, "std", path);
  if (mean.size() != 3 || stdev.size() != 3) bad_metadata(path, "mean and std must hold 3 numbers");
  std::copy(mean.begin(), mean.end(), info.mean.begin());
  std::copy(stdev.begin(), stdev.end(), info.std.begin());
  info.default_resolution = optional<int64_t>(j, "default_resolution", 518, path);
  info.dtype = required<std::string>(j, "dtype", path);
  info.torch_version = optional<std::string>(j, "torch_version", "unknown", path);
  if (j.contains("weights") && j["weights"].is_object()) {
    info.weights_source = optional<std::string>(j["weights"], "source", "", path);
    info.weights_sha256 = optional<std::string>(j["weights"], "sha256", "", path);
  }
  info.metadata_json = text;
  if (j.contains("backend") && j["backend"].is_object()) {
    const json& b = j["backend"];
    const auto kind = required<std::string>(b, "kind", path);
    if (kind != "torchscript" && kind != "aotinductor" && kind != "openvino") {
      bad_metadata(path,
                   "backend.kind '" + kind + "' is not 'torchscript', 'aotinductor' or 'openvino'");
    }
    info.backend = kind == "aotinductor" ? Backend::kAOTInductor
                   : kind == "openvino"  ? Backend::kOpenVINO
                                         : Backend::kTorchScript;
  }
  if (info.backend == Backend::kAOTInductor) {
    const json& b = j["backend"];
    const auto size = required<std::vector<int64_t>>(b, "resolution", path);
    if (size.size() != 2 || size[0] <= 0 || size[1] <= 0) {
      bad_metadata(path, "backend.resolution must hold two positive numbers");
    }
    info.compiled_size = {size[0], size[1]};
    info.max_batch = required<int64_t>(b, "max_batch", path);
    if (info.max_batch < 1) bad_metadata(path, "backend.max_batch must be at least 1");
  }

  // Beyond these no DINOv2 model goes (g/14: D 1536, 40 blocks, 24 heads); a larger value is a
  // damaged or hostile file, refused before it sizes any allocation.
  if (info.embed_dim <= 0 || info.depth <= 0 || info.num_heads <= 0 || info.patch_size <= 0 ||
      info.num_register_tokens < 0 || info.embed_dim > 65536 || info.depth > 1024 ||
      info.num_heads > 1024 || info.patch_size > 1024 || info.num_register_tokens > 1024 ||
      info.pos_grid_h <= 0 || info.pos_grid_w <= 0 || info.pos_grid_h > 4096 ||
      info.pos_grid_w > 4096 || info.embed_dim % info.num_heads != 0) {
    bad_metadata(path, fmt::format("embed_dim {}, depth {}, num_heads {}, patch_size {}, "
                                   "num_register_tokens {} and pos_grid {}x{} are not a valid "
                                   "architecture",
                                   info.embed_dim, info.depth, info.num_heads, info.patch_size,
                                   info.num_register_tokens, info.pos_grid_h, info.pos_grid_w));
  }
  if (info.dtype != "float32" && info.dtype != "bfloat16" && info.dtype != "float16") {
    bad_metadata(path, fmt::format("dtype '{}' is not float32, bfloat16 or float16", info.dtype));
  }
  return info;
}

void check_file(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) throw ModelFileError("dinov2: no model path given");
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    throw ModelFileError(
        fmt::format("dinov2: model file '{}' does not exist; export one with dinov2-export (see "
                    "weights/README.md)",
                    path));
  }
  if (fs::is_directory(path, ec)) {
    throw ModelFileError(fmt::format(
        "dinov2: '{}' is a directory; give the .pt file written by dinov2-export", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ModelFileError(fmt::format("dinov2: cannot open model file '{}' for reading", path));
  }
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  // TorchScript archives are zip files.
  if (in.gcount() < 4 || magic[0] != 'P' || magic[1] != 'K' || magic[2] != 3 || magic[3] != 4) {
    throw ModelFileError(
        fmt::format("dinov2: '{}' is not a TorchScript archive or AOTInductor package (no zip "
                    "header); give a file written by dinov2-export",
                    path));
  }
}

bool is_package_path(const std::string& path) {
  return std::filesystem::path(path).extension() == ".pt2";
}

}  // namespace dinov2::detail
