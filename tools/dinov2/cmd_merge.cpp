// SPDX-License-Identifier: Apache-2.0
// `dinov2 merge`: outputs of `dinov2 extract` (one per shard, or the --shard I/N parts of one
// list) combined into one safetensors file, streaming: tensors are copied in blocks of rows, so
// memory holds one block per input file and the metadata, whatever the number of rows. Or, with
// --index, a JSON index of the files (no data copied).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "feature_files.hpp"

namespace dinov2::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Grid = std::pair<int64_t, int64_t>;

struct MergeArgs {
  std::string output;
  std::vector<std::string> inputs;
  bool index = false;
  bool overwrite = false;
};

/// Metadata that must be equal in every file merged: the features would not be comparable
/// otherwise.
constexpr const char* kMustAgree[] = {"model", "recipe", "patch_dtype", "format_version"};

std::string grid_key(const Grid& g) { return fmt::format("{}x{}", g.first, g.second); }

/// One input file: its reader, metadata, and where each of its rows sits in its patch tensors.
struct Source {
  FeatureFile file;
  std::unique_ptr<SafetensorsReader> reader;
  std::vector<Grid> grids;         // per row
  std::vector<int64_t> patch_pos;  // per row: its row in "patch" or "patch/<grid>"
  std::string layout;              // single, by_grid, none
};

/// Reads rows of one tensor of one file in ascending order, a block at a time.
class RowCache {
 public:
  RowCache(const SafetensorsReader& reader, std::string name)
      : reader_(reader), name_(std::move(name)) {
    const TensorEntry& e = reader_.entry(name_);
    n_ = e.shape.empty() ? 0 : e.shape[0];
    int64_t row_bytes = c10::elementSize(e.dtype);
    for (size_t k = 1; k < e.shape.size(); ++k) row_bytes *= e.shape[k];
    block_ = std::max<int64_t>(1, (int64_t{32} << 20) / std::max<int64_t>(row_bytes, 1));
  }
  at::Tensor row(int64_t r) {
    if (!data_.defined() || r < begin_ || r >= begin_ + data_.size(0)) {
      begin_ = r;
      data_ = reader_.read_rows(name_, r, std::min(n_, r + block_));
    }
    return data_[r - begin_];
  }

 private:
  const SafetensorsReader& reader_;
  std::string name_;
  int64_t n_ = 0, block_ = 1, begin_ = 0;
  at::Tensor data_;
};

Source open_source(const std::string& path) {
  Source s;
  s.file = read_feature_file(path);
  if (s.file.npy) {
    throw InputError::invalid_argument(fmt::format(
        "dinov2: {} is an npy folder; merge reads safetensors outputs (extract --format "
        "safetensors)",
        path));
  }
  s.reader = std::make_unique<SafetensorsReader>(path);
  s.layout = s.file.meta.value("patch_layout", "none");
  const json& grids = s.file.meta.at("grids");
  for (const json& g : grids) s.grids.emplace_back(g.at(0).get<int64_t>(), g.at(1).get<int64_t>());
  if (static_cast<int64_t>(s.grids.size()) != s.file.rows) {
    throw InputError(
        fmt::format("dinov2: {}: {} grids for {} rows", path, s.grids.size(), s.file.rows));
  }
  s.patch_pos.assign(static_cast<size_t>(s.file.rows), 0);
  if (s.layout == "single") {
    for (int64_t i = 0; i < s.file.rows; ++i) s.patch_pos[static_cast<size_t>(i)] = i;
  } else if (s.layout == "by_grid") {
    for (const auto& e : s.reader->entries()) {
      if (e.name.rfind("patch_rows/", 0) != 0) continue;
      const at::Tensor members = s.reader->read(e.name);
      const int64_t* m = members.data_ptr<int64_t>();
      for (int64_t k = 0; k < members.numel(); ++k) {
        if (m[k] < 0 || m[k] >= s.file.rows) {
          throw InputError(
              fmt::format("dinov2: {}: {} names row {} of {}", path, e.name, m[k], s.file.rows));
        }
        s.patch_pos[static_cast<size_t>(m[k])] = k;
      }
    }
  } else if (s.layout != "none") {
    throw InputError(fmt::format("dinov2: {}: unknown patch_layout '{}'", path, s.layout));
  }
  return s;
}

/// The name of the tensor holding row `r`'s patches in `s`.
std::string patch_tensor(const Source& s, int64_t r) {
  return s.layout == "single" ? "patch" : "patch/" + grid_key(s.grids[static_cast<size_t>(r)]);
}

/// Whether the files are the --shard I/N outputs of one input list: then rows are merged by
/// their position in that list, giving the order of one unsharded run.
bool shards_of_one_list(const std::vector<Source>& sources) {
  std::set<std::string> seen;
  std::string n_of_first;
  for (const Source& s : sources) {
    const std::string shard = s.file.meta.value("shard", "");
    const size_t slash = shard.find('/');
    if (slash == std::string::npos || shard == "0/1") return false;
    if (n_of_first.empty()) n_of_first = shard.substr(slash + 1);
    if (shard.substr(slash + 1) != n_of_first || !seen.insert(shard).second) return false;
    if (s.file.meta.value("inputs_total", json()) !=
        sources[0].file.meta.value("inputs_total", json()))
      return false;
  }
  return sources.size() > 1;
}

int run_index(const MergeArgs& args, const std::vector<std::string>& paths) {
  json files = json::array();
  int64_t first_row = 0, failed = 0;
  const fs::path base = fs::absolute(args.output).parent_path();
  for (const std::string& path : paths) {
    const FeatureFile f = read_feature_file(path);
    files.push_back({{"path", fs::relative(fs::absolute(path), base).string()},
                     {"rows", f.rows},
                     {"first_row", first_row},
                     {"failed", f.failed.size()},
                     {"shard", f.meta.value("shard", "0/1")}});
    first_row += f.rows;
    failed += static_cast<int64_t>(f.failed.size());
  }
  const json index = {{"format", "dinov2-features-index"},
                      {"format_version", 1},
                      {"rows", first_row},
                      {"failed", failed},
                      {"files", files}};
  write_file_atomically(args.output, dump_json(index, 2) + "\n");
  std::cerr << fmt::format("dinov2 merge: indexed {} rows of {} files in {}\n", first_row,
                           paths.size(), args.output);
  return kExitSuccess;
}

int run_merge(const MergeArgs& args) {
  if (args.inputs.empty()) throw InputError::invalid_argument("dinov2: merge: no input files");
  const std::vector<std::string> paths = feature_file_paths(args.inputs);
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::exists(args.output, ec) && fs::equivalent(p, args.output, ec)) {
      throw InputError::invalid_argument(
          fmt::format("dinov2: --output {} is also an input; name a new file", args.output));
    }
  }
  if (fs::exists(args.output) && !args.overwrite) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: --output {} exists; pass --overwrite to replace it", args.output));
  }
  if (args.index) return run_index(args, paths);

  std::vector<Source> sources;
  for (const std::string& p : paths) sources.push_back(open_source(p));
  const Source& first = sources.front();
  for (const Source& s : sources) {
    for (const char* key : kMustAgree) {
      if (s.file.meta.value(key, json()) != first.file.meta.value(key, json())) {
        throw InputError::invalid_argument(fmt::format(
            "dinov2: {} and {} differ in \"{}\" ({} against {}); only outputs of the same model, "
            "recipe and patch dtype can be merged",
            first.file.path, s.file.path, key, dump_json(first.file.meta.value(key, json())),
            dump_json(s.file.meta.value(key, json()))));
      }
    }
    if ((s.layout == "none") != (first.layout == "none")) {
      throw InputError::invalid_argument(
          fmt::format("dinov2: {} has patch features and {} has none (--no-patches); merge "
                      "outputs made with the same options",
                      s.layout == "none" ? first.file.path : s.file.path,
                      s.layout == "none" ? s.file.path : first.file.path));
    }
  }

  // The merged order: (file, row) pairs, concatenated, or by input position for shards of one list.
  const bool interleave = shards_of_one_list(sources);
  std::vector<std::pair<size_t, int64_t>> order;
  for (size_t f = 0; f < sources.size(); ++f) {
    for (int64_t r = 0; r < sources[f].file.rows; ++r) order.emplace_back(f, r);
  }
  std::vector<std::vector<int64_t>> index_of(sources.size());
  if (interleave) {
    for (size_t f = 0; f < sources.size(); ++f) {
      index_of[f] = sources[f].file.meta.at("input_indices").get<std::vector<int64_t>>();
    }
    std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
      return index_of[a.first][static_cast<size_t>(a.second)] <
             index_of[b.first][static_cast<size_t>(b.second)];
    });
  }
  const int64_t n = static_cast<int64_t>(order.size());

  // Per-row metadata in the merged order; a key seen twice is refused.
  json out_paths = json::array(), keys = json::array(), indices = json::array(),
       sizes = json::array(), grids = json::array(), side = json::array(), failed = json::array();
  bool any_side = false;
  std::set<std::string> seen_keys;
  std::map<Grid, std::vector<int64_t>> by_grid;
  for (int64_t i = 0; i < n; ++i) {
    const auto [f, r] = order[static_cast<size_t>(i)];
    const Source& s = sources[f];
    const auto ri = static_cast<size_t>(r);
    if (!seen_keys.insert(s.file.keys[ri]).second) {
      throw InputError::invalid_argument(fmt::format(
          "dinov2: the row '{}' is in more than one input (again in {}); merge each shard "
          "once (dinov2 verify lists the duplicates)",
          s.file.keys[ri], s.file.path));
    }
    out_paths.push_back(s.file.paths[ri]);
    keys.push_back(s.file.keys[ri]);
    indices.push_back(s.file.meta.at("input_indices").at(ri));
    sizes.push_back(s.file.meta.at("image_sizes").at(ri));
    grids.push_back(s.file.meta.at("grids").at(ri));
    const json row_side = s.file.meta.contains("side") ? s.file.meta.at("side").at(ri) : json();
    any_side = any_side || !row_side.is_null();
    side.push_back(row_side);
    by_grid[s.grids[ri]].push_back(i);
  }
  json merged_from = json::array();
  for (const Source& s : sources) {
    for (const json& fail : s.file.failed) failed.push_back(fail);
    merged_from.push_back({{"file", s.file.path},
                           {"rows", s.file.rows},
                           {"failed", s.file.failed.size()},
                           {"shard", s.file.meta.value("shard", "0/1")}});
  }
  if (interleave) {
    std::stable_sort(failed.begin(), failed.end(), [](const json& a, const json& b) {
      return a.value("input_index", int64_t{0}) < b.value("input_index", int64_t{0});
    });
  }

  // Tensors: widths from the first file; patches in one tensor when every row has one grid.
  const TensorEntry& cls_entry = first.reader->entry("cls");
  const TensorEntry& reg_entry = first.reader->entry("registers");
  const int64_t d = cls_entry.shape.at(1), regs = reg_entry.shape.at(1);
  const bool patches = first.layout != "none";
  at::ScalarType patch_dtype = at::kFloat;
  if (patches) {
    for (const Source& s : sources) {
      if (s.file.rows > 0) {
        patch_dtype = s.reader->entry(patch_tensor(s, 0)).dtype;
        break;
      }
    }
  }
  Grid single{0, 0};
  if (by_grid.size() == 1) {
    single = by_grid.begin()->first;
  } else if (by_grid.empty() && patches && first.layout == "single") {
    const auto& shape = first.reader->entry("patch").shape;
    single = {shape.at(1), shape.at(2)};
  }
  std::vector<RowCache> cls_rows, reg_rows;
  std::vector<std::map<std::string, RowCache>> patch_rows(sources.size());
  for (const Source& s : sources) {
    cls_rows.emplace_back(*s.reader, "cls");
    reg_rows.emplace_back(*s.reader, "registers");
  }
  const auto patch_of = [&](size_t f, int64_t r) {
    const std::string name = patch_tensor(sources[f], r);
    auto it = patch_rows[f].find(name);
    if (it == patch_rows[f].end())
      it = patch_rows[f].emplace(name, RowCache(*sources[f].reader, name)).first;
    return it->second.row(sources[f].patch_pos[static_cast<size_t>(r)]);
  };

  struct Out {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    std::function<void(SafetensorsWriter&)> write;
  };
  std::vector<Out> outs;
  const auto rows_in = [&](std::vector<int64_t> members, bool patch) {
    return [&, members = std::move(members), patch](SafetensorsWriter& w) {
      for (const int64_t i : members) {
        const auto [f, r] = order[static_cast<size_t>(i)];
        w.append(patch ? patch_of(f, r) : at::Tensor());
      }
    };
  };
  outs.push_back({"cls", at::kFloat, {n, d}, [&](SafetensorsWriter& w) {
                    for (const auto& [f, r] : order) w.append(cls_rows[f].row(r));
                  }});
  outs.push_back({"registers", at::kFloat, {n, regs, d}, [&](SafetensorsWriter& w) {
                    for (const auto& [f, r] : order) w.append(reg_rows[f].row(r));
                  }});
  if (patches && by_grid.size() > 1) {
    for (const auto& [grid, members] : by_grid) {
      outs.push_back({"patch_rows/" + grid_key(grid),
                      at::kLong,
                      {static_cast<int64_t>(members.size())},
                      [members = members](SafetensorsWriter& w) {
                        w.append(at::tensor(members, at::kLong));
                      }});
      outs.push_back({"patch/" + grid_key(grid),
                      patch_dtype,
                      {static_cast<int64_t>(members.size()), grid.first, grid.second, d},
                      rows_in(members, true)});
    }
  } else if (patches) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    outs.push_back(
        {"patch", patch_dtype, {n, single.first, single.second, d}, rows_in(std::move(all), true)});
  }
  std::stable_sort(outs.begin(), outs.end(), [](const Out& a, const Out& b) {
    return c10::elementSize(a.dtype) > c10::elementSize(b.dtype);
  });

  json meta = first.file.meta;
  for (const char* per_run : {"run", "shard", "inputs_total", "merged_from"}) meta.erase(per_run);
  if (interleave) {
    meta["shard"] = "0/1";
    meta["inputs_total"] = first.file.meta.at("inputs_total");
  }
  meta["rows"] = n;
  meta["grid"] = by_grid.size() > 1 ? json(nullptr) : json{single.first, single.second};
  meta["patch_layout"] = !patches ? "none" : by_grid.size() > 1 ? "by_grid" : "single";
  meta["paths"] = std::move(out_paths);
  meta["keys"] = std::move(keys);
  meta["input_indices"] = std::move(indices);
  meta["image_sizes"] = std::move(sizes);
  meta["grids"] = std::move(grids);
  meta.erase("side");
  if (any_side) meta["side"] = std::move(side);
  meta["failed"] = failed;
  meta["merged_from"] = merged_from;
  TensorMetadata strings;
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    strings[it.key()] = it->is_string() ? it->get<std::string>() : dump_json(*it);
  }
  std::vector<TensorSpec> specs;
  for (const Out& o : outs) specs.push_back({o.name, o.dtype, o.shape});
  SafetensorsWriter writer(args.output, std::move(specs), strings);
  Progress progress(static_cast<int64_t>(outs.size()), 0, "tensors");
  for (const Out& o : outs) {
    o.write(writer);
    progress.advance(1);
  }
  writer.commit();
  const std::string timing = progress.finish();
  std::cerr << fmt::format(
      "dinov2 merge: {} rows and {} failed inputs of {} files{} into {}; {}\n", n, failed.size(),
      sources.size(), interleave ? " (shards of one list, in its order)" : "", args.output, timing);
  return kExitSuccess;
}

}  // namespace

Command register_merge(CLI::App& app) {
  auto args = std::make_shared<MergeArgs>();
  CLI::App* sub = app.add_subcommand(
      "merge", "Combine outputs of dinov2 extract into one safetensors file (or a JSON index)");
  sub->footer(
      "Rows are concatenated in the order of the inputs given (a folder: its .safetensors files, "
      "sorted), or, when the inputs are the --shard I/N outputs of one input list, in that "
      "list's order, as one unsharded run writes them. Outputs of different models, recipes or "
      "patch dtypes are refused, as is a row found in two inputs. Tensors are copied in blocks "
      "of rows: memory does not grow with the number of rows.");
  sub->add_option("--output,-o", args->output,
                  "The merged .safetensors file (or the index, "
                  "with --index)")
      ->required()
      ->type_name("OUT");
  sub->add_flag("--index", args->index,
                "Write a JSON index of the files (rows, first row, failures) instead of copying "
                "their data");
  sub->add_flag("--overwrite", args->overwrite, "Replace OUT if it exists");
  sub->add_option("inputs", args->inputs, "Outputs of dinov2 extract, or folders of them")
      ->required()
      ->type_name("FILE");
  return {sub, [args] { return run_merge(*args); }};
}

}  // namespace dinov2::cli
