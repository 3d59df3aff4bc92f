// SPDX-License-Identifier: Apache-2.0
// `dinov2 extract`: features of many images into one safetensors file (or a folder of .npy).
//
// The sorted input list (after --shard) is cut into chunks of a fixed number of inputs. Each
// finished chunk is written atomically as OUT.parts/part-NNNNNN.safetensors, so a killed run
// loses at most the chunk in flight and --resume recomputes only missing chunks; since chunks
// and their batches depend only on the input list and the options, a resumed run writes exactly
// the bytes an uninterrupted one would. At the end the parts are merged, in input order, into
// OUT and the parts folder is removed. docs/CLI.md documents the output layout.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/model.hpp"
#include "dinov2/pipeline.hpp"
#include "dinov2/preprocess.hpp"
#include "dinov2/runtime.hpp"
#include "dinov2/version.hpp"
#include "inputs.hpp"

namespace dinov2::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kFeaturesFormatVersion = 1;

struct ExtractArgs {
  ModelArgs model;
  std::string output;
  std::string recipe = "square518";
  int batch = 8;
  bool no_patches = false;
  std::string patch_dtype = "float32";
  std::string format = "safetensors";
  std::string shard;
  bool resume = false;
  bool overwrite = false;
  bool ignore_orientation = false;
  std::vector<std::string> inputs;
};

/// One input of this run: its position in the full input list, its path, stable key, side
/// files and source (inputs.hpp).
struct Item {
  int64_t index = 0;
  std::string path;
  std::string key;
  json side;
  ImageSource source;
};

struct Failure {
  int64_t index = 0;
  std::string path;
  std::string key;
  std::string reason;
};

/// One extracted image: what a part file stores per row.
struct Row {
  Item item;
  PatchGrid grid;
  at::Tensor cls;        // [D] float32
  at::Tensor registers;  // [R, D] float32
  at::Tensor patch;      // [h, w, D] in the patch dtype; undefined with --no-patches
};

at::ScalarType scalar_type_of(const std::string& name) {
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  return at::kFloat;
}

std::string part_name(int64_t chunk) { return fmt::format("part-{:06d}.safetensors", chunk); }

std::string grid_key(int64_t rows, int64_t cols) { return fmt::format("{}x{}", rows, cols); }

uint64_t fnv1a(const std::vector<Item>& items) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  for (const auto& item : items) {
    mix(std::to_string(item.index));
    mix(":");
    mix(item.path);
    mix("\n");
  }
  return h;
}

void write_part(const std::string& path, int64_t chunk_index, const std::vector<Row>& rows,
                const std::vector<Failure>& failures, const ModelInfo& info) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t d = info.embed_dim, r = info.num_register_tokens;
  at::Tensor cls = at::empty({n, d}, at::kFloat);
  at::Tensor registers = at::empty({n, r, d}, at::kFloat);
  NamedTensors tensors;
  json meta_rows = json::array();
  for (int64_t i = 0; i < n; ++i) {
    const Row& row = rows[static_cast<size_t>(i)];
    cls[i].copy_(row.cls);
    registers[i].copy_(row.registers);
    if (row.patch.defined()) tensors.emplace_back(fmt::format("patch/{}", i), row.patch);
    json meta_row = {{"index", row.item.index},
                     {"path", row.item.path},
                     {"key", row.item.key},
                     {"size", {row.grid.original_height, row.grid.original_width}},
                     {"grid", {row.grid.rows, row.grid.cols}}};
    if (!row.item.side.is_null()) meta_row["side"] = row.item.side;
    meta_rows.push_back(std::move(meta_row));
  }
  tensors.emplace_back("cls", cls);
  tensors.emplace_back("registers", registers);
  json meta_failed = json::array();
  for (const auto& f : failures) {
    meta_failed.push_back(
        {{"index", f.index}, {"path", f.path}, {"key", f.key}, {"reason", f.reason}});
  }
  save_safetensors(path, tensors,
                   {{"chunk", std::to_string(chunk_index)},
                    {"rows", dump_json(meta_rows)},
                    {"failed", dump_json(meta_failed)}});
}

// ---------------------------------------------------------------------------------------------
// Merging the parts into the output

struct PartRow {
  size_t part = 0;    // which part file
  int64_t local = 0;  // row in that part
  int64_t index = 0;  // position in the full input list
  std::string path;
  std::string key;
  json side;  // null when the input had no side files
  int64_t height = 0, width = 0, grid_h = 0, grid_w = 0;
};

/// Streams tensors to either a safetensors file or a folder of .npy files.
class OutputSink {
 public:
  virtual ~OutputSink() = default;
  virtual void begin(const std::string& name, at::ScalarType dtype,
                     const std::vector<int64_t>& shape) = 0;
  virtual void append(const at::Tensor& data) = 0;
  virtual void commit(const json& metadata) = 0;
};

class SafetensorsSink : public OutputSink {
 public:
  SafetensorsSink(const std::string& path, std::vector<TensorSpec> specs, const json& metadata)
      : writer_(path, std::move(specs), string_map(metadata)) {}
  void begin(const std::string&, at::ScalarType, const std::vector<int64_t>&) override {}
  void append(const at::Tensor& data) override { writer_.append(data); }
  void commit(const json&) override { writer_.commit(); }

 private:
  // safetensors metadata is string to string: JSON values other than strings become JSON text.
  static TensorMetadata string_map(const json& metadata) {
    TensorMetadata out;
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      out[it.key()] = it->is_string() ? it->get<std::string>() : dump_json(*it);
    }
    return out;
  }
  SafetensorsWriter writer_;
};

/// A folder beside `target` named TARGET.SUFFIX-XXXXXX that did not exist before: created here,
/// so this run may remove it.
std::string fresh_folder_beside(const std::string& target, const char* suffix) {
  std::string name = fmt::format("{}.{}-XXXXXX", target, suffix);
  if (::mkdtemp(name.data()) == nullptr) {
    throw InputError(
        fmt::format("dinov2: cannot create a folder beside {} ({}); check that its "
                    "folder is writable",
                    target, std::strerror(errno)));
  }
  return name;
}

class NpySink : public OutputSink {
 public:
  explicit NpySink(std::string folder)
      : folder_(std::move(folder)), tmp_(fresh_folder_beside(folder_, "tmp")) {}
  ~NpySink() override {
    if (!committed_) remove_tree(tmp_);  // made by this run, in the constructor
  }
  void begin(const std::string& name, at::ScalarType dtype,
             const std::vector<int64_t>& shape) override {
    finish_current();
    current_.emplace((fs::path(tmp_) / (name + ".npy")).string(), dtype, shape);
  }
  void append(const at::Tensor& data) override { current_->append(data); }
  void commit(const json& metadata) override {
    finish_current();
    write_file_atomically((fs::path(tmp_) / "metadata.json").string(),
                          dump_json(metadata, 2) + "\n");
    // Swap the finished folder in. An older output (checked before the run to be one of ours,
    // or given up with --overwrite) is moved aside to a fresh name first, then deleted.
    std::error_code ec;
    std::string old;
    if (fs::exists(fs::symlink_status(folder_, ec))) {
      old = fresh_folder_beside(folder_, "old");
      fs::rename(folder_, fs::path(old) / "output", ec);
      if (ec) {
        throw InputError(fmt::format("dinov2: cannot replace {} ({})", folder_, ec.message()));
      }
    }
    fs::rename(tmp_, folder_, ec);
    if (ec) {
      throw InputError(
          fmt::format("dinov2: cannot move {} to {} ({})", tmp_, folder_, ec.message()));
    }
    committed_ = true;
    if (!old.empty()) remove_tree(old);
  }

 private:
  void finish_current() {
    if (current_) current_->commit();
    current_.reset();
  }
  std::string folder_;
  std::string tmp_;
  bool committed_ = false;
  std::optional<NpyWriter> current_;
};

void merge_parts(const ExtractArgs& args, const std::string& parts_dir, int64_t chunks,
                 const Recipe& recipe, const Model& model, json metadata, int64_t& rows_written,
                 int64_t& failed_count) {
  std::vector<SafetensorsReader> parts;
  std::vector<PartRow> rows;
  json failed = json::array();
  for (int64_t c = 0; c < chunks; ++c) {
    parts.emplace_back((fs::path(parts_dir) / part_name(c)).string());
    const auto& meta = parts.back().metadata();
    const json part_rows = json::parse(meta.at("rows"));
    int64_t local = 0;
    for (const auto& r : part_rows) {
      PartRow row;
      row.part = parts.size() - 1;
      row.local = local++;
      row.index = r.at("index").get<int64_t>();
      row.path = r.at("path").get<std::string>();
      row.key = r.value("key", row.path);  // parts of an earlier version have no key
      if (r.contains("side")) row.side = r.at("side");
      row.height = r.at("size").at(0).get<int64_t>();
      row.width = r.at("size").at(1).get<int64_t>();
      row.grid_h = r.at("grid").at(0).get<int64_t>();
      row.grid_w = r.at("grid").at(1).get<int64_t>();
      rows.push_back(std::move(row));
    }
    for (const auto& f : json::parse(meta.at("failed"))) {
      failed.push_back({{"path", f.at("path")},
                        {"key", f.value("key", f.at("path").get<std::string>())},
                        {"reason", f.at("reason")},
                        {"input_index", f.at("index")}});
    }
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  const ModelInfo& info = model.info();
  const int64_t d = info.embed_dim, r = info.num_register_tokens;
  const bool patches = !args.no_patches;
  const at::ScalarType patch_dtype = scalar_type_of(args.patch_dtype);

  // Distinct grids, in (rows, cols) order.
  std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> by_grid;  // grid -> output rows
  for (int64_t i = 0; i < n; ++i) {
    by_grid[{rows[static_cast<size_t>(i)].grid_h, rows[static_cast<size_t>(i)].grid_w}].push_back(
        i);
  }
  std::pair<int64_t, int64_t> single_grid{0, 0};
  if (by_grid.size() == 1) {
    single_grid = by_grid.begin()->first;
  } else if (by_grid.empty() && recipe.kind() != Recipe::Kind::kPatchAligned) {
    const PatchGrid g = recipe.plan(1000, 1000).grid;  // fixed-size recipes: any image size
    single_grid = {g.rows, g.cols};
  }

  // Declared in data order: 8-byte, then 4-byte, then 2-byte elements (keeps alignment).
  struct Out {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    std::function<void(OutputSink&)> write;
  };
  std::vector<Out> outs;
  if (patches && by_grid.size() > 1) {
    for (const auto& [grid, members] : by_grid) {
      outs.push_back(
          {"patch_rows/" + grid_key(grid.first, grid.second),
           at::kLong,
           {static_cast<int64_t>(members.size())},
           [members = members](OutputSink& sink) { sink.append(at::tensor(members, at::kLong)); }});
    }
  }
  auto per_part = [&](const std::string& name) {
    return [&parts, name](OutputSink& sink) {
      for (const auto& part : parts) sink.append(part.read(name));
    };
  };
  outs.push_back({"cls", at::kFloat, {n, d}, per_part("cls")});
  outs.push_back({"registers", at::kFloat, {n, r, d}, per_part("registers")});
  if (patches) {
    auto rows_of = [&rows, &parts](std::vector<int64_t> members) {
      return [&rows, &parts, members = std::move(members)](OutputSink& sink) {
        for (int64_t i : members) {
          const PartRow& row = rows[static_cast<size_t>(i)];
          sink.append(parts[row.part].read(fmt::format("patch/{}", row.local)));
        }
      };
    };
    if (by_grid.size() > 1) {
      for (const auto& [grid, members] : by_grid) {
        outs.push_back({"patch/" + grid_key(grid.first, grid.second),
                        patch_dtype,
                        {static_cast<int64_t>(members.size()), grid.first, grid.second, d},
                        rows_of(members)});
      }
    } else {
      std::vector<int64_t> all(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
      outs.push_back({"patch",
                      patch_dtype,
                      {n, single_grid.first, single_grid.second, d},
                      rows_of(std::move(all))});
    }
  }
  std::stable_sort(outs.begin(), outs.end(), [](const Out& a, const Out& b) {
    return c10::elementSize(a.dtype) > c10::elementSize(b.dtype);
  });

  json paths = json::array(), indices = json::array(), sizes = json::array(), grids = json::array();
  json keys = json::array(), side = json::array();
  bool any_side = false;
  for (const auto& row : rows) {
    paths.push_back(row.path);
    keys.push_back(row.key);
    side.push_back(row.side);
    any_side = any_side || !row.side.is_null();
    indices.push_back(row.index);
    sizes.push_back({row.height, row.width});
    grids.push_back({row.grid_h, row.grid_w});
  }
  metadata["rows"] = n;
  metadata["grid"] =
      by_grid.size() > 1 ? json(nullptr) : json{single_grid.first, single_grid.second};
  metadata["patch_layout"] = !patches ? "none" : by_grid.size() > 1 ? "by_grid" : "single";
  metadata["paths"] = std::move(paths);
  metadata["keys"] = std::move(keys);
  if (any_side) metadata["side"] = std::move(side);
  metadata["input_indices"] = std::move(indices);
  metadata["image_sizes"] = std::move(sizes);
  metadata["grids"] = std::move(grids);
  metadata["failed"] = failed;

  std::unique_ptr<OutputSink> sink;
  if (args.format == "npy") {
    sink = std::make_unique<NpySink>(args.output);
  } else {
    std::vector<TensorSpec> specs;
    for (const auto& o : outs) specs.push_back({o.name, o.dtype, o.shape});
    sink = std::make_unique<SafetensorsSink>(args.output, std::move(specs), metadata);
  }
  for (const auto& o : outs) {
    std::string file_name = o.name;
    std::replace(file_name.begin(), file_name.end(), '/', '_');
    sink->begin(file_name, o.dtype, o.shape);
    o.write(*sink);
  }
  sink->commit(metadata);
  rows_written = n;
  failed_count = static_cast<int64_t>(failed.size());
}

// ---------------------------------------------------------------------------------------------
// The command

json run_fingerprint(const ExtractArgs& args, const ModelInfo& info, const Recipe& recipe,
                     int64_t chunk_size, const std::vector<Item>& items) {
  return {{"tool", "dinov2 extract"},
          {"dinov2_version", kVersion},
          {"model_file", args.model.path},
          {"model_variant", info.variant},
          {"model_depth", info.depth},
          {"model_weights_sha256", info.weights_sha256},
          {"recipe", recipe.to_string()},
          {"batch", args.batch},
          {"chunk_size", chunk_size},
          {"device", args.model.device},
          {"dtype", args.model.dtype},
          {"kernels", args.model.kernels},
          {"patches", !args.no_patches},
          {"patch_dtype", args.patch_dtype},
          {"shard", args.shard.empty() ? "0/1" : args.shard},
          {"inputs", items.size()},
          {"inputs_digest", fmt::format("{:016x}", fnv1a(items))}};
}

/// The metadata of a features output written by this tool, or nullopt when `path` is not one
/// (a safetensors file, or with --format npy a folder holding only .npy files and metadata.json).
std::optional<json> our_output(const std::string& path) {
  std::error_code ec;
  const auto status = fs::symlink_status(path, ec);
  try {
    json meta;
    if (fs::is_regular_file(status)) {
      SafetensorsReader reader(path);
      for (const auto& [key, value] : reader.metadata()) meta[key] = value;
    } else if (fs::is_directory(status)) {
      for (const auto& entry : fs::directory_iterator(path)) {
        const std::string name = entry.path().filename().string();
        if (!entry.is_regular_file() ||
            (entry.path().extension() != ".npy" && name != "metadata.json")) {
          return std::nullopt;  // something of the user's is in there
        }
      }
      std::ifstream in(fs::path(path) / "metadata.json");
      meta = json::parse(in);
    } else {
      return std::nullopt;
    }
    if (meta.value("format", "") != "dinov2-features") return std::nullopt;
    return meta;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

/// The rows and failures of `output` when it is the finished output of the run with this
/// fingerprint; nullopt otherwise.
std::optional<std::pair<int64_t, int64_t>> finished_output(const std::string& output,
                                                           const json& fingerprint) {
  const auto meta = our_output(output);
  if (!meta || !meta->contains("run")) return std::nullopt;
  try {
    // safetensors metadata holds JSON text; an npy folder's metadata.json holds the values.
    const auto value = [&](const char* key) {
      const json& v = meta->at(key);
      return v.is_string() ? json::parse(v.get<std::string>()) : v;
    };
    if (value("run") != fingerprint) return std::nullopt;
    return std::make_pair(value("rows").get<int64_t>(),
                          static_cast<int64_t>(value("failed").size()));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

/// Whether `output` is the finished output of the run whose fingerprint is in `run_file`.
bool finished_run(const std::string& output, const std::string& run_file) {
  const auto meta = our_output(output);
  if (!meta || !meta->contains("run")) return false;
  try {
    std::ifstream in(run_file);
    const json run = json::parse(in);
    const json& recorded = meta->at("run");
    return (recorded.is_string() ? json::parse(recorded.get<std::string>()) : recorded) == run;
  } catch (const std::exception&) {
    return false;
  }
}

/// Checks --output before any work: an empty name, a folder where a file is meant, a target
/// that exists but was not written by this tool (refused unless --overwrite), or a folder that
/// cannot be written. Normalises a trailing '/' of an npy folder.
void check_output(ExtractArgs& args) {
  const auto refuse = [](const std::string& why) {
    throw InputError::invalid_argument("dinov2: --output " + why);
  };
  if (args.output.empty()) {
    refuse("is empty; name a .safetensors file (or a folder with --format npy)");
  }
  const bool npy = args.format == "npy";
  if (!npy && args.output.back() == '/') {
    refuse(
        fmt::format("'{}' ends with '/', a folder; name a file, e.g. {}features.safetensors, "
                    "or use --format npy to write a folder",
                    args.output, args.output));
  }
  while (args.output.size() > 1 && args.output.back() == '/') args.output.pop_back();
  std::error_code ec;
  const auto status = fs::symlink_status(args.output, ec);
  if (fs::exists(status)) {
    if (!npy && fs::is_directory(status)) {
      refuse(
          fmt::format("'{}' is an existing folder; name a .safetensors file (or use --format "
                      "npy)",
                      args.output));
    }
    if (!args.overwrite && !our_output(args.output)) {
      refuse(
          fmt::format("'{}' exists and was not written by dinov2 extract{}; choose another "
                      "name, or pass --overwrite to replace it",
                      args.output,
                      npy && fs::is_directory(status)
                          ? " (a folder of its outputs holds only .npy files and metadata.json)"
                          : ""));
    }
  }
  fs::path parent = fs::path(args.output).parent_path();
  if (parent.empty()) parent = ".";
  fs::create_directories(parent, ec);
  if (ec || ::access(parent.c_str(), W_OK) != 0) {
    refuse(fmt::format("'{}' cannot be written: its folder {} {}", args.output, parent.string(),
                       ec ? "cannot be created (" + ec.message() + ")"
                          : "is not writable (" + std::string(std::strerror(errno)) + ")"));
  }
}

void prepare_parts_dir(const ExtractArgs& args, const std::string& parts_dir,
                       const json& fingerprint) {
  const std::string run_file = (fs::path(parts_dir) / "run.json").string();
  std::error_code ec;
  if (fs::exists(parts_dir) && !args.resume && finished_run(args.output, run_file)) {
    // Killed after the output was moved into place but before the parts were deleted: the run
    // is complete, and its parts (ours: they hold run.json) are no longer needed.
    remove_tree(parts_dir);
  }
  if (fs::exists(parts_dir)) {
    if (!args.resume) {
      throw InputError(fmt::format(
          "dinov2: {} holds the parts of an unfinished run; pass --resume to continue it, or "
          "delete that folder to start over",
          parts_dir));
    }
    json previous;
    try {
      std::ifstream in(run_file);
      previous = json::parse(in);
    } catch (const json::exception&) {
      throw InputError(
          fmt::format("dinov2: --resume: {} is missing or unreadable; delete {} to "
                      "start over",
                      run_file, parts_dir));
    }
    std::vector<std::string> diffs;
    for (auto it = fingerprint.begin(); it != fingerprint.end(); ++it) {
      const json was = previous.contains(it.key()) ? previous[it.key()] : json(nullptr);
      if (was != *it) {
        diffs.push_back(fmt::format("{} was {}, now {}", it.key(), dump_json(was), dump_json(*it)));
      }
    }
    if (!diffs.empty()) {
      throw InputError(fmt::format(
          "dinov2: --resume: the unfinished run in {} used other settings ({}); rerun with the "
          "same model, inputs and options, or delete that folder to start over",
          parts_dir, fmt::join(diffs, "; ")));
    }
    // Leftovers of a write that was killed before its rename.
    for (const auto& entry : fs::directory_iterator(parts_dir, ec)) {
      if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
        fs::remove(entry.path(), ec);
      }
    }
    return;
  }
  fs::create_directories(parts_dir, ec);
  if (ec) {
    throw InputError(
        fmt::format("dinov2: cannot create the folder {} ({})", parts_dir, ec.message()));
  }
  write_file_atomically(run_file, dump_json(fingerprint, 2) + "\n");
}

bool part_is_complete(const std::string& path, int64_t chunk) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  try {
    SafetensorsReader reader(path);
    const auto& meta = reader.metadata();
    return meta.count("chunk") && meta.at("chunk") == std::to_string(chunk) && meta.count("rows") &&
           meta.count("failed") && reader.contains("cls");
  } catch (const Error&) {
    return false;
  }
}

int64_t part_input_count(const std::string& path) {
  SafetensorsReader reader(path);
  return static_cast<int64_t>(json::parse(reader.metadata().at("rows")).size() +
                              json::parse(reader.metadata().at("failed")).size());
}

int run_extract(ExtractArgs args) {
  if (args.format == "npy" && args.patch_dtype == "bfloat16" && !args.no_patches) {
    throw InputError::invalid_argument(
        "dinov2: --patch-dtype bfloat16 cannot be stored in .npy (NumPy has no "
        "bfloat16); use float16 or float32, or --format safetensors");
  }
  check_output(args);
  const Recipe recipe = parse_recipe(args.recipe);
  const auto [shard_i, shard_n] =
      args.shard.empty() ? std::pair<int64_t, int64_t>{0, 1} : parse_shard(args.shard);

  std::vector<InputItem> all = expand_inputs(args.inputs);
  if (all.empty()) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: no images found in {} (folders are searched for .jpg, .jpeg, .png, "
                    ".bmp, .tif, .tiff, .webp; tar shards for members with those extensions)",
                    fmt::join(args.inputs, " ")));
  }
  std::vector<Item> items;
  for (size_t k = 0; k < all.size(); ++k) {
    if (static_cast<int64_t>(k) % shard_n != shard_i) continue;
    InputItem& in = all[k];
    items.push_back({static_cast<int64_t>(k), std::move(in.path), std::move(in.key),
                     std::move(in.side), std::move(in.source)});
  }

  std::cerr << "dinov2 extract: CPU " << to_string(cpu_info()) << "\n";
  const Model model = args.model.load();
  std::cerr << "dinov2 extract: " << describe_model(model) << "\n";
  const ModelInfo& info = model.info();
  // Fixed-size recipes fill every batch; aligned ones take several batches' worth of inputs per
  // chunk so that images of one shape can still share a batch.
  const int64_t chunk_size =
      recipe.kind() == Recipe::Kind::kPatchAligned ? 4 * int64_t{args.batch} : args.batch;
  // The library's Pipeline decodes the next chunk on a worker thread while the model runs this
  // one. Every chunk but the last is full, so its windows of chunk_size inputs are exactly the
  // chunks still to do, batched as in an uninterrupted run.
  const Pipeline pipeline(model, recipe,
                          PipelineOptions{}
                              .with_batch_size(args.batch)
                              .with_window(chunk_size)
                              .with_limits(input_limits())
                              .with_exif_orientation(!args.ignore_orientation)
                              .with_patches(!args.no_patches));
  const int64_t chunks = static_cast<int64_t>((items.size() + static_cast<size_t>(chunk_size) - 1) /
                                              static_cast<size_t>(chunk_size));
  const std::string parts_dir = args.output + ".parts";
  const json fingerprint = run_fingerprint(args, info, recipe, chunk_size, items);
  if (args.resume && !fs::exists(parts_dir)) {
    if (const auto done = finished_output(args.output, fingerprint)) {
      std::cerr << fmt::format(
          "dinov2 extract: {} is already the finished output of this run ({} rows, {} failed); "
          "nothing to do (without --resume it is computed again)\n",
          args.output, done->first, done->second);
      return done->second > 0 ? kExitInputsFailed : kExitSuccess;
    }
  }
  prepare_parts_dir(args, parts_dir, fingerprint);

  auto chunk_input_count = [&](int64_t c) {
    return std::min<int64_t>((c + 1) * chunk_size, static_cast<int64_t>(items.size())) -
           c * chunk_size;
  };
  auto chunk_items = [&](int64_t c) {
    const auto begin = items.begin() + c * chunk_size;
    const auto end =
        items.begin() + std::min<int64_t>((c + 1) * chunk_size, static_cast<int64_t>(items.size()));
    return std::vector<Item>(begin, end);
  };

  std::vector<int64_t> todo;
  int64_t already = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const std::string part = (fs::path(parts_dir) / part_name(c)).string();
    if (part_is_complete(part, c)) {
      already += part_input_count(part);
    } else {
      todo.push_back(c);
    }
  }

  Progress progress(static_cast<int64_t>(items.size()), already);
  if (already > 0) {
    progress.message(fmt::format("dinov2: resuming: {} of {} inputs were done by an earlier run",
                                 already, items.size()));
  }
  const bool patches = !args.no_patches;
  const at::ScalarType patch_dtype = scalar_type_of(args.patch_dtype);

  std::vector<Item> todo_items;
  std::vector<ImageSource> sources;
  for (const int64_t c : todo) {
    for (auto& item : chunk_items(c)) {
      sources.push_back(item.source);
      todo_items.push_back(std::move(item));
    }
  }
  std::vector<Row> rows;
  std::vector<Failure> failures;
  size_t t = 0;  // the chunk being filled: todo[t]
  pipeline.run(sources, [&](ImageFeatures&& result) {
    const Item& item = todo_items[result.index];
    if (result.ok()) {
      rows.push_back({item, result.grid, std::move(result.cls), std::move(result.registers),
                      patches ? result.patches.to(patch_dtype).contiguous() : at::Tensor()});
    } else {
      progress.message(fmt::format("dinov2: skipped {}: {}", item.path, result.error));
      failures.push_back({item.index, item.path, item.key, std::move(result.error)});
    }
    const size_t inputs = rows.size() + failures.size();
    if (static_cast<int64_t>(inputs) == chunk_input_count(todo[t])) {
      write_part((fs::path(parts_dir) / part_name(todo[t])).string(), todo[t], rows, failures,
                 info);
      progress.advance(static_cast<int64_t>(inputs));
      rows.clear();
      failures.clear();
      ++t;
    }
  });
  const std::string timing = progress.finish();

  json metadata = {
      {"format", "dinov2-features"},
      {"format_version", std::to_string(kFeaturesFormatVersion)},
      {"dinov2_version", kVersion},
      {"model", json::parse(info.metadata_json)},
      {"model_file", args.model.path},
      {"recipe", recipe.to_string()},
      {"device", args.model.device},
      {"patch_dtype", args.no_patches ? "none" : args.patch_dtype},
      {"exif_orientation", args.ignore_orientation ? "ignored" : "applied"},
      {"shard", fmt::format("{}/{}", shard_i, shard_n)},
      {"inputs_total", all.size()},
  };
  metadata.update(runtime_metadata(model));
  metadata["run"] = fingerprint;  // lets a rerun recognise this output as the finished run
  int64_t rows_written = 0, failed = 0;
  merge_parts(args, parts_dir, chunks, recipe, model, std::move(metadata), rows_written, failed);
  remove_tree(parts_dir);

  std::cerr << fmt::format("dinov2 extract: {}; wrote {} rows to {}", timing, rows_written,
                           args.output);
  if (failed > 0) {
    std::cerr << fmt::format("; {} of {} inputs failed (listed under \"failed\" in the metadata)",
                             failed, items.size());
  }
  std::cerr << "\n";
  return failed > 0 ? kExitInputsFailed : kExitSuccess;
}

}  // namespace

Command register_extract(CLI::App& app) {
  auto args = std::make_shared<ExtractArgs>();
  CLI::App* sub = app.add_subcommand(
      "extract",
      "Extract CLS, register and patch features of images into one safetensors file (or a "
      "folder of .npy files)");
  sub->footer(
      "INPUT is an image file, a folder (searched recursively for jpg, jpeg, png, bmp, tif, "
      "tiff, webp), @LIST (a text file with one path per line) or a WebDataset tar shard (.tar, "
      ".tar.gz, ...: its image members in archive order, with KEY.json/KEY.txt kept as row "
      "metadata). Rows follow the sorted input paths. Bad images and corrupt members are "
      "reported and skipped (exit code 3). Finished batches are kept in "
      "OUTPUT.parts/ until the end, so an interrupted run continues with --resume.");
  args->model.add_to(sub);
  sub->add_option("--output,-o", args->output,
                  "Output file (.safetensors), or folder with --format npy")
      ->required()
      ->type_name("OUT");
  sub->add_option("--recipe", args->recipe, recipe_help())->capture_default_str();
  sub->add_option("--batch", args->batch, "Images per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_flag("--no-patches", args->no_patches, "Do not store the patch features");
  sub->add_option("--patch-dtype", args->patch_dtype,
                  "dtype of the stored patch features (cls and registers stay float32)")
      ->check(CLI::IsMember({"float32", "float16", "bfloat16"}))
      ->capture_default_str();
  sub->add_option("--format", args->format, "Output format")
      ->check(CLI::IsMember({"safetensors", "npy"}))
      ->capture_default_str();
  sub->add_option("--shard", args->shard,
                  "Process only inputs whose index in the sorted list is I modulo N")
      ->type_name("I/N");
  sub->add_flag("--resume", args->resume,
                "Continue an interrupted run with the same arguments from OUTPUT.parts/");
  sub->add_flag("--overwrite", args->overwrite,
                "Replace an OUTPUT that exists but was not written by dinov2 extract (an output "
                "of an earlier run is replaced without it)");
  sub->add_flag("--ignore-orientation", args->ignore_orientation,
                "Keep the stored pixel order of photos with an EXIF orientation tag (as PIL's "
                "Image.open does) instead of turning them upright");
  sub->add_option("inputs", args->inputs, "Images, folders, @lists or WebDataset tar shards")
      ->required()
      ->type_name("INPUT");
  return {sub, [args] { return run_extract(*args); }};
}

}  // namespace dinov2::cli
