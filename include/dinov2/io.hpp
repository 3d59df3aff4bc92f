// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Reading and writing tensors: safetensors files (the format of Hugging Face's
/// `safetensors` package) and NumPy `.npy` files.
///
/// Contract: every file is written atomically (to `PATH.tmp`, flushed, then renamed over PATH),
/// so a reader never sees a half-written file, even after the writer was killed. Every failure
/// throws a dinov2::Error: InputError (kBadInput) for a missing, unreadable, corrupt or
/// unsupported file, with a message naming the file and the problem; InputError (kInvalidArgument)
/// for a bad argument (a tensor of an unsupported dtype, a name used twice...). Tensors are read
/// into, and written from, the CPU; a CUDA tensor is copied to the CPU first.
///
/// The safetensors layout: 8 bytes (little-endian uint64) giving the header length N, then N
/// bytes of UTF-8 JSON `{"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]},
/// ..., "__metadata__": {"key": "value"}}`, then the raw little-endian data of every tensor;
/// offsets count from the end of the header, tensors are packed without gaps.
///
/// Thread safety: the free functions may be called concurrently on different files; a reader or
/// writer object must not be shared between threads without locking.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dinov2 {

/// @brief Metadata of a safetensors file: the string-to-string map stored under "__metadata__".
using TensorMetadata = std::map<std::string, std::string>;

/// @brief A list of named tensors that keeps the order it was given.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// @brief The safetensors dtype code ("F32", "BF16", ...) of a tensor scalar type. Supported:
/// BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64. Throws InputError (kInvalidArgument)
/// otherwise.
std::string safetensors_dtype(at::ScalarType type);
/// @brief The scalar type of a safetensors dtype code; throws InputError naming the code when it
/// is not one of the supported ones.
at::ScalarType scalar_type_from_safetensors(const std::string& code);

/// @brief Where one tensor lies in a safetensors file.
struct TensorEntry {
  std::string name;            ///< the key in the header
  at::ScalarType dtype{};      ///< element type
  std::vector<int64_t> shape;  ///< dimensions; empty for a scalar
  uint64_t begin = 0;          ///< first byte, counted from the end of the header
  uint64_t end = 0;            ///< one past the last byte

  /// @brief Number of elements (1 for a scalar).
  int64_t numel() const;
  /// @brief Number of data bytes (end - begin).
  uint64_t nbytes() const { return end - begin; }
};

/// @brief Writes a safetensors file atomically. Tensors (any device, any strides) are stored in
/// the order given, except that wider element types come first (stable), as Python's
/// `safetensors` does, so that every tensor starts at an offset aligned to its element size.
/// Throws InputError (kInvalidArgument) for an empty or duplicated name, the reserved name
/// "__metadata__" or an unsupported dtype; InputError when the file cannot be written.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const TensorMetadata& metadata = {});
/// @brief As above for tensors keyed by name (stored in name order within each element width).
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const TensorMetadata& metadata = {});

/// @brief The whole content of a safetensors file.
struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;  ///< contiguous CPU tensors, by name
  TensorMetadata metadata;                    ///< "__metadata__", empty when absent
};

/// @brief Reads and validates a whole safetensors file (see SafetensorsReader for the checks).
SafetensorsFile load_safetensors(const std::string& path);

/// @brief Opens a safetensors file, validates its header and reads tensors on demand, so that a
/// large file can be processed one tensor (or one range of rows) at a time.
///
/// The checks, each of which throws InputError naming the file and the problem: the file is at
/// least 8 bytes; the header length fits in the file and is at most 100 MB; the header is a JSON
/// object; every entry has a known dtype, a shape of non-negative integers and two data offsets
/// with begin <= end; end - begin equals the element count times the element size; the tensors
/// cover the data section exactly (no gap, no overlap, nothing after the last one); metadata
/// values are strings.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  SafetensorsReader(SafetensorsReader&&) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&&) noexcept;
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;
  ~SafetensorsReader();

  /// @brief The file this reader opened.
  const std::string& path() const;
  /// @brief Every tensor, in the order of their data in the file.
  const std::vector<TensorEntry>& entries() const;
  /// @brief The "__metadata__" map (empty when absent).
  const TensorMetadata& metadata() const;
  /// @brief Whether the file holds a tensor of this name.
  bool contains(const std::string& name) const;
  /// @brief The entry of a tensor; throws InputError naming the missing tensor.
  const TensorEntry& entry(const std::string& name) const;
  /// @brief Reads one tensor.
  /// @return a contiguous CPU tensor of the stored dtype and shape.
  at::Tensor read(const std::string& name) const;
  /// @brief Reads rows [begin, end) of the first dimension of a tensor of rank >= 1.
  /// @return [end - begin, ...] contiguous CPU tensor of the stored dtype.
  at::Tensor read_rows(const std::string& name, int64_t begin, int64_t end) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// @brief The declaration of one tensor for SafetensorsWriter.
struct TensorSpec {
  std::string name;            ///< unique key, not "__metadata__"
  at::ScalarType dtype{};      ///< a dtype supported by safetensors_dtype()
  std::vector<int64_t> shape;  ///< final dimensions
};

/// @brief Writes a safetensors file whose tensors are too large to hold in memory at once: the
/// tensors are declared up front, then their data is appended piece by piece in the order
/// declared (any split: whole tensors, row blocks, ...), then commit() renames the finished
/// `PATH.tmp` to PATH. Declare wider element types first so that each tensor stays aligned.
///
/// An uncommitted writer deletes its temporary file when destroyed, so an exception leaves no
/// partial file behind (a killed process may leave `PATH.tmp`, never a partial PATH).
class SafetensorsWriter {
 public:
  /// @brief Creates `path + ".tmp"` and writes the header. Throws InputError (kInvalidArgument) for
  /// a bad spec and InputError when the file cannot be created.
  SafetensorsWriter(const std::string& path, std::vector<TensorSpec> specs,
                    const TensorMetadata& metadata = {});
  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();

  /// @brief Appends the elements of `data` (any shape and device; its dtype must equal the
  /// current tensor's) to the current tensor, moving on to the next tensor when one is full.
  /// Throws InputError (kInvalidArgument) when the dtype differs or the data overruns the tensor.
  void append(const at::Tensor& data);
  /// @brief Checks that every declared byte was written, flushes the file to disk and renames it
  /// to the final path. Throws InputError (kInvalidArgument) when data is missing.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// @brief The NumPy type string ("<f4", "|u1", ...) of a scalar type. Supported: bool, uint8,
/// int8, int16, int32, int64, float16, float32, float64. bfloat16 has no NumPy type: convert it
/// first (InputError, kInvalidArgument).
std::string npy_descr(at::ScalarType type);

/// @brief Writes one tensor (any device, any strides) as a `.npy` file (format version 1.0, C
/// order) atomically.
void save_npy(const std::string& path, const at::Tensor& tensor);
/// @brief Reads a `.npy` file of format version 1, 2 or 3 holding a little-endian or
/// byte-order-free array of a type npy_descr() supports, in C or Fortran order.
/// @return a contiguous CPU tensor.
at::Tensor load_npy(const std::string& path);

/// @brief The streaming counterpart of save_npy(), as SafetensorsWriter: declare the dtype and
/// final shape, append the data in C order piece by piece, then commit().
class NpyWriter {
 public:
  NpyWriter(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape);
  NpyWriter(NpyWriter&&) noexcept;
  NpyWriter& operator=(NpyWriter&&) noexcept;
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  ~NpyWriter();

  /// @brief Appends elements; their dtype must be the declared one.
  void append(const at::Tensor& data);
  /// @brief Checks completeness, flushes and renames to the final path.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// @brief Writes `text` to `path` atomically (through `path.tmp`, flushed, then renamed).
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace dinov2
