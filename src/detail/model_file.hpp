// SPDX-License-Identifier: Apache-2.0
// Private to src/: reading and checking what a backbone file says about itself (its embedded
// metadata, docs/FORMAT.md) before LibTorch runs it.
#pragma once

#include <string>

#include "dinov2/model.hpp"

namespace dinov2::detail {

/// Where an export keeps its metadata inside the archive.
inline constexpr const char* kMetadataFile = "dinov2/metadata.json";
/// The same for a head file; a backbone file must not have one.
inline constexpr const char* kHeadMetadataFile = "dinov2/head.json";

/// Throws ModelFileError: `path` has invalid metadata, with `problem`.
[[noreturn]] void bad_metadata(const std::string& path, const std::string& problem);
/// Parses and range-checks the metadata JSON `text` of `path`.
ModelInfo parse_metadata(const std::string& text, const std::string& path);
/// Throws ModelFileError unless `path` is an existing, readable zip file.
void check_file(const std::string& path);
/// Whether `path` names an AOTInductor package (.pt2).
bool is_package_path(const std::string& path);

}  // namespace dinov2::detail
