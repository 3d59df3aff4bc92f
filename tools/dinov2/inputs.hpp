// SPDX-License-Identifier: Apache-2.0
// The inputs of `dinov2 extract` and `dinov2 verify`: files, folders, @lists and WebDataset tar
// shards, expanded into one ordered list of items, each with a stable key and a source to read.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "dinov2/pipeline.hpp"

namespace dinov2::cli {

/// @brief One input of a run, before --shard.
struct InputItem {
  /// @brief A file's path; `SHARD/MEMBER` for a tar member; the shard's path for a failure of
  /// the shard itself (unreadable, or damaged part way).
  std::string path;
  /// @brief The row id, stable across runs and machines: a file's path; for a tar member, the
  /// shard's file name and the WebDataset key (`00000.tar/000123`); a member's path for a
  /// listing problem; the shard's file name for the shard's own failure.
  std::string key;
  /// @brief The sample's side files (`{"json": TEXT, "txt": TEXT}`); null when there are none.
  nlohmann::json side;
  /// @brief How the Pipeline reads it. A failure known from the listing (a repeated member, a
  /// damaged archive) is a reader that throws the reason, so that it is reported and listed like
  /// any bad input.
  ImageSource source;
};

/// @brief collect_inputs (files, folders, @lists; sorted) with every tar shard among them
/// (is_tar_shard_name) replaced, at its place in the order, by its image members in archive
/// order, then one failed item per listing problem and one for damage after the last member.
/// A shard that cannot be opened at all becomes one failed item. Shards are listed with
/// input_limits(); a line on stderr names each damaged or unreadable shard.
std::vector<InputItem> expand_inputs(const std::vector<std::string>& args);

}  // namespace dinov2::cli
