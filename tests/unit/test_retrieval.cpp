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
