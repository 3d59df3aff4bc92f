// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Nearest-neighbour search by cosine similarity: exact search with LibTorch (any gallery
/// size, processed in chunks so that memory stays bounded) and, in builds configured with
/// DINOV2_WITH_FAISS=ON, a FAISS flat inner-product index that can be saved and reloaded.
///
/// Cosine similarity of two vectors is the dot product of their L2-normalised copies (norms below
/// 1e-12 are clamped to it, as in Features::normalized()). Results are sorted by decreasing
/// similarity; ties keep no particular order.
///
/// Every failure throws a dinov2::Error: InputError for tensors of the wrong shape or dtype,
/// InputError(kInvalidArgument) for a bad k, RuntimeError(kRuntime) when LibTorch or FAISS fail.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace dinov2 {

/// @brief The k best gallery entries of each query.
struct SearchResult {
  /// @brief [Q, k'] float32 CPU: cosine similarities, best first (k' = min(k, gallery size)).
  at::Tensor scores;
  /// @brief [Q, k'] int64 CPU: the gallery row of each score.
  at::Tensor indices;
};

/// @brief Exact cosine top-k of queries against a gallery that arrives in pieces, e.g. row
/// blocks read from a file with SafetensorsReader::read_rows: only the current piece and the
/// running top k are held in memory.
///
/// @code
/// dinov2::CosineTopK search(queries, 5);
/// for (int64_t b = 0; b < rows; b += 65536)
///   search.add(reader.read_rows("cls", b, std::min(rows, b + 65536)), b);
/// dinov2::SearchResult r = search.result();
/// @endcode
class CosineTopK {
 public:
  /// @param queries [Q, D] floating, any device; the search runs on this device in float32.
  /// @param k number of neighbours wanted, >= 1; fewer are returned if the gallery is smaller.
  CosineTopK(const at::Tensor& queries, int64_t k);

  /// @brief Adds gallery rows whose first row has index `first_index` in the whole gallery.
  /// @param gallery [G, D] floating (any dtype, e.g. float16 files), any device; G may be 0.
  /// @param chunk_rows rows compared at once (memory Q x chunk_rows floats); > 0.
  void add(const at::Tensor& gallery, int64_t first_index, int64_t chunk_rows = 16384);

  /// @brief Number of gallery rows added so far.
  int64_t gallery_size() const { return seen_; }
  /// @brief The best min(k, gallery_size()) rows per query so far.
  SearchResult result() const;

 private:
  at::Tensor queries_;  // [Q, D] float32, L2-normalised
  int64_t k_;
  int64_t seen_ = 0;
  at::Tensor scores_;   // [Q, <= k] float32
  at::Tensor indices_;  // [Q, <= k] int64
};

/// @brief Exact cosine top-k of each query against a gallery held in memory.
/// @param queries [Q, D] floating, any device. @param gallery [G, D] floating, same width.
/// @param k >= 1. @param chunk_rows gallery rows compared at once.
SearchResult cosine_top_k(const at::Tensor& queries, const at::Tensor& gallery, int64_t k,
                          int64_t chunk_rows = 16384);

/// @brief The kind of a FaissIndex and its parameters. Every kind compares L2-normalised
/// vectors by inner product (cosine similarity).
///
/// | kind     | FAISS factory     | memory per vector          | search |
/// |----------|-------------------|----------------------------|--------|
/// | kFlat    | `Flat`            | 4 D bytes                  | exact |
/// | kIVFFlat | `IVF<nlist>,Flat` | 4 D + 8 bytes              | visits `nprobe` of `nlist`
/// clusters | | kIVFPQ   | `IVF<nlist>,PQ<m>`| m + 8 bytes                | the same, on m-byte
/// product-quantised codes | | kHNSW    | `HNSW<M>,Flat`    | 4 D + about 8 M + 16 bytes | graph
/// walk with `ef_search` candidates |
struct IndexSpec {
  /// @brief The index structure.
  enum class Kind { kFlat, kIVFFlat, kIVFPQ, kHNSW };
  Kind kind = Kind::kFlat;
  int64_t nlist = 0;      ///< IVF clusters (kIVFFlat, kIVFPQ)
  int64_t pq_m = 0;       ///< PQ bytes per vector (kIVFPQ, 8-bit codes); must divide the width
  int64_t hnsw_m = 32;    ///< HNSW links per node (kHNSW)
  int64_t nprobe = 0;     ///< IVF clusters visited per query; 0 picks default_nprobe()
  int64_t ef_search = 0;  ///< HNSW candidates kept per query; 0 picks 128

  /// @brief The FAISS index_factory string, e.g. "IVF2048,PQ48".
  std::string factory() const;
  /// @brief factory() with the search parameters, e.g. "IVF2048,PQ48 nprobe=16".
  std::string to_string() const;
  /// @brief The kind's name as the tool spells it: flat, ivf-flat, ivf-pq, hnsw.
  std::string kind_name() const;
  /// @brief Estimated memory of the index holding `n` vectors of width `dim`, in bytes.
  int64_t memory_bytes(int64_t n, int64_t dim) const;
  /// @brief Vectors to train on (0 for kinds that need no training): 40 per IVF cluster, at
  /// least 10,000 for PQ codebooks.
  int64_t training_rows() const;
  /// @brief nprobe when unset: nlist / 64, at least 8 (at most nlist).
  int64_t default_nprobe() const;

  /// @brief nlist for `n` vectors when unset: the power of two nearest 2 sqrt(n), from 16 to
  /// 65536, and at most n / 40 (so that each cluster trains on 40 vectors).
  static int64_t nlist_for(int64_t n);
  /// @brief The kind for `n` vectors of width `dim` within `budget_bytes`: exact search (kFlat)
  /// up to 20,000 vectors; then kIVFFlat; then kIVFPQ with the most bytes per vector that fit
  /// (64, 48, 32, 24, 16, 12, 8, 4; those dividing `dim`). kHNSW is never chosen: measured over
  /// 1 million vectors (docs/SCALE.md) it took 26 times IVF-Flat's build time for lower recall.
  /// Throws InputError (kInvalidArgument) naming the smallest budget that would do when nothing
  /// fits.
  static IndexSpec for_budget(int64_t n, int64_t dim, int64_t budget_bytes);
  /// @brief Parses a kind name (flat, ivf-flat, ivf-pq, hnsw) into a spec with defaults for `n`
  /// vectors of width `dim` (nlist_for(n), pq_m the largest of 64, 48, ... dividing `dim`).
  static IndexSpec of_kind(const std::string& kind, int64_t n, int64_t dim);
};

/// @brief A FAISS index over L2-normalised vectors, searched by inner product (cosine
/// similarity): exact (`IndexFlatIP`), or approximate (IVF-Flat, IVF-PQ, HNSW; IndexSpec), with
/// FAISS's kernels and its own file format (faiss::write_index). Available only in builds
/// configured with DINOV2_WITH_FAISS=ON (Debian: libfaiss-dev); elsewhere every function but
/// available() throws InputError(kInvalidArgument) saying so.
///
/// Movable and copyable (copies share the index); search() may be called concurrently, add(),
/// train() and set_search() must not race with anything.
class FaissIndex {
 public:
  /// @brief Whether this build of the library has FAISS.
  static bool available();
  /// @brief An empty exact (flat) index of width `dim`.
  explicit FaissIndex(int64_t dim);
  /// @brief An empty index of the kind `spec` and width `dim`. IVF kinds must be trained before
  /// vectors are added. Throws InputError (kInvalidArgument) for parameters FAISS cannot take
  /// (a pq_m that does not divide `dim`, nlist < 1, ...).
  FaissIndex(const IndexSpec& spec, int64_t dim);
  /// @brief Reads an index written by save(); throws InputError when the file is missing, not
  /// a FAISS index, or of a kind or metric other than those above.
  static FaissIndex load(const std::string& path);

  /// @brief The kind and parameters, read from the index itself.
  IndexSpec spec() const;
  /// @brief Whether vectors may be added (flat and HNSW indexes always; IVF after train()).
  bool trained() const;
  /// @brief Trains the clustering and codebooks on a sample (normalised here).
  /// @param sample [N, D] floating, N >= IndexSpec::training_rows() recommended.
  void train(const at::Tensor& sample);
  /// @brief Sets the search breadth from `spec`: nprobe (IVF) or ef_search (HNSW), defaults
  /// when 0. Other fields are ignored.
  void set_search(const IndexSpec& spec);
  /// @brief The bytes save() would write (the index's own size).
  int64_t serialized_bytes() const;

  /// @brief Appends vectors (normalised here); their rows continue the numbering.
  /// @param vectors [N, D] floating, any device.
  void add(const at::Tensor& vectors);
  /// @brief Writes the index (atomically: to PATH.tmp, then renamed).
  void save(const std::string& path) const;
  /// @brief Vectors in the index.
  int64_t size() const;
  /// @brief D.
  int64_t dim() const;
  /// @brief The k nearest rows of each query by cosine similarity.
  /// @param queries [Q, D] floating, any device.
  SearchResult search(const at::Tensor& queries, int64_t k) const;

 private:
  struct Impl;
  explicit FaissIndex(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace dinov2
