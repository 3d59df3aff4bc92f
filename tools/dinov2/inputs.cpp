// SPDX-License-Identifier: Apache-2.0
#include "inputs.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <optional>
#include <utility>

#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/webdataset.hpp"

namespace dinov2::cli {

namespace {

namespace fs = std::filesystem;

/// An item that fails with `reason` when the Pipeline reads it.
InputItem failed_item(std::string path, std::string key, const std::string& reason) {
  InputItem item;
  item.path = std::move(path);
  item.key = std::move(key);
  item.source =
      ImageSource::reader([reason]() -> std::string { throw InputError(reason); }, item.path);
  return item;
}

void expand_shard(const std::string& path, std::vector<InputItem>& out) {
  const std::string name = fs::path(path).filename().string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {  // missing, a folder, a device: fails like a bad file
    out.push_back(
        failed_item(path, name, fs::exists(path, ec) ? "not a regular file" : "no such file"));
    return;
  }
  std::optional<TarShard> opened;
  try {
    opened = TarShard::open(path, input_limits());
  } catch (const InputError& e) {
    std::cerr << "dinov2: skipped the shard " << path << ": " << e.message() << "\n";
    out.push_back(failed_item(path, name, e.message()));
    return;
  }
  const TarShard& shard = *opened;
  for (std::size_t i = 0; i < shard.samples().size(); ++i) {
    const ShardSample& s = shard.samples()[i];
    InputItem item;
    item.path = path + "/" + s.member;
    item.key = name + "/" + s.key;
    if (!s.side.empty()) item.side = s.side;
    item.source = shard.source(i);
    out.push_back(std::move(item));
  }
  for (const ShardProblem& p : shard.problems()) {
    out.push_back(failed_item(path + "/" + p.member, name + "/" + p.member, p.reason));
  }
  if (!shard.damage().empty()) {
    std::cerr << "dinov2: the shard " << path << ": " << shard.damage() << "\n";
    out.push_back(failed_item(path, name, shard.damage()));
  }
}

}  // namespace

std::vector<InputItem> expand_inputs(const std::vector<std::string>& args) {
  std::vector<InputItem> out;
  for (const std::string& path : collect_inputs(args)) {
    if (is_tar_shard_name(path)) {
      expand_shard(path, out);
      continue;
    }
    InputItem item;
    item.path = path;
    item.key = path;
    item.source = ImageSource::file(path);
    out.push_back(std::move(item));
  }
  return out;
}

}  // namespace dinov2::cli
