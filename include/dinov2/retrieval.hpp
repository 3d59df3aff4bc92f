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

/// @brief A FAISS `IndexFlatIP` over L2-normalised vectors, i.e. exact cosine search, with
/// FAISS's SIMD kernels and its own file format (faiss::write_index). Available only in builds
/// configured with DINOV2_WITH_FAISS=ON (Debian: libfaiss-dev); elsewhere every function but
/// available() throws InputError(kInvalidArgument) saying so.
///
/// Movable and copyable (copies share the index); search() may be called concurrently, add()
/// must not race with anything.
class FaissIndex {
 public:
  /// @brief Whether this build of the library has FAISS.
  static bool available();
  /// @brief An empty index of width `dim`.
  explicit FaissIndex(int64_t dim);
  /// @brief Reads an index written by save(); throws InputError when the file is missing or not
  /// a FAISS flat inner-product index.
  static FaissIndex load(const std::string& path);

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
