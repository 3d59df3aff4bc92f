// SPDX-License-Identifier: Apache-2.0
// `dinov2 index build`: a FAISS index over the CLS rows of extract outputs (Flat, IVF-Flat,
// IVF-PQ or HNSW; chosen from a memory budget unless named), trained on a sample and filled by
// streaming the files in blocks of rows. `dinov2 dedup`: near-duplicate groups by a cosine
// threshold, through such an index or an exact one. Both read every file's rows in order: row r
// of the index is row r of the files concatenated in the order given (as `dinov2 merge` writes).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/retrieval.hpp"
#include "feature_files.hpp"
#include "index_files.hpp"

namespace dinov2::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int64_t kBlockRows = 65536;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// Parses a size such as 512M, 4G, 1.5G or a plain byte count.
int64_t parse_bytes(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  if (unit == "K" || unit == "KiB") scale = 1024.0;
  if (unit == "M" || unit == "MiB") scale = 1024.0 * 1024;
  if (unit == "G" || unit == "GiB") scale = 1024.0 * 1024 * 1024;
  if (unit == "T" || unit == "TiB") scale = 1024.0 * 1024 * 1024 * 1024;
  if (used == 0 || scale == 0 || value <= 0) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: --memory-budget '{}': give a size such as 512M, 4G or 1.5G", text));
  }
  return static_cast<int64_t>(value * scale);
}

/// The CLS rows of the files, in order, read in blocks.
class Rows {
 public:
  explicit Rows(const std::vector<std::string>& inputs) {
    for (const std::string& path : feature_file_paths(inputs)) {
      files_.push_back(read_feature_file(path));
      readers_.push_back(std::make_unique<SafetensorsReader>(path));
      const TensorEntry& e = readers_.back()->entry("cls");
      if (e.shape.size() != 2 || (dim_ != 0 && e.shape[1] != dim_)) {
        throw InputError(fmt::format("dinov2: {}: `cls` is {} wide, the files before it {}", path,
                                     e.shape.size() == 2 ? e.shape[1] : -1, dim_));
      }
      dim_ = e.shape[1];
      first_.push_back(total_);
      total_ += e.shape[0];
    }
  }
  int64_t size() const { return total_; }
  int64_t dim() const { return dim_; }
  const std::vector<FeatureFile>& files() const { return files_; }
  const std::vector<int64_t>& first_rows() const { return first_; }

  /// Calls `f(first_row, block)` for every block of rows, in order.
  template <class F>
  void for_each_block(F&& f) const {
    for (size_t i = 0; i < readers_.size(); ++i) {
      const int64_t n = readers_[i]->entry("cls").shape[0];
      for (int64_t b = 0; b < n; b += kBlockRows) {
        const at::Tensor block = readers_[i]->read_rows("cls", b, std::min(n, b + kBlockRows));
        check_finite_rows(block, b, files_[i].path);
        f(first_[i] + b, block);
      }
    }
  }

  /// `count` rows spread evenly over all of them (every total/count-th row).
  at::Tensor sample(int64_t count) const {
    count = std::min(count, total_);
    at::Tensor out = at::empty({count, dim_}, at::kFloat);
    int64_t k = 0;
    for (size_t i = 0; i < readers_.size() && k < count; ++i) {
      const int64_t begin = first_[i], n = readers_[i]->entry("cls").shape[0];
      // Rows k with floor(k * total / count) inside this file, read as one span of the file.
      int64_t k_end = k;
      while (k_end < count && (k_end * total_) / count < begin + n) ++k_end;
      if (k_end == k) continue;
      const int64_t lo = (k * total_) / count - begin, hi = ((k_end - 1) * total_) / count - begin;
      const at::Tensor span = readers_[i]->read_rows("cls", lo, hi + 1).to(at::kFloat);
      for (int64_t j = k; j < k_end; ++j) out[j].copy_(span[(j * total_) / count - begin - lo]);
      k = k_end;
    }
    return out;
  }

  /// The rows `ids` (ascending, distinct), read a span of consecutive rows at a time.
  at::Tensor gather(const std::vector<int64_t>& ids) const {
    at::Tensor out = at::empty({static_cast<int64_t>(ids.size()), dim_}, at::kFloat);
    size_t k = 0;
    while (k < ids.size()) {
      const size_t i = file_of(ids[k]);
      const int64_t end_of_file = first_[i] + readers_[i]->entry("cls").shape[0];
      size_t m = k + 1;
      while (m < ids.size() && ids[m] == ids[m - 1] + 1 && ids[m] < end_of_file) ++m;
      out.slice(0, static_cast<int64_t>(k), static_cast<int64_t>(m))
          .copy_(readers_[i]->read_rows("cls", ids[k] - first_[i], ids[m - 1] + 1 - first_[i]));
      k = m;
    }
    return out;
  }

  /// The key of row r.
  const std::string& key(int64_t r) const {
    const size_t i = file_of(r);
    return files_[i].keys[static_cast<size_t>(r - first_[i])];
  }

 private:
  size_t file_of(int64_t r) const {
    return static_cast<size_t>(std::upper_bound(first_.begin(), first_.end(), r) - first_.begin() -
                               1);
  }
  std::vector<FeatureFile> files_;
  std::vector<std::unique_ptr<SafetensorsReader>> readers_;
  std::vector<int64_t> first_;
  int64_t total_ = 0, dim_ = 0;
};

// ---------------------------------------------------------------------------------------------
// dinov2 index build

struct BuildArgs {
  std::string output;
  std::string kind = "auto";
  std::string budget = "8G";
  int64_t nlist = 0, pq_m = 0, hnsw_m = 0, nprobe = 0, ef_search = 0, train_rows = 0;
  double target_recall = 0.95;
  bool overwrite = false;
  std::vector<std::string> inputs;
};

/// Recall@10 of `index` against `truth` (indices [Q, 10]) for `queries`.
double recall_at_10(const FaissIndex& index, const at::Tensor& queries, const at::Tensor& truth) {
  const at::Tensor got = index.search(queries, 10).indices;
  int64_t hits = 0;
  for (int64_t q = 0; q < truth.size(0); ++q) {
    hits += at::isin(got[q], truth[q]).sum().item<int64_t>();
  }
  return static_cast<double>(hits) / static_cast<double>(truth.numel());
}

/// The narrowest search breadth (nprobe or efSearch, doubling) whose recall@10 reaches `target`
/// on rows sampled from the data, against exact search over every row, as autofaiss tunes;
/// sets it on the index and returns what was measured.
json tune_search(FaissIndex& index, const Rows& rows, double target) {
  IndexSpec spec = index.spec();
  const bool ivf = spec.kind == IndexSpec::Kind::kIVFFlat || spec.kind == IndexSpec::Kind::kIVFPQ;
  const at::Tensor queries = rows.sample(256);
  CosineTopK exact(queries, 10);
  rows.for_each_block([&](int64_t first, const at::Tensor& block) { exact.add(block, first); });
  const at::Tensor truth = exact.result().indices;
  std::vector<int64_t> ladder;
  const int64_t top = ivf ? spec.nlist : 1024;
  for (int64_t b = ivf ? 1 : 16; b <= top; b *= 2) ladder.push_back(b);
  if (ladder.empty() || ladder.back() != top) ladder.push_back(top);
  double recall = 0;
  int64_t chosen = ladder.back();
  for (const int64_t b : ladder) {
    (ivf ? spec.nprobe : spec.ef_search) = b;
    index.set_search(spec);
    recall = recall_at_10(index, queries, truth);
    chosen = b;
    if (recall >= target) break;
  }
  const std::string what = ivf ? "nprobe" : "efSearch";
  if (recall < target) {
    std::cerr << fmt::format(
        "dinov2: warning: {} reaches recall@10 {:.3f} at most ({} {}), under the target {}{}\n",
        spec.factory(), recall, what, chosen, target,
        spec.kind == IndexSpec::Kind::kIVFPQ
            ? "; PQ codes are lossy: more bytes per vector (--pq-m, --memory-budget) or ivf-flat "
              "recall more"
            : "");
  }
  std::cerr << fmt::format(
      "dinov2 index build: search breadth {} {}: recall@10 {:.4f} on {} sampled rows against "
      "exact search (target {})\n",
      what, chosen, recall, queries.size(0), target);
  return {{"target_recall", target},
          {what, chosen},
          {"recall_at_10", recall},
          {"queries", queries.size(0)}};
}

int run_build(const BuildArgs& args) {
  if (!FaissIndex::available()) {
    throw InputError::invalid_argument(
        "dinov2: index build needs FAISS, and this build has none; reconfigure with "
        "-DDINOV2_WITH_FAISS=ON (Debian: libfaiss-dev)");
  }
  if (fs::exists(args.output) && !args.overwrite) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: --output {} exists; pass --overwrite to replace it", args.output));
  }
  const Rows rows(args.inputs);
  const int64_t n = rows.size(), d = rows.dim();
  if (n == 0) throw InputError::invalid_argument("dinov2: the inputs hold no rows to index");
  const int64_t budget = parse_bytes(args.budget);
  IndexSpec spec = args.kind == "auto" ? IndexSpec::for_budget(n, d, budget)
                                       : IndexSpec::of_kind(args.kind, n, d);
  if (args.nlist > 0) spec.nlist = args.nlist;
  if (args.pq_m > 0) spec.pq_m = args.pq_m;
  if (args.hnsw_m > 0) spec.hnsw_m = args.hnsw_m;
  spec.nprobe = args.nprobe;
  spec.ef_search = args.ef_search;
  const int64_t estimate = spec.memory_bytes(n, d);
  if (args.kind != "auto" && estimate > budget) {
    std::cerr << fmt::format(
        "dinov2: warning: {} over {} vectors needs about {} MB, over --memory-budget {}\n",
        spec.factory(), n, estimate >> 20, args.budget);
  }
  std::cerr << fmt::format(
      "dinov2 index build: {} over {} vectors of width {} (about {} MB){}\n", spec.to_string(), n,
      d, estimate >> 20,
      args.kind == "auto" ? fmt::format(", chosen for --memory-budget {}", args.budget) : "");
  FaissIndex index(spec, d);
  const auto t0 = Clock::now();
  double train_s = 0;
  if (!index.trained()) {
    const int64_t want = args.train_rows > 0 ? args.train_rows : spec.training_rows();
    const at::Tensor sample = rows.sample(want);
    std::cerr << fmt::format("dinov2 index build: training on {} rows\n", sample.size(0));
    index.train(sample);
    train_s = seconds_since(t0);
  }
  const auto t1 = Clock::now();
  Progress progress(n, 0, "rows");
  rows.for_each_block([&](int64_t, const at::Tensor& block) {
    index.add(block);
    progress.advance(block.size(0));
  });
  progress.finish();
  const double add_s = seconds_since(t1);
  json tuned;
  if (spec.kind != IndexSpec::Kind::kFlat && args.nprobe == 0 && args.ef_search == 0 &&
      args.target_recall > 0) {
    tuned = tune_search(index, rows, args.target_recall);
  }
  index.save(args.output);
  json files = json::array();
  const fs::path base = fs::absolute(args.output).parent_path();
  for (size_t i = 0; i < rows.files().size(); ++i) {
    files.push_back({{"path", fs::relative(fs::absolute(rows.files()[i].path), base).string()},
                     {"rows", rows.files()[i].rows},
                     {"first_row", rows.first_rows()[i]}});
  }
  const FeatureFile& first = rows.files().front();
  const json sidecar = {{"format", "dinov2-index"},
                        {"format_version", 1},
                        {"kind", spec.kind_name()},
                        {"factory", spec.factory()},
                        {"search", index.spec().to_string()},
                        {"tuned", tuned},
                        {"rows", n},
                        {"dim", d},
                        {"model", first.meta.value("model", json())},
                        {"recipe", first.meta.value("recipe", json())},
                        {"files", files}};
  write_file_atomically(index_sidecar(args.output), dump_json(sidecar, 2) + "\n");
  std::cerr << fmt::format(
      "dinov2 index build: wrote {} ({} MB) and {}: {} vectors; training {:.1f} s, adding "
      "{:.1f} s\n",
      args.output, fs::file_size(args.output) >> 20, index_sidecar(args.output), n, train_s, add_s);
  return kExitSuccess;
}

// ---------------------------------------------------------------------------------------------
// dinov2 dedup

struct DedupArgs {
  std::string output;
  std::string index;
  double threshold = 0.95;
  int k = 16;
  int64_t nprobe = 0, ef_search = 0;
  std::vector<std::string> inputs;
};

/// Union-find over row ids.
struct Groups {
  std::vector<int64_t> parent;
  explicit Groups(int64_t n) : parent(static_cast<size_t>(n)) {
    std::iota(parent.begin(), parent.end(), int64_t{0});
  }
  int64_t find(int64_t x) {
    while (parent[static_cast<size_t>(x)] != x) {
      parent[static_cast<size_t>(x)] = parent[static_cast<size_t>(parent[static_cast<size_t>(x)])];
      x = parent[static_cast<size_t>(x)];
    }
    return x;
  }
  void join(int64_t a, int64_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent[static_cast<size_t>(std::max(a, b))] = std::min(a, b);
  }
};

int run_dedup(const DedupArgs& args) {
  if (!(args.threshold > -1.0 && args.threshold <= 1.0)) {
    throw InputError::invalid_argument(fmt::format(
        "dinov2: --threshold {} is not a cosine similarity in (-1, 1]", args.threshold));
  }
  if (!FaissIndex::available()) {
    throw InputError::invalid_argument(
        "dinov2: dedup needs FAISS, and this build has none; reconfigure with "
        "-DDINOV2_WITH_FAISS=ON (Debian: libfaiss-dev)");
  }
  std::vector<std::string> inputs = args.inputs;
  std::optional<FaissIndex> index;
  if (!args.index.empty()) {
    const IndexFiles built = read_index_files(args.index);
    if (inputs.empty()) inputs = built.files;
    index = FaissIndex::load(args.index);
  }
  if (inputs.empty()) {
    throw InputError::invalid_argument("dinov2: dedup: give extract outputs, or --index");
  }
  const Rows rows(inputs);
  const int64_t n = rows.size();
  const auto t0 = Clock::now();
  if (!index) {
    index.emplace(rows.dim());  // exact
    rows.for_each_block([&](int64_t, const at::Tensor& block) { index->add(block); });
  } else if (index->size() != n || index->dim() != rows.dim()) {
    throw InputError(
        fmt::format("dinov2: the index {} holds {} vectors of width {}, the inputs {} of width {}",
                    args.index, index->size(), index->dim(), n, rows.dim()));
  }
  IndexSpec search = index->spec();
  if (args.nprobe > 0 || args.ef_search > 0) {  // otherwise the breadth stored in the index
    search.nprobe = args.nprobe;
    search.ef_search = args.ef_search;
    index->set_search(search);
    search = index->spec();
  }
  Groups groups(n);
  int64_t pairs = 0;
  Progress progress(n, 0, "rows");
  // IVF-PQ scores from lossy codes: its candidates are scored again exactly, from the rows.
  const bool rescore = search.kind == IndexSpec::Kind::kIVFPQ;
  const auto unit = [](const at::Tensor& x) {
    const at::Tensor f = x.to(at::kFloat);
    return f / f.norm(2, {1}, true).clamp_min(1e-12);
  };
  rows.for_each_block([&](int64_t first, const at::Tensor& block) {
    SearchResult r = index->search(block, args.k + 1);
    if (rescore && r.indices.numel() > 0) {
      std::vector<int64_t> ids(r.indices.data_ptr<int64_t>(),
                               r.indices.data_ptr<int64_t>() + r.indices.numel());
      ids.erase(std::remove(ids.begin(), ids.end(), int64_t{-1}), ids.end());
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      const at::Tensor candidates = unit(rows.gather(ids));
      const at::Tensor where =
          at::searchsorted(at::tensor(ids, at::kLong), r.indices.clamp_min(0).contiguous());
      const at::Tensor exact =
          (unit(block).unsqueeze(1) *
           candidates.index_select(0, where.flatten()).view({where.size(0), where.size(1), -1}))
              .sum(2);
      r.scores = at::where(r.indices.ge(0), exact, at::full_like(exact, -2.0)).contiguous();
    }
    const float* score = r.scores.data_ptr<float>();
    const int64_t* id = r.indices.data_ptr<int64_t>();
    const int64_t width = r.scores.size(1);
    for (int64_t q = 0; q < r.scores.size(0); ++q) {
      for (int64_t j = 0; j < width; ++j) {
        const int64_t other = id[q * width + j];
        if (other < 0 || other == first + q || score[q * width + j] < args.threshold) continue;
        groups.join(first + q, other);
        ++pairs;
      }
    }
    progress.advance(block.size(0));
  });
  progress.finish();
  std::map<int64_t, std::vector<int64_t>> members;
  for (int64_t r = 0; r < n; ++r) members[groups.find(r)].push_back(r);
  json out_groups = json::array();
  int64_t duplicates = 0;
  for (const auto& [root, rows_of] : members) {
    if (rows_of.size() < 2) continue;
    json keys = json::array();
    for (const int64_t r : rows_of) keys.push_back(rows.key(r));
    out_groups.push_back({{"keep", rows.key(rows_of.front())}, {"rows", rows_of}, {"keys", keys}});
    duplicates += static_cast<int64_t>(rows_of.size()) - 1;
  }
  const json report = {{"format", "dinov2-dedup"},
                       {"threshold", args.threshold},
                       {"k", args.k},
                       {"index", args.index.empty() ? "exact" : search.to_string()},
                       {"rows", n},
                       {"groups", out_groups.size()},
                       {"duplicates", duplicates},
                       {"kept", n - duplicates},
                       {"duplicate_groups", out_groups}};
  write_file_atomically(args.output, dump_json(report, 2) + "\n");
  std::cerr << fmt::format(
      "dinov2 dedup: {} rows, {} groups of near duplicates (cosine >= {}; {} pairs seen), {} "
      "duplicates to drop, {} kept; {:.1f} s; wrote {}\n",
      n, out_groups.size(), args.threshold, pairs, duplicates, n - duplicates, seconds_since(t0),
      args.output);
  return kExitSuccess;
}

}  // namespace

Command register_index(CLI::App& app) {
  auto args = std::make_shared<BuildArgs>();
  CLI::App* index = app.add_subcommand("index", "Build FAISS indexes over extract outputs");
  index->require_subcommand(1);
  CLI::App* sub = index->add_subcommand(
      "build",
      "Build a FAISS index (Flat, IVF-Flat, IVF-PQ or HNSW) over the CLS rows of "
      "extract outputs");
  sub->footer(
      "Row r of the index is row r of the inputs concatenated in the order given (a folder: its "
      ".safetensors files, sorted). --kind auto picks the kind from --memory-budget: exact Flat "
      "up to 20,000 rows, then IVF-Flat, then IVF-PQ with the largest codes that fit (HNSW only "
      "when asked for). IVF kinds train on rows spread evenly over the inputs, then every "
      "row is added in blocks; the search breadth is then tuned to --target-recall. Writes INDEX "
      "(FAISS's own format) and INDEX.json (the files, the "
      "kind, the model); `dinov2 search --index INDEX` and `dinov2 dedup --index INDEX` read "
      "them. docs/SCALE.md has measurements.");
  sub->add_option("--output,-o", args->output, "The index file")->required()->type_name("INDEX");
  sub->add_option("--kind", args->kind, "auto, flat, ivf-flat, ivf-pq or hnsw")
      ->check(CLI::IsMember({"auto", "flat", "ivf-flat", "ivf-pq", "hnsw"}))
      ->capture_default_str();
  sub->add_option("--memory-budget", args->budget,
                  "Memory the index may take (512M, 4G, ...); picks the kind with --kind auto")
      ->capture_default_str();
  sub->add_option("--nlist", args->nlist, "IVF clusters (default: about 2 sqrt(rows))")
      ->check(CLI::PositiveNumber);
  sub->add_option("--pq-m", args->pq_m, "IVF-PQ bytes per vector (must divide the width)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--hnsw-m", args->hnsw_m, "HNSW links per node (default 32)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--nprobe", args->nprobe,
                  "IVF clusters visited per query, stored in the index (default nlist/64, >= 8)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--ef-search", args->ef_search, "HNSW search breadth stored (default 128)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--train-rows", args->train_rows, "Rows to train on (default 40 per cluster)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--target-recall", args->target_recall,
                  "Without --nprobe/--ef-search: the narrowest search reaching this recall@10 on "
                  "256 sampled rows, against exact search, is stored (0: the defaults)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  sub->add_flag("--overwrite", args->overwrite, "Replace INDEX if it exists");
  sub->add_option("inputs", args->inputs, "Outputs of dinov2 extract, or folders of them")
      ->required()
      ->type_name("FEATURES");
  return {index, [args] { return run_build(*args); }};
}

Command register_dedup(CLI::App& app) {
  auto args = std::make_shared<DedupArgs>();
  CLI::App* sub = app.add_subcommand(
      "dedup", "Find groups of near-duplicate images by the cosine similarity of their CLS rows");
  sub->footer(
      "Each row is searched for its --k nearest rows; pairs at or above --threshold are joined "
      "into groups (transitively). The report lists each group's rows and keys and the one to "
      "keep (the first in row order). Without --index the search is exact (a flat index built in "
      "memory, 4 x width bytes a row); with an index from `dinov2 index build` it is as fast and "
      "as approximate as that index's search (IVF-PQ candidates are scored again exactly from "
      "the rows).");
  sub->add_option("--output,-o", args->output, "The JSON report")->required()->type_name("FILE");
  sub->add_option("--threshold", args->threshold,
                  "Cosine similarity at which two rows are "
                  "duplicates")
      ->capture_default_str();
  sub->add_option("--k,-k", args->k, "Neighbours looked at per row")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--index", args->index,
                  "An index from `dinov2 index build` (its files are the "
                  "inputs unless given)")
      ->type_name("INDEX");
  sub->add_option("--nprobe", args->nprobe,
                  "IVF clusters visited per query (default: the index's)");
  sub->add_option("--ef-search", args->ef_search, "HNSW search breadth (default: the index's)");
  sub->add_option("inputs", args->inputs, "Outputs of dinov2 extract, or folders of them")
      ->type_name("FEATURES");
  return {sub, [args] { return run_dedup(*args); }};
}

}  // namespace dinov2::cli
