// SPDX-License-Identifier: Apache-2.0
// Reading the outputs of `dinov2 extract` back: their metadata with JSON values parsed, for
// `dinov2 merge` and `dinov2 verify`.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dinov2::cli {

/// @brief The metadata of one features output (safetensors file, or npy folder).
struct FeatureFile {
  std::string path;
  bool npy = false;     ///< a --format npy folder
  nlohmann::json meta;  ///< every metadata key; the JSON-valued ones parsed
  int64_t rows = 0;
  std::vector<std::string> paths;  ///< per row
  std::vector<std::string> keys;   ///< per row (the paths, for files written before keys)
  nlohmann::json failed;           ///< [{"path", "key", "reason", "input_index"}, ...]
};

/// @brief Reads the metadata of the output at `path`. Throws InputError naming the file when it
/// is not a readable output of `dinov2 extract`.
FeatureFile read_feature_file(const std::string& path);

/// @brief The outputs named by `args`: a file as it is; a folder holding `metadata.json` as an
/// npy output; any other folder as the `*.safetensors` files directly inside it, sorted. Throws
/// InputError when an argument does not exist or a folder holds no output.
std::vector<std::string> feature_file_paths(const std::vector<std::string>& args);

/// @brief The extract run folders (`NAME.parts/`) left in the folders of `files` and in the
/// folder arguments: the sign of a run that did not finish.
std::vector<std::string> unfinished_runs(const std::vector<std::string>& args);

}  // namespace dinov2::cli
