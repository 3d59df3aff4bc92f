// SPDX-License-Identifier: Apache-2.0
// Exact cosine search with LibTorch, and the optional FAISS flat index (DINOV2_WITH_FAISS).
#include "dinov2/retrieval.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#if DINOV2_WITH_FAISS
#include <faiss/IndexFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_io.h>
#endif

#include "detail/boundary.hpp"
#include "dinov2/error.hpp"

namespace dinov2 {

namespace {

using detail::guarded;
using detail::shape_of;

void check_matrix(const at::Tensor& t, const char* what, int64_t dim = -1) {
  if (!t.defined() || t.dim() != 2 || !at::isFloatingType(t.scalar_type()) ||
      (dim >= 0 && t.size(1) != dim)) {
    throw InputError(std::string("dinov2: ") + what + " must be a floating [N, " +
                     (dim >= 0 ? std::to_string(dim) : std::string("D")) + "] tensor; got " +
                     shape_of(t));
  }
}

void check_k(int64_t k) {
  if (k < 1) {
    throw InputError::invalid_argument("dinov2: k = " + std::to_string(k) +
                                       " neighbours; ask for at least 1");
  }
}

/// Rows divided by their L2 norm (clamped to 1e-12), in float32.
at::Tensor l2_normalized(const at::Tensor& x) {
  const at::Tensor f = x.detach().to(at::kFloat);
  return f / f.norm(2, {1}, true).clamp_min(1e-12);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Exact search

CosineTopK::CosineTopK(const at::Tensor& queries, int64_t k) : k_(k) {
  check_matrix(queries, "the queries");
  check_k(k);
  queries_ = guarded("CosineTopK", [&] { return l2_normalized(queries); });
}

void CosineTopK::add(const at::Tensor& gallery, int64_t first_index, int64_t chunk_rows) {
  check_matrix(gallery, "the gallery", queries_.size(1));
  if (chunk_rows < 1) {
    throw InputError::invalid_argument("dinov2: CosineTopK::add: chunk_rows = " +
                                       std::to_string(chunk_rows) + " must be positive");
  }
  guarded("CosineTopK::add", [&] {
    const int64_t rows = gallery.size(0);
    for (int64_t begin = 0; begin < rows; begin += chunk_rows) {
      const int64_t end = std::min(rows, begin + chunk_rows);
      const at::Tensor g = l2_normalized(gallery.slice(0, begin, end).to(queries_.device()));
      const at::Tensor sims = at::matmul(queries_, g.t());  // [Q, c]
      auto [s, i] = sims.topk(std::min(k_, end - begin), 1, true, true);
      i = i + (first_index + begin);
      if (scores_.defined()) {
        const at::Tensor all_s = at::cat({scores_, s}, 1);
        const at::Tensor all_i = at::cat({indices_, i}, 1);
        auto [best, where] = all_s.topk(std::min(k_, all_s.size(1)), 1, true, true);
        scores_ = best;
        indices_ = all_i.gather(1, where);
      } else {
        scores_ = s;
        indices_ = i;
      }
    }
    seen_ += rows;
    return 0;
  });
}

SearchResult CosineTopK::result() const {
  SearchResult r;
  if (!scores_.defined()) {
    r.scores = at::empty({queries_.size(0), 0}, at::kFloat);
    r.indices = at::empty({queries_.size(0), 0}, at::kLong);
    return r;
  }
  r.scores = scores_.cpu().contiguous();
  r.indices = indices_.cpu().contiguous();
  return r;
}

SearchResult cosine_top_k(const at::Tensor& queries, const at::Tensor& gallery, int64_t k,
                          int64_t chunk_rows) {
  CosineTopK search(queries, k);
  search.add(gallery, 0, chunk_rows);
  return search.result();
}

// ---------------------------------------------------------------------------------------------
// FAISS

#if DINOV2_WITH_FAISS

struct FaissIndex::Impl {
  std::unique_ptr<faiss::IndexFlatIP> index;
};

namespace {
template <class F>
auto faiss_guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return guarded(what, std::forward<F>(f));
  } catch (const faiss::FaissException& e) {
    throw RuntimeError(std::string("dinov2: ") + what + ": FAISS failed: " + e.what());
  }
}
}  // namespace

bool FaissIndex::available() { return true; }

FaissIndex::FaissIndex(int64_t dim) {
  if (dim < 1) {
    throw InputError::invalid_argument("dinov2: FaissIndex: the width " + std::to_string(dim) +
                                       " must be positive");
  }
  impl_ = std::make_shared<Impl>();
  impl_->index = std::make_unique<faiss::IndexFlatIP>(static_cast<int>(dim));
}

FaissIndex FaissIndex::load(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) {
    throw InputError("dinov2: the FAISS index file '" + path + "' does not exist");
  }
  std::unique_ptr<faiss::Index> raw;
  try {
    raw.reset(faiss::read_index(path.c_str()));
  } catch (const faiss::FaissException& e) {
    throw InputError("dinov2: cannot read the FAISS index '" + path + "': " + e.what());
  }
  auto* flat = dynamic_cast<faiss::IndexFlatIP*>(raw.get());
  if (flat == nullptr) {
    throw InputError("dinov2: '" + path +
                     "' is a FAISS index of another kind; expected a flat inner-product index "
                     "written by `dinov2 search --index` (IndexFlatIP)");
  }
  raw.release();
  auto impl = std::make_shared<Impl>();
  impl->index.reset(flat);
  return FaissIndex(std::move(impl));
}

void FaissIndex::add(const at::Tensor& vectors) {
  check_matrix(vectors, "the vectors added to a FaissIndex", dim());
  faiss_guarded("FaissIndex::add", [&] {
    const at::Tensor x = l2_normalized(vectors.cpu()).contiguous();
    impl_->index->add(x.size(0), x.data_ptr<float>());
    return 0;
  });
}

void FaissIndex::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  try {
    faiss::write_index(impl_->index.get(), tmp.c_str());
  } catch (const faiss::FaissException& e) {
    std::remove(tmp.c_str());
    throw InputError("dinov2: cannot write the FAISS index '" + path + "': " + e.what());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw InputError("dinov2: cannot move the FAISS index to '" + path + "': " + ec.message());
  }
}

int64_t FaissIndex::size() const { return impl_->index->ntotal; }
int64_t FaissIndex::dim() const { return impl_->index->d; }

SearchResult FaissIndex::search(const at::Tensor& queries, int64_t k) const {
  check_matrix(queries, "the queries", dim());
  check_k(k);
  return faiss_guarded("FaissIndex::search", [&] {
    const at::Tensor q = l2_normalized(queries.cpu()).contiguous();
    const int64_t kk = std::min(k, size());
    SearchResult r;
    r.scores = at::empty({q.size(0), kk}, at::kFloat);
    r.indices = at::empty({q.size(0), kk}, at::kLong);
    if (kk > 0 && q.size(0) > 0) {
      impl_->index->search(q.size(0), q.data_ptr<float>(), kk, r.scores.data_ptr<float>(),
                           r.indices.data_ptr<int64_t>());
    }
    return r;
  });
}

#else  // DINOV2_WITH_FAISS

struct FaissIndex::Impl {};

namespace {
[[noreturn]] void no_faiss() {
  throw InputError::invalid_argument(
      "dinov2: this build has no FAISS support; reconfigure with -DDINOV2_WITH_FAISS=ON "
      "(needs FAISS, e.g. Debian's libfaiss-dev) or use the exact search");
}
}  // namespace

bool FaissIndex::available() { return false; }
FaissIndex::FaissIndex(int64_t) { no_faiss(); }
FaissIndex FaissIndex::load(const std::string&) { no_faiss(); }
void FaissIndex::add(const at::Tensor&) { no_faiss(); }
void FaissIndex::save(const std::string&) const { no_faiss(); }
int64_t FaissIndex::size() const { no_faiss(); }
int64_t FaissIndex::dim() const { no_faiss(); }
SearchResult FaissIndex::search(const at::Tensor&, int64_t) const { no_faiss(); }

#endif  // DINOV2_WITH_FAISS

}  // namespace dinov2
