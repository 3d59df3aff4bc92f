// SPDX-License-Identifier: Apache-2.0
// The JSON file `dinov2 index build` writes beside an index (INDEX.json): which extract outputs
// its rows come from, for `dinov2 search --index` and `dinov2 dedup --index`.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dinov2::cli {

/// @brief INDEX.json for the index file INDEX.
std::string index_sidecar(const std::string& index);

/// @brief What INDEX.json records.
struct IndexFiles {
  std::vector<std::string> files;  ///< the extract outputs, as paths usable from here
  int64_t rows = 0;
  std::string search;    ///< IndexSpec::to_string() at build time
  nlohmann::json model;  ///< the model metadata of the first file
};

/// @brief Reads INDEX.json; throws InputError when it is missing or unreadable.
IndexFiles read_index_files(const std::string& index);

}  // namespace dinov2::cli
