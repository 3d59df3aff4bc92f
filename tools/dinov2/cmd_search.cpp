// SPDX-License-Identifier: Apache-2.0
// `dinov2 search`: the gallery images most similar to each query image, by cosine similarity of
// the CLS features, against a file written by `dinov2 extract`.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <functional>

#include <filesystem>
#include <iostream>
#include <memory>

#include "analysis.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "dinov2/retrieval.hpp"
#include "feature_files.hpp"
#include "index_files.hpp"

namespace dinov2::cli {

namespace {

using json = nlohmann::json;

struct SearchArgs {
  ModelArgs model;
  std::string gallery;
  int k = 5;
  std::string recipe;
  std::string index;
  int64_t nprobe = 0, ef_search = 0;
  bool json_output = false;
  std::vector<std::string> queries;
};

constexpr int64_t kRowsPerRead = 65536;

/// A metadata entry of the gallery parsed as JSON (extract stores non-strings as JSON text).
json meta_json(const TensorMetadata& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) return json();
  try {
    return json::parse(it->second);
  } catch (const json::exception&) {
    return json(it->second);
  }
}

/// Prints the hits of each query (text or --json); exit code 3 when some queries were unreadable.
int report_results(const SearchArgs& args, const Embeddings& queries, const SearchResult& result,
                   const std::function<std::string(int64_t)>& gallery_path) {
  json report = json::array();
  for (size_t q = 0; q < queries.paths.size(); ++q) {
    json hits = json::array();
    if (!args.json_output) std::cout << fmt::format("query: {}\n", queries.paths[q]);
    for (int64_t j = 0; j < result.scores.size(1); ++j) {
      const int64_t row = result.indices[static_cast<int64_t>(q)][j].item<int64_t>();
      const double score = result.scores[static_cast<int64_t>(q)][j].item<double>();
      if (args.json_output) {
        hits.push_back(
            {{"rank", j + 1}, {"row", row}, {"score", score}, {"path", gallery_path(row)}});
      } else {
        std::cout << fmt::format("  {:>3}  {:.6f}  {}\n", j + 1, score, gallery_path(row));
      }
    }
    report.push_back({{"query", queries.paths[q]}, {"results", hits}});
  }
  if (args.json_output) std::cout << dump_json(report, 2) << "\n";
  if (!queries.failed.empty()) {
    std::cerr << fmt::format("dinov2: {} query image(s) could not be read\n",
                             queries.failed.size());
    return kExitInputsFailed;
  }
  return kExitSuccess;
}

/// --index INDEX from `dinov2 index build`: the rows of the files its INDEX.json names.
int run_search_built_index(const SearchArgs& args) {
  const IndexFiles built = read_index_files(args.index);
  FaissIndex index = FaissIndex::load(args.index);
  if (index.size() != built.rows) {
    throw InputError(fmt::format("dinov2: the index {} holds {} vectors, its {} says {}",
                                 args.index, index.size(), index_sidecar(args.index), built.rows));
  }
  if (args.nprobe > 0 || args.ef_search > 0) {
    IndexSpec breadth = index.spec();
    breadth.nprobe = args.nprobe;
    breadth.ef_search = args.ef_search;
    index.set_search(breadth);
  }
  std::vector<std::string> paths;
  std::string recipe_text = args.recipe;
  for (const std::string& file : built.files) {
    const FeatureFile f = read_feature_file(file);
    paths.insert(paths.end(), f.paths.begin(), f.paths.end());
    if (recipe_text.empty()) recipe_text = f.meta.value("recipe", "square518");
  }
  if (static_cast<int64_t>(paths.size()) != index.size()) {
    throw InputError(fmt::format(
        "dinov2: the files named by {} hold {} rows but the index {}; rebuild the index",
        index_sidecar(args.index), paths.size(), index.size()));
  }
  const Model model = args.model.load();
  if (model.info().embed_dim != index.dim()) {
    throw InputError(
        fmt::format("dinov2: the index holds {}-wide vectors but --model {} gives "
                    "{}-wide ones; use the model the gallery was extracted with",
                    index.dim(), args.model.path, model.info().embed_dim));
  }
  const std::string variant = built.model.is_object() ? built.model.value("variant", "") : "";
  if (!variant.empty() && variant != model.info().variant) {
    throw InputError(
        fmt::format("dinov2: the index was built from {} features but --model {} is "
                    "{}",
                    variant, args.model.path, model.info().variant));
  }
  std::cerr << fmt::format("dinov2 search: FAISS index {} over {} vectors ({} files)\n",
                           index.spec().to_string(), index.size(), built.files.size());
  const Preprocessor pre = model_preprocessor(model, parse_recipe(recipe_text));
  const Embeddings queries = embed_images(model, pre, collect_inputs(args.queries), 8);
  if (queries.paths.empty()) {
    std::cerr << "dinov2: none of the query images could be read\n";
    return queries.failed.empty() ? kExitUsage : kExitInputsFailed;
  }
  const SearchResult result = index.search(queries.cls, args.k);
  return report_results(args, queries, result, [&](int64_t row) {
    return row >= 0 && row < static_cast<int64_t>(paths.size()) ? paths[static_cast<size_t>(row)]
                                                                : fmt::format("row {}", row);
  });
}

int run_search(const SearchArgs& args) {
  if (!args.index.empty() && !FaissIndex::available()) {
    throw InputError::invalid_argument(
        "dinov2: --index needs FAISS, and this build has no FAISS support; reconfigure "
        "with -DDINOV2_WITH_FAISS=ON (needs FAISS, e.g. Debian's libfaiss-dev) or leave "
        "out --index for the exact search");
  }
  // An index from `dinov2 index build` names its files; otherwise --gallery is the one file.
  const bool built_index = !args.index.empty() && std::filesystem::exists(args.index) &&
                           std::filesystem::exists(index_sidecar(args.index));
  if (args.gallery.empty() && !built_index) {
    throw InputError::invalid_argument(
        "dinov2: give --gallery FEATS.safetensors, or --index INDEX built by `dinov2 index "
        "build` (whose INDEX.json names the files)");
  }
  if (built_index) return run_search_built_index(args);
  const SafetensorsReader gallery(args.gallery);
  if (!gallery.contains("cls") || gallery.entry("cls").shape.size() != 2) {
    throw InputError(fmt::format(
        "dinov2: {} has no [N, D] tensor `cls`; give a file written by `dinov2 extract`",
        args.gallery));
  }
  const TensorEntry& cls = gallery.entry("cls");
  const int64_t rows = cls.shape[0];
  const json paths = meta_json(gallery.metadata(), "paths");
  const json gallery_model = meta_json(gallery.metadata(), "model");

  const Model model = args.model.load();
  const ModelInfo& info = model.info();
  if (cls.shape[1] != info.embed_dim) {
    throw InputError(fmt::format(
        "dinov2: the gallery {} holds {}-wide features but --model {} gives {}-wide ones; use "
        "the model the gallery was extracted with",
        args.gallery, cls.shape[1], args.model.path, info.embed_dim));
  }
  if (gallery_model.is_object()) {
    const std::string variant = gallery_model.value("variant", "");
    if (!variant.empty() && variant != info.variant) {
      throw InputError(fmt::format(
          "dinov2: the gallery {} was extracted with {} but --model {} is {}; similarities "
          "between features of different models mean nothing",
          args.gallery, variant, args.model.path, info.variant));
    }
    const std::string sha = gallery_model.value("weights_sha256", "");
    if (!sha.empty() && !info.weights_sha256.empty() && sha != info.weights_sha256) {
      std::cerr << fmt::format(
          "dinov2: warning: the gallery was extracted from other weights of {} (sha256 {}...) "
          "than --model ({}...)\n",
          info.variant, sha.substr(0, 12), info.weights_sha256.substr(0, 12));
    }
  }
  // Queries go through the gallery's recipe unless told otherwise, so that both sides match.
  std::string recipe_text = args.recipe;
  if (recipe_text.empty()) {
    const auto it = gallery.metadata().find("recipe");
    recipe_text = it != gallery.metadata().end() ? it->second : "square518";
  }
  const Preprocessor pre = model_preprocessor(model, parse_recipe(recipe_text));
  const Embeddings queries = embed_images(model, pre, collect_inputs(args.queries), 8);
  if (queries.paths.empty()) {
    std::cerr << "dinov2: none of the query images could be read\n";
    return queries.failed.empty() ? kExitUsage : kExitInputsFailed;
  }

  SearchResult result;
  if (!args.index.empty()) {
    if (std::filesystem::exists(args.index)) {
      FaissIndex index = FaissIndex::load(args.index);
      if (index.size() != rows || index.dim() != cls.shape[1]) {
        throw InputError(fmt::format(
            "dinov2: the index {} holds {} vectors of width {} but the gallery has {} of width "
            "{}; delete the index to rebuild it",
            args.index, index.size(), index.dim(), rows, cls.shape[1]));
      }
      result = index.search(queries.cls, args.k);
    } else {
      FaissIndex index(cls.shape[1]);
      for (int64_t b = 0; b < rows; b += kRowsPerRead) {
        const at::Tensor chunk = gallery.read_rows("cls", b, std::min(rows, b + kRowsPerRead));
        check_finite_rows(chunk, b, "the gallery " + args.gallery);
        index.add(chunk);
      }
      index.save(args.index);
      std::cerr << fmt::format("dinov2: wrote a FAISS index of {} vectors to {}\n", rows,
                               args.index);
      result = index.search(queries.cls, args.k);
    }
  } else {
    CosineTopK search(queries.cls, args.k);
    for (int64_t b = 0; b < rows; b += kRowsPerRead) {
      const at::Tensor chunk = gallery.read_rows("cls", b, std::min(rows, b + kRowsPerRead));
      check_finite_rows(chunk, b, "the gallery " + args.gallery);
      search.add(chunk, b);
    }
    result = search.result();
  }

  auto gallery_path = [&](int64_t row) -> std::string {
    if (paths.is_array() && row >= 0 && row < static_cast<int64_t>(paths.size()) &&
        paths[static_cast<size_t>(row)].is_string()) {
      return paths[static_cast<size_t>(row)].get<std::string>();
    }
    return fmt::format("row {}", row);
  };
  return report_results(args, queries, result, gallery_path);
}

}  // namespace

Command register_search(CLI::App& app) {
  auto args = std::make_shared<SearchArgs>();
  CLI::App* sub = app.add_subcommand(
      "search", "Find the gallery images most similar to query images (cosine of CLS features)");
  sub->footer(
      "GALLERY is a safetensors file written by `dinov2 extract` with the same model; its `cls` "
      "rows are compared with the CLS features of each QUERY (exactly, in blocks of 65536 "
      "rows), and results print the gallery paths from its metadata. Queries use the gallery's "
      "recipe unless --recipe is given. --index FILE searches a FAISS index instead: one built by "
      "`dinov2 index build` (Flat, IVF-Flat, IVF-PQ or HNSW, over the files its FILE.json names; "
      "no --gallery needed), or a flat one built from --gallery and saved when FILE does not "
      "exist (builds with DINOV2_WITH_FAISS only). Exit code 3 when some queries could not be "
      "read.");
  args->model.add_to(sub);
  sub->add_option("--gallery,-g", args->gallery,
                  "Features written by `dinov2 extract` (not needed with an --index from `dinov2 "
                  "index build`)")
      ->check(CLI::ExistingFile)
      ->type_name("FEATS.safetensors");
  sub->add_option("--k,-k", args->k, "Neighbours per query")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--recipe", args->recipe,
                  std::string(recipe_help()) + ". Default: the gallery's recipe");
  sub->add_option("--index", args->index,
                  "FAISS index file: loaded when it exists, else built from the gallery and saved")
      ->type_name("FILE");
  sub->add_option("--nprobe", args->nprobe, "IVF clusters visited per query (default: the index's)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--ef-search", args->ef_search, "HNSW search breadth (default: the index's)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--json", args->json_output, "Print the results as JSON");
  sub->add_option("queries", args->queries, "Query images, folders or @lists")
      ->required()
      ->type_name("QUERY");
  return {sub, [args] { return run_search(*args); }};
}

}  // namespace dinov2::cli
