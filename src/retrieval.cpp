// SPDX-License-Identifier: Apache-2.0
// Exact cosine search with LibTorch, and the optional FAISS flat index (DINOV2_WITH_FAISS).
#include "dinov2/retrieval.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

#include <cmath>

#if DINOV2_WITH_FAISS
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
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
// IndexSpec

namespace {
constexpr int64_t kPqChoices[] = {64, 48, 32, 24, 16, 12, 8, 4};
}  // namespace

std::string IndexSpec::factory() const {
  switch (kind) {
    case Kind::kFlat:
      return "Flat";
    case Kind::kIVFFlat:
      return fmt::format("IVF{},Flat", nlist);
    case Kind::kIVFPQ:
      return fmt::format("IVF{},PQ{}", nlist, pq_m);
    case Kind::kHNSW:
      return fmt::format("HNSW{},Flat", hnsw_m);
  }
  return "Flat";
}

std::string IndexSpec::to_string() const {
  switch (kind) {
    case Kind::kIVFFlat:
    case Kind::kIVFPQ:
      return fmt::format("{} nprobe={}", factory(), nprobe > 0 ? nprobe : default_nprobe());
    case Kind::kHNSW:
      return fmt::format("{} efSearch={}", factory(), ef_search > 0 ? ef_search : 128);
    default:
      return factory();
  }
}

std::string IndexSpec::kind_name() const {
  switch (kind) {
    case Kind::kIVFFlat:
      return "ivf-flat";
    case Kind::kIVFPQ:
      return "ivf-pq";
    case Kind::kHNSW:
      return "hnsw";
    default:
      return "flat";
  }
}

int64_t IndexSpec::memory_bytes(int64_t n, int64_t dim) const {
  const int64_t centroids = nlist * dim * 4;
  switch (kind) {
    case Kind::kIVFFlat:
      return n * (4 * dim + 8) + centroids;
    case Kind::kIVFPQ:
      return n * (pq_m + 8) + centroids + 256 * dim * 4;
    case Kind::kHNSW:
      // Level 0 holds 2M links of 4 bytes; the upper levels about 1/M of that again.
      return n * (4 * dim + 8 * hnsw_m + 8 * hnsw_m / std::max<int64_t>(hnsw_m - 1, 1) + 16);
    default:
      return n * 4 * dim;
  }
}

int64_t IndexSpec::training_rows() const {
  switch (kind) {
    case Kind::kIVFFlat:
      return 40 * nlist;
    case Kind::kIVFPQ:
      return std::max<int64_t>(40 * nlist, 10000);
    default:
      return 0;
  }
}

int64_t IndexSpec::default_nprobe() const {
  return std::min<int64_t>(std::max<int64_t>(nlist, 1), std::max<int64_t>(8, nlist / 64));
}

int64_t IndexSpec::nlist_for(int64_t n) {
  const double target = 2.0 * std::sqrt(static_cast<double>(std::max<int64_t>(n, 1)));
  int64_t nlist = int64_t{1} << static_cast<int>(std::lround(std::log2(std::max(target, 1.0))));
  nlist = std::clamp<int64_t>(nlist, 16, 65536);
  while (nlist > 1 && nlist * 40 > n) nlist /= 2;
  return std::max<int64_t>(nlist, 1);
}

IndexSpec IndexSpec::of_kind(const std::string& kind, int64_t n, int64_t dim) {
  IndexSpec spec;
  if (kind == "flat") {
    spec.kind = Kind::kFlat;
  } else if (kind == "ivf-flat") {
    spec.kind = Kind::kIVFFlat;
  } else if (kind == "ivf-pq") {
    spec.kind = Kind::kIVFPQ;
  } else if (kind == "hnsw") {
    spec.kind = Kind::kHNSW;
  } else {
    throw InputError::invalid_argument(
        fmt::format("dinov2: unknown index kind '{}'; use flat, ivf-flat, ivf-pq or hnsw", kind));
  }
  spec.nlist = spec.kind == Kind::kIVFFlat || spec.kind == Kind::kIVFPQ ? nlist_for(n) : 0;
  if (spec.kind == Kind::kIVFPQ) {
    for (const int64_t m : kPqChoices) {
      if (dim % m == 0) {
        spec.pq_m = m;
        break;
      }
    }
    if (spec.pq_m == 0) {
      throw InputError::invalid_argument(
          fmt::format("dinov2: no PQ code size (64, 48, ... 4 bytes) divides the width {}", dim));
    }
  }
  return spec;
}

IndexSpec IndexSpec::for_budget(int64_t n, int64_t dim, int64_t budget_bytes) {
  std::vector<IndexSpec> choices;
  IndexSpec flat;
  if (n <= 20000) choices.push_back(flat);
  IndexSpec ivf;
  ivf.kind = Kind::kIVFFlat;
  ivf.nlist = nlist_for(n);
  choices.push_back(ivf);
  for (const int64_t m : kPqChoices) {
    if (dim % m != 0) continue;
    IndexSpec pq = ivf;
    pq.kind = Kind::kIVFPQ;
    pq.pq_m = m;
    choices.push_back(pq);
  }
  for (const IndexSpec& c : choices) {
    if (c.memory_bytes(n, dim) <= budget_bytes) return c;
  }
  const IndexSpec& smallest = choices.back();
  throw InputError::invalid_argument(fmt::format(
      "dinov2: no index of {} vectors of width {} fits in {} bytes; the smallest, {}, needs "
      "about {} bytes",
      n, dim, budget_bytes, smallest.factory(), smallest.memory_bytes(n, dim)));
}

// ---------------------------------------------------------------------------------------------
// FAISS

#if DINOV2_WITH_FAISS

struct FaissIndex::Impl {
  std::unique_ptr<faiss::Index> index;
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

FaissIndex::FaissIndex(const IndexSpec& spec, int64_t dim) {
  if (dim < 1) {
    throw InputError::invalid_argument("dinov2: FaissIndex: the width " + std::to_string(dim) +
                                       " must be positive");
  }
  if ((spec.kind == IndexSpec::Kind::kIVFFlat || spec.kind == IndexSpec::Kind::kIVFPQ) &&
      spec.nlist < 1) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: FaissIndex: {} needs nlist >= 1", spec.factory()));
  }
  if (spec.kind == IndexSpec::Kind::kIVFPQ && (spec.pq_m < 1 || dim % spec.pq_m != 0)) {
    throw InputError::invalid_argument(fmt::format(
        "dinov2: FaissIndex: PQ{} does not divide the width {}; pick a code size that does",
        spec.pq_m, dim));
  }
  if (spec.kind == IndexSpec::Kind::kHNSW && spec.hnsw_m < 2) {
    throw InputError::invalid_argument("dinov2: FaissIndex: HNSW needs M >= 2");
  }
  // "np": no polysemous training of the PQ codes, which only the polysemous search uses and
  // which takes minutes (FAISS's factory turns it on by default).
  const std::string factory =
      spec.kind == IndexSpec::Kind::kIVFPQ ? spec.factory() + "np" : spec.factory();
  impl_ = std::make_shared<Impl>();
  try {
    impl_->index.reset(
        faiss::index_factory(static_cast<int>(dim), factory.c_str(), faiss::METRIC_INNER_PRODUCT));
  } catch (const faiss::FaissException& e) {
    throw InputError::invalid_argument(
        fmt::format("dinov2: FaissIndex: FAISS refused {}: {}", spec.factory(), e.what()));
  }
  set_search(spec);
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
  const bool known = dynamic_cast<faiss::IndexFlat*>(raw.get()) != nullptr ||
                     dynamic_cast<faiss::IndexIVFFlat*>(raw.get()) != nullptr ||
                     dynamic_cast<faiss::IndexIVFPQ*>(raw.get()) != nullptr ||
                     dynamic_cast<faiss::IndexHNSWFlat*>(raw.get()) != nullptr;
  if (!known || raw->metric_type != faiss::METRIC_INNER_PRODUCT) {
    throw InputError("dinov2: '" + path +
                     "' is a FAISS index of another kind or metric; expected an inner-product "
                     "Flat, IVF-Flat, IVF-PQ or HNSW index written by `dinov2 index build` or "
                     "`dinov2 search --index`");
  }
  auto impl = std::make_shared<Impl>();
  impl->index = std::move(raw);
  return FaissIndex(std::move(impl));
}

IndexSpec FaissIndex::spec() const {
  IndexSpec spec;
  const faiss::Index* index = impl_->index.get();
  if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    spec.nlist = static_cast<int64_t>(ivf->nlist);
    spec.nprobe = static_cast<int64_t>(ivf->nprobe);
    if (const auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(index)) {
      spec.kind = IndexSpec::Kind::kIVFPQ;
      spec.pq_m = static_cast<int64_t>(pq->pq.M);
    } else {
      spec.kind = IndexSpec::Kind::kIVFFlat;
    }
  } else if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    spec.kind = IndexSpec::Kind::kHNSW;
    spec.hnsw_m = static_cast<int64_t>(hnsw->hnsw.nb_neighbors(1));
    spec.ef_search = hnsw->hnsw.efSearch;
  }
  return spec;
}

bool FaissIndex::trained() const { return impl_->index->is_trained; }

void FaissIndex::train(const at::Tensor& sample) {
  check_matrix(sample, "the training sample of a FaissIndex", dim());
  const IndexSpec s = spec();
  // k-means needs a point per cluster; 8-bit PQ codebooks need 256 points.
  const int64_t need =
      s.kind == IndexSpec::Kind::kIVFPQ ? std::max<int64_t>(s.nlist, 256) : s.nlist;
  if (sample.size(0) < need) {
    throw InputError::invalid_argument(fmt::format(
        "dinov2: {} needs at least {} training vectors, got {}; use fewer clusters (--nlist), "
        "another kind, or more rows",
        s.factory(), need, sample.size(0)));
  }
  faiss_guarded("FaissIndex::train", [&] {
    const at::Tensor x = l2_normalized(sample.cpu()).contiguous();
    impl_->index->train(x.size(0), x.data_ptr<float>());
    return 0;
  });
}

void FaissIndex::set_search(const IndexSpec& spec) {
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(impl_->index.get())) {
    IndexSpec mine = this->spec();
    ivf->nprobe = static_cast<size_t>(spec.nprobe > 0 ? spec.nprobe : mine.default_nprobe());
  } else if (auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(impl_->index.get())) {
    hnsw->hnsw.efSearch = static_cast<int>(spec.ef_search > 0 ? spec.ef_search : 128);
  }
}

int64_t FaissIndex::serialized_bytes() const {
  return faiss_guarded("FaissIndex::serialized_bytes", [&] {
    faiss::VectorIOWriter writer;
    faiss::write_index(impl_->index.get(), &writer);
    return static_cast<int64_t>(writer.data.size());
  });
}

void FaissIndex::add(const at::Tensor& vectors) {
  check_matrix(vectors, "the vectors added to a FaissIndex", dim());
  if (!trained()) {
    throw InputError::invalid_argument("dinov2: FaissIndex::add: the " + spec().factory() +
                                       " index must be trained (FaissIndex::train) first");
  }
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
FaissIndex::FaissIndex(const IndexSpec&, int64_t) { no_faiss(); }
IndexSpec FaissIndex::spec() const { no_faiss(); }
bool FaissIndex::trained() const { no_faiss(); }
void FaissIndex::train(const at::Tensor&) { no_faiss(); }
void FaissIndex::set_search(const IndexSpec&) { no_faiss(); }
int64_t FaissIndex::serialized_bytes() const { no_faiss(); }
FaissIndex FaissIndex::load(const std::string&) { no_faiss(); }
void FaissIndex::add(const at::Tensor&) { no_faiss(); }
void FaissIndex::save(const std::string&) const { no_faiss(); }
int64_t FaissIndex::size() const { no_faiss(); }
int64_t FaissIndex::dim() const { no_faiss(); }
SearchResult FaissIndex::search(const at::Tensor&, int64_t) const { no_faiss(); }

#endif  // DINOV2_WITH_FAISS

}  // namespace dinov2
