// SPDX-License-Identifier: Apache-2.0
// The index measurements of docs/SCALE.md: build time, size, queries/s and recall@10 against
// exact search of each FAISS index kind (dinov2::FaissIndex, as `dinov2 index build` makes it)
// over N clustered unit vectors.
//
//   dinov2_index_bench [--rows 1000000] [--dim 384] [--clusters 1000] [--noise 0.03]
//                      [--queries 1000] [--seed 0] [--kinds flat,ivf-flat,ivf-pq,hnsw]
//
// The data: `clusters` centres drawn from N(0, I) and normalised; each row is a centre chosen
// uniformly at random plus N(0, noise^2 I), then normalised; queries are drawn the same way.
// Prints one JSON object per measured setting on stdout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dinov2/retrieval.hpp"

namespace {

using dinov2::FaissIndex;
using dinov2::IndexSpec;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// Resident memory of this process now, in MB (VmRSS).
double rss_mb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

at::Tensor clustered(const at::Tensor& centres, int64_t n, double noise, at::Generator& gen) {
  const at::Tensor which = at::randint(centres.size(0), {n}, gen);
  at::Tensor x = centres.index_select(0, which) +
                 noise * at::randn({n, centres.size(1)}, gen, at::TensorOptions(at::kFloat));
  return x / x.norm(2, {1}, true);
}

double recall_at(const at::Tensor& got, const at::Tensor& truth, int64_t k) {
  const int64_t q = truth.size(0);
  int64_t hits = 0;
  for (int64_t i = 0; i < q; ++i) {
    std::set<int64_t> want;
    for (int64_t j = 0; j < k; ++j) want.insert(truth[i][j].item<int64_t>());
    for (int64_t j = 0; j < std::min<int64_t>(k, got.size(1)); ++j) {
      hits += want.count(got[i][j].item<int64_t>()) ? 1 : 0;
    }
  }
  return static_cast<double>(hits) / static_cast<double>(q * k);
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt = {{"--rows", "1000000"},
                                            {"--dim", "384"},
                                            {"--clusters", "1000"},
                                            {"--noise", "0.03"},
                                            {"--queries", "1000"},
                                            {"--seed", "0"},
                                            {"--kinds", "flat,ivf-flat,ivf-pq,hnsw"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!opt.count(argv[i])) {
      std::cerr << "dinov2_index_bench: unknown option " << argv[i] << "\n";
      return 2;
    }
    opt[argv[i]] = argv[i + 1];
  }
  const int64_t n = std::stoll(opt["--rows"]), d = std::stoll(opt["--dim"]);
  const int64_t q = std::stoll(opt["--queries"]);
  at::Generator gen = at::detail::createCPUGenerator(std::stoull(opt["--seed"]));
  at::Tensor centres = at::randn({std::stoll(opt["--clusters"]), d}, gen, at::kFloat);
  centres = centres / centres.norm(2, {1}, true);
  const double noise = std::stod(opt["--noise"]);
  const at::Tensor data = clustered(centres, n, noise, gen);
  const at::Tensor queries = clustered(centres, q, noise, gen);
  std::cerr << fmt::format(
      "dinov2_index_bench: {} rows x {} ({} clusters, noise {}), {} queries, "
      "{} threads\n",
      n, d, centres.size(0), noise, q, at::get_num_threads());
  const auto emit = [](const nlohmann::json& row) { std::cout << row.dump() << std::endl; };

  // Exact search: the ground truth and the baseline queries/s.
  FaissIndex exact(d);
  auto t = Clock::now();
  for (int64_t b = 0; b < n; b += 65536) exact.add(data.slice(0, b, std::min(n, b + 65536)));
  const double exact_build = since(t);
  t = Clock::now();
  const dinov2::SearchResult truth = exact.search(queries, 10);
  const double exact_qps = static_cast<double>(q) / since(t);
  emit({{"kind", "flat"},
        {"index", "Flat"},
        {"build_s", exact_build},
        {"train_s", 0},
        {"bytes", exact.serialized_bytes()},
        {"estimate_bytes", IndexSpec{}.memory_bytes(n, d)},
        {"qps", exact_qps},
        {"recall_at_10", 1.0},
        {"speedup", 1.0}});

  std::stringstream kinds(opt["--kinds"]);
  for (std::string kind; std::getline(kinds, kind, ',');) {
    if (kind == "flat") continue;
    IndexSpec spec = IndexSpec::of_kind(kind, n, d);
    std::vector<IndexSpec> breadths;
    if (kind == "hnsw") {
      for (int64_t ef : {16, 32, 64, 128}) {
        IndexSpec s = spec;
        s.ef_search = ef;
        breadths.push_back(s);
      }
    } else {
      for (int64_t p : {4, 8, 16, 32, 64}) {
        IndexSpec s = spec;
        s.nprobe = p;
        breadths.push_back(s);
      }
    }
    const double rss_before = rss_mb();
    FaissIndex index(spec, d);
    t = Clock::now();
    double train_s = 0;
    if (!index.trained()) {
      const int64_t rows = std::min(n, spec.training_rows());
      index.train(data.slice(0, 0, n).index_select(
          0, at::arange(0, n, std::max<int64_t>(1, n / rows), at::kLong).slice(0, 0, rows)));
      train_s = since(t);
    }
    for (int64_t b = 0; b < n; b += 65536) index.add(data.slice(0, b, std::min(n, b + 65536)));
    const double build_s = since(t);
    const double rss_after = rss_mb();
    for (const IndexSpec& s : breadths) {
      index.set_search(s);
      t = Clock::now();
      const dinov2::SearchResult r = index.search(queries, 10);
      const double qps = static_cast<double>(q) / since(t);
      emit({{"kind", kind},
            {"index", s.to_string()},
            {"build_s", build_s},
            {"train_s", train_s},
            {"bytes", index.serialized_bytes()},
            {"estimate_bytes", spec.memory_bytes(n, d)},
            {"rss_growth_mb", rss_after - rss_before},
            {"qps", qps},
            {"recall_at_10", recall_at(r.indices, truth.indices, 10)},
            {"speedup", qps / exact_qps}});
    }
  }
  return 0;
}
