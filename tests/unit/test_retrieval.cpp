// SPDX-License-Identifier: Apache-2.0
// Cosine top-k search against brute force in NumPy (tests/refgen/analysis_refs.py: float64
// similarities of every query with every gallery row, sorted).
//
// Tolerance: the library computes in float32; similarities of 32-wide unit vectors then differ
// from float64 by a few 1e-7 (measured 1.1e-7), so scores must agree to 1e-5. Indices must be equal
// wherever the reference's neighbouring scores are more than 1e-5 apart (a closer pair could swap).
#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>

#include "dinov2/error.hpp"
#include "dinov2/retrieval.hpp"
#include "support.hpp"

using dinov2::test::data_path;
using dinov2::test::max_abs_diff;

namespace {

constexpr double kScoreTol = 1e-5;

const at::Tensor& reference(const std::string& name) {
  static const auto r = dinov2::test::load_tensors(data_path("analysis_refs.pt"));
  const auto it = r.find(name);
  if (it == r.end()) throw std::runtime_error("no reference tensor " + name);
  return it->second;
}

/// Checks a result against the first k reference neighbours.
void check_against_reference(const dinov2::SearchResult& r, int64_t k) {
  const at::Tensor scores = reference("retrieval/scores").slice(1, 0, k);
  const at::Tensor indices = reference("retrieval/indices").slice(1, 0, k);
  REQUIRE(r.scores.sizes() == scores.sizes());
  REQUIRE(r.indices.sizes() == indices.sizes());
  CHECK(r.scores.scalar_type() == at::kFloat);
  CHECK(r.indices.scalar_type() == at::kLong);
  CHECK(max_abs_diff(r.scores, scores) < kScoreTol);
  const at::Tensor all = reference("retrieval/all_scores");
  for (int64_t q = 0; q < scores.size(0); ++q) {
    for (int64_t j = 0; j < k; ++j) {
      const double s = scores[q][j].item<double>();
      // Any row whose true score is within the tolerance may legitimately take this place.
      const int64_t near = all[q].sub(s).abs().lt(kScoreTol).sum().item<int64_t>();
      if (near == 1) {
        CHECK(r.indices[q][j].item<int64_t>() == indices[q][j].item<int64_t>());
      }
    }
  }
}

}  // namespace

TEST_CASE("cosine_top_k finds the brute-force nearest neighbours", "[retrieval][parity]") {
  check_against_reference(
      dinov2::cosine_top_k(reference("retrieval/queries"), reference("retrieval/gallery"), 10), 10);
}

TEST_CASE("cosine_top_k gives the same answer in small chunks", "[retrieval]") {
  const auto whole =
      dinov2::cosine_top_k(reference("retrieval/queries"), reference("retrieval/gallery"), 5);
  const auto chunked =
      dinov2::cosine_top_k(reference("retrieval/queries"), reference("retrieval/gallery"), 5, 7);
  CHECK(chunked.indices.equal(whole.indices));
  CHECK(max_abs_diff(chunked.scores, whole.scores) < 1e-6);
  check_against_reference(chunked, 5);
}

TEST_CASE("CosineTopK merges gallery pieces with their offsets", "[retrieval]") {
  const at::Tensor g = reference("retrieval/gallery");
  dinov2::CosineTopK search(reference("retrieval/queries"), 10);
  search.add(g.slice(0, 0, 333), 0);
  search.add(g.slice(0, 333, 333), 333);  // an empty piece is allowed
  search.add(g.slice(0, 333, 1000).to(at::kHalf).to(at::kFloat), 333, 100);
  CHECK(search.gallery_size() == 1000);
  const auto r = search.result();
  // The second piece went through float16, so allow its rounding (about 1e-3 relative).
  CHECK(max_abs_diff(r.scores, reference("retrieval/scores")) < 2e-3);
}

TEST_CASE("cosine_top_k returns the whole gallery when k exceeds it", "[retrieval]") {
  const at::Tensor g = reference("retrieval/gallery").slice(0, 0, 3);
  const auto r = dinov2::cosine_top_k(reference("retrieval/queries"), g, 10);
  REQUIRE(r.scores.sizes() == at::IntArrayRef({7, 3}));
  // Sorted, best first, and each row is a permutation of the three gallery rows.
  CHECK(r.scores.slice(1, 0, 2).ge(r.scores.slice(1, 1, 3)).all().item<bool>());
  CHECK(std::get<0>(r.indices.sort(1)).equal(at::arange(3, at::kLong).expand({7, 3})));
  dinov2::CosineTopK empty(reference("retrieval/queries"), 3);
  CHECK(empty.result().scores.sizes() == at::IntArrayRef({7, 0}));
}

TEST_CASE("exact search refuses bad arguments with dinov2 errors", "[retrieval][errors]") {
  const at::Tensor q = reference("retrieval/queries");
  CHECK_THROWS_AS(dinov2::cosine_top_k(q, at::zeros({5, 31}), 3), dinov2::InputError);
  CHECK_THROWS_AS(dinov2::cosine_top_k(q, reference("retrieval/gallery"), 0), dinov2::Error);
  CHECK_THROWS_AS(dinov2::cosine_top_k(at::zeros({32}), reference("retrieval/gallery"), 1),
                  dinov2::InputError);
  CHECK_THROWS_AS(dinov2::cosine_top_k(q, at::zeros({5, 32}, at::kLong), 1), dinov2::InputError);
}

TEST_CASE("FaissIndex agrees with brute force and survives save and load",
          "[retrieval][faiss][parity]") {
  if (!dinov2::FaissIndex::available()) {
    DINOV2_SKIP("this build has no FAISS (configure with -DDINOV2_WITH_FAISS=ON)");
  }
  dinov2::FaissIndex index(32);
  index.add(reference("retrieval/gallery").slice(0, 0, 600));
  index.add(reference("retrieval/gallery").slice(0, 600, 1000));
  CHECK(index.size() == 1000);
  CHECK(index.dim() == 32);
  check_against_reference(index.search(reference("retrieval/queries"), 10), 10);

  const std::string path = data_path("analysis_test.faiss");
  index.save(path);
  const auto loaded = dinov2::FaissIndex::load(path);
  CHECK(loaded.size() == 1000);
  check_against_reference(loaded.search(reference("retrieval/queries"), 4), 4);
  std::filesystem::remove(path);
  CHECK_THROWS_AS(dinov2::FaissIndex::load(path), dinov2::InputError);
  CHECK_THROWS_AS(index.search(at::zeros({2, 31}), 3), dinov2::InputError);
}

TEST_CASE("FaissIndex says how to enable FAISS in a build without it", "[retrieval][faiss]") {
  if (dinov2::FaissIndex::available()) DINOV2_SKIP("this build has FAISS");
  CHECK_THROWS_WITH(dinov2::FaissIndex(32), dinov2::test::ContainsSubstring("DINOV2_WITH_FAISS"));
}

TEST_CASE("IndexSpec names FAISS factories and picks a kind from a memory budget",
          "[retrieval][faiss]") {
  using dinov2::IndexSpec;
  using Kind = IndexSpec::Kind;
  CHECK(IndexSpec::nlist_for(1000000) == 2048);  // 2 sqrt(n) = 2000 -> 2048
  CHECK(IndexSpec::nlist_for(1000) == 16);       // 64, halved until 40 vectors train each
  CHECK(IndexSpec::nlist_for(100) == 2);
  const IndexSpec pq = IndexSpec::of_kind("ivf-pq", 1000000, 384);
  CHECK(pq.factory() == "IVF2048,PQ64");
  CHECK(pq.to_string() == "IVF2048,PQ64 nprobe=32");
  CHECK(pq.training_rows() == 81920);
  CHECK(IndexSpec::of_kind("hnsw", 10, 384).to_string() == "HNSW32,Flat efSearch=128");
  CHECK(IndexSpec::of_kind("ivf-pq", 1000000, 1536).pq_m == 64);
  CHECK(IndexSpec::of_kind("ivf-pq", 1000000, 1000).pq_m == 8);
  CHECK_THROWS_AS(IndexSpec::of_kind("lsh", 10, 384), dinov2::InputError);

  const int64_t n = 1000000, d = 384, mb = 1 << 20;
  CHECK(IndexSpec::for_budget(10000, d, 64 * mb).kind == Kind::kFlat);
  CHECK(IndexSpec::for_budget(n, d, 2048 * mb).kind == Kind::kIVFFlat);  // never HNSW
  CHECK(IndexSpec::for_budget(n, d, 1600 * mb).kind == Kind::kIVFFlat);
  CHECK(IndexSpec::for_budget(n, d, 1400 * mb).kind == Kind::kIVFPQ);
  CHECK(IndexSpec::of_kind("hnsw", n, d).memory_bytes(n, d) == 1816000000);
  const IndexSpec small = IndexSpec::for_budget(n, d, 100 * mb);
  CHECK(small.kind == Kind::kIVFPQ);
  CHECK(small.pq_m == 64);
  CHECK(small.memory_bytes(n, d) <= 100 * mb);
  CHECK(IndexSpec::for_budget(n, d, 20 * mb).pq_m == 8);
  CHECK_THROWS_WITH(IndexSpec::for_budget(n, d, 5 * mb),
                    dinov2::test::ContainsSubstring("the smallest, IVF2048,PQ4"));
}

TEST_CASE("FaissIndex kinds: IVF-Flat, IVF-PQ and HNSW train, search, save and load",
          "[retrieval][faiss][parity]") {
  if (!dinov2::FaissIndex::available()) {
    DINOV2_SKIP("this build has no FAISS (configure with -DDINOV2_WITH_FAISS=ON)");
  }
  using dinov2::IndexSpec;
  const at::Tensor gallery = reference("retrieval/gallery");  // 1000 x 32
  const at::Tensor queries = reference("retrieval/queries");
  const std::string path = data_path("analysis_kinds.faiss");

  // IVF-Flat visiting every list is exact.
  IndexSpec ivf = IndexSpec::of_kind("ivf-flat", 1000, 32);
  REQUIRE(ivf.nlist == 16);
  ivf.nprobe = 16;
  dinov2::FaissIndex index(ivf, 32);
  CHECK_FALSE(index.trained());
  CHECK_THROWS_WITH(index.add(gallery), dinov2::test::ContainsSubstring("must be trained"));
  CHECK_THROWS_WITH(index.train(gallery.slice(0, 0, 8)),
                    dinov2::test::ContainsSubstring("at least 16 training vectors"));
  index.train(gallery);
  index.add(gallery);
  check_against_reference(index.search(queries, 10), 10);
  index.save(path);
  const auto loaded = dinov2::FaissIndex::load(path);
  CHECK(loaded.spec().to_string() == "IVF16,Flat nprobe=16");
  check_against_reference(loaded.search(queries, 10), 10);

  // HNSW with a wide search finds the exact neighbours of this small gallery.
  IndexSpec hnsw = IndexSpec::of_kind("hnsw", 1000, 32);
  hnsw.ef_search = 512;
  dinov2::FaissIndex graph(hnsw, 32);
  CHECK(graph.trained());
  graph.add(gallery);
  check_against_reference(graph.search(queries, 4), 4);
  graph.save(path);
  CHECK(dinov2::FaissIndex::load(path).spec().to_string() == "HNSW32,Flat efSearch=512");

  // IVF-PQ: 8 one-byte codes of 4 dimensions each; approximate, so only the nearest neighbour
  // is asked to be among its first 10.
  IndexSpec pq = IndexSpec::of_kind("ivf-pq", 1000, 32);
  CHECK(pq.pq_m == 32);  // the largest code size dividing the width
  pq.pq_m = 8;
  pq.nprobe = 16;
  dinov2::FaissIndex coded(pq, 32);
  CHECK_THROWS_WITH(coded.train(gallery.slice(0, 0, 100)),
                    dinov2::test::ContainsSubstring("at least 256 training vectors"));
  coded.train(gallery);
  coded.add(gallery);
  const auto r = coded.search(queries, 10);
  const at::Tensor truth = reference("retrieval/indices");
  int64_t found = 0;
  for (int64_t q = 0; q < queries.size(0); ++q) {
    found += r.indices[q].eq(truth[q][0]).any().item<bool>() ? 1 : 0;
  }
  INFO(found << " of " << queries.size(0));
  CHECK(found >= queries.size(0) * 8 / 10);
  CHECK(coded.serialized_bytes() < index.serialized_bytes() / 2);
  coded.save(path);
  CHECK(dinov2::FaissIndex::load(path).spec().factory() == "IVF16,PQ8");
  std::filesystem::remove(path);
}
