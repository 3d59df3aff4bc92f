// SPDX-License-Identifier: Apache-2.0
#include "feature_files.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "dinov2/error.hpp"
#include "dinov2/io.hpp"

namespace dinov2::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// Metadata keys whose safetensors value is JSON text (docs/CLI.md).
const std::set<std::string>& json_keys() {
  static const std::set<std::string> kKeys = {
      "model", "cpu",           "inputs_total", "rows",        "grid",
      "paths", "input_indices", "image_sizes",  "grids",       "failed",
      "keys",  "side",          "run",          "merged_from", "fused_layers"};
  return kKeys;
}

}  // namespace

FeatureFile read_feature_file(const std::string& path) {
  FeatureFile f;
  f.path = path;
  const auto bad = [&](const std::string& why) -> InputError {
    return InputError(fmt::format("dinov2: {}: {}", path, why));
  };
  std::error_code ec;
  try {
    if (fs::is_directory(path, ec)) {
      f.npy = true;
      std::ifstream in(fs::path(path) / "metadata.json");
      if (!in) throw bad("a folder without metadata.json; not an output of dinov2 extract");
      f.meta = json::parse(in);
    } else {
      const SafetensorsReader reader(path);
      for (const auto& [key, value] : reader.metadata()) {
        f.meta[key] = json_keys().count(key) ? json::parse(value) : json(value);
      }
    }
    if (f.meta.value("format", "") != "dinov2-features") {
      throw bad("not an output of dinov2 extract (no \"format\": \"dinov2-features\" metadata)");
    }
    f.rows = f.meta.at("rows").get<int64_t>();
    f.paths = f.meta.at("paths").get<std::vector<std::string>>();
    f.keys = f.meta.contains("keys") ? f.meta.at("keys").get<std::vector<std::string>>() : f.paths;
    f.failed = f.meta.at("failed");
    if (static_cast<int64_t>(f.paths.size()) != f.rows ||
        static_cast<int64_t>(f.keys.size()) != f.rows || !f.failed.is_array()) {
      throw bad(fmt::format("the metadata is inconsistent: {} rows, {} paths, {} keys", f.rows,
                            f.paths.size(), f.keys.size()));
    }
  } catch (const json::exception& e) {
    throw bad(fmt::format("unreadable metadata ({})", e.what()));
  }
  return f;
}

std::vector<std::string> feature_file_paths(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const std::string& arg : args) {
    std::error_code ec;
    if (!fs::exists(arg, ec)) throw InputError(fmt::format("dinov2: {}: no such file", arg));
    if (!fs::is_directory(arg, ec) || fs::exists(fs::path(arg) / "metadata.json", ec)) {
      out.push_back(arg);
      continue;
    }
    std::vector<std::string> inside;
    for (const auto& entry : fs::directory_iterator(arg, ec)) {
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
        inside.push_back(entry.path().string());
      }
    }
    if (ec)
      throw InputError(fmt::format("dinov2: cannot read the folder {} ({})", arg, ec.message()));
    if (inside.empty()) {
      throw InputError(fmt::format("dinov2: the folder {} holds no .safetensors output", arg));
    }
    std::sort(inside.begin(), inside.end());
    out.insert(out.end(), inside.begin(), inside.end());
  }
  return out;
}

std::vector<std::string> unfinished_runs(const std::vector<std::string>& args) {
  std::set<std::string> folders, out;
  for (const std::string& arg : args) {
    std::error_code ec;
    if (fs::is_directory(arg, ec) && !fs::exists(fs::path(arg) / "metadata.json", ec)) {
      folders.insert(arg);
    } else {
      // The parts of this very output, if its run is going on or was killed.
      const std::string parts = arg + ".parts";
      if (fs::is_directory(parts, ec)) out.insert(parts);
    }
  }
  for (const std::string& folder : folders) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_directory() && name.size() > 6 &&
          name.compare(name.size() - 6, 6, ".parts") == 0) {
        out.insert(entry.path().string());
      }
    }
  }
  return {out.begin(), out.end()};
}

}  // namespace dinov2::cli
