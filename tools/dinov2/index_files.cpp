// SPDX-License-Identifier: Apache-2.0
#include "index_files.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "dinov2/error.hpp"

namespace dinov2::cli {

std::string index_sidecar(const std::string& index) { return index + ".json"; }

IndexFiles read_index_files(const std::string& index) {
  namespace fs = std::filesystem;
  const std::string path = index_sidecar(index);
  std::ifstream in(path);
  if (!in) {
    throw InputError(fmt::format(
        "dinov2: {} is missing: an index from `dinov2 index build` comes with it (it names the "
        "files the rows come from)",
        path));
  }
  IndexFiles out;
  try {
    const nlohmann::json doc = nlohmann::json::parse(in);
    if (doc.value("format", "") != "dinov2-index") {
      throw InputError(fmt::format("dinov2: {} is not written by dinov2 index build", path));
    }
    const fs::path base = fs::path(index).parent_path();
    for (const auto& f : doc.at("files")) {
      out.files.push_back((base / f.at("path").get<std::string>()).lexically_normal().string());
    }
    out.rows = doc.at("rows").get<int64_t>();
    out.search = doc.value("search", "");
    out.model = doc.value("model", nlohmann::json());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("dinov2: {}: unreadable ({})", path, e.what()));
  }
  return out;
}

}  // namespace dinov2::cli
