// SPDX-License-Identifier: Apache-2.0
// Private to src/: what the safetensors and npy code share: the dtype table, shape checks, error
// helpers, and the atomic file and segment stream every tensor file is written through.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "detail/text.hpp"
#include "dinov2/error.hpp"
#include "dinov2/io.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dinov2/io: safetensors and npy data are little-endian; big-endian hosts are not supported"
#endif

namespace dinov2::detail {

namespace fs = std::filesystem;

[[noreturn]] inline void bad_file(const std::string& path, const std::string& problem) {
  throw InputError(fmt::format("dinov2: {}: {}", path, problem));
}

inline std::string errno_text() { return std::strerror(errno); }

struct DTypeName {
  at::ScalarType type;
  const char* safetensors;
  const char* npy;  // nullptr: no NumPy type
};

inline constexpr DTypeName kDTypes[] = {
    {at::kBool, "BOOL", "|b1"},  {at::kByte, "U8", "|u1"},         {at::kChar, "I8", "|i1"},
    {at::kShort, "I16", "<i2"},  {at::kInt, "I32", "<i4"},         {at::kLong, "I64", "<i8"},
    {at::kHalf, "F16", "<f2"},   {at::kBFloat16, "BF16", nullptr}, {at::kFloat, "F32", "<f4"},
    {at::kDouble, "F64", "<f8"},
};

inline const DTypeName* find_dtype(at::ScalarType type) {
  for (const auto& d : kDTypes) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

// Product of the dimensions, or -1 when a dimension is negative or the product of the non-zero
// dimensions, in bytes of the widest element (8), overflows: LibTorch refuses such a shape even
// when another dimension is 0 (found by fuzz_npy: [2, 7666, ..., 6666666666666, 6, 0, 2]).
inline int64_t checked_numel(const std::vector<int64_t>& shape) {
  constexpr int64_t kLimit = std::numeric_limits<int64_t>::max() / 8;
  int64_t n = 1;
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d == 0) {
      empty = true;
      continue;
    }
    if (n > kLimit / d) return -1;
    n *= d;
  }
  return empty ? 0 : n;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A CPU, contiguous view of `t` whose bytes can be written as they are.
inline at::Tensor host_bytes(const at::Tensor& t) {
  try {
    return t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous();
  } catch (const c10::Error& e) {
    throw RuntimeError(fmt::format("dinov2: could not copy a tensor to the CPU for writing: {}",
                                   e.what_without_backtrace()));
  }
}

// ---------------------------------------------------------------------------------------------
// A file written to a fresh PATH.tmp-XXXXXX beside PATH and renamed to PATH on commit: nothing
// that exists is opened for writing, so a file of the user's that happens to be called PATH.tmp
// is never truncated.

class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp-XXXXXX") {
#ifndef _WIN32
    const int fd = ::mkstemp(tmp_.data());
    if (fd >= 0) {
      // mkstemp creates 0600; the finished file gets the usual permissions (umask applied).
      const mode_t mask = ::umask(0);
      ::umask(mask);
      ::fchmod(fd, 0666 & ~mask);
      file_ = ::fdopen(fd, "wb");
      if (file_ == nullptr) ::close(fd);
    }
#else
    tmp_ = path_ + ".tmp";
    file_ = std::fopen(tmp_.c_str(), "wb");
#endif
    if (file_ == nullptr) {
      bad_file(path_, fmt::format("cannot create the file ({}); check that the folder exists "
                                  "and is writable",
                                  errno_text()));
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (file_ != nullptr) {
      std::fclose(file_);
      std::error_code ignored;
      fs::remove(tmp_, ignored);
    }
  }

  void write(const void* data, size_t n) {
    if (n != 0 && std::fwrite(data, 1, n, file_) != n) {
      bad_file(tmp_, fmt::format("write failed ({}); is the disk full?", errno_text()));
    }
  }

  void commit() {
    bool ok = std::fflush(file_) == 0;
#ifndef _WIN32
    // Flush to the device so that the rename below never exposes a file whose data is lost.
    ok = ok && ::fsync(fileno(file_)) == 0;
#endif
    const int saved_errno = errno;
    ok = (std::fclose(file_) == 0) && ok;
    file_ = nullptr;
    if (!ok) {
      errno = saved_errno;
      const std::string why = errno_text();
      std::error_code ignored;
      fs::remove(tmp_, ignored);
      bad_file(tmp_, fmt::format("could not flush the file to disk ({})", why));
    }
    std::error_code ec;
    fs::rename(tmp_, path_, ec);
    if (ec) {
      fs::remove(tmp_, ec);
      bad_file(path_,
               fmt::format("could not move the finished file into place ({})", ec.message()));
    }
#ifndef _WIN32
    // Make the rename itself durable.
    const fs::path parent = fs::path(path_).parent_path();
    const int dir = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
#endif
  }

 private:
  std::string path_;
  std::string tmp_;
  std::FILE* file_ = nullptr;
};

// Appends tensor data to a sequence of declared segments (one per tensor) of an AtomicFile.
class SegmentStream {
 public:
  struct Segment {
    std::string name;
    at::ScalarType dtype;
    uint64_t nbytes;
  };

  SegmentStream(std::unique_ptr<AtomicFile> file, std::vector<Segment> segments)
      : file_(std::move(file)), segments_(std::move(segments)) {
    skip_full();
  }

  void append(const at::Tensor& data) {
    if (!data.defined()) bad_argument("dinov2: append: the tensor is undefined");
    const at::Tensor bytes = host_bytes(data);
    uint64_t n = static_cast<uint64_t>(bytes.nbytes());
    if (n == 0) return;
    if (current_ >= segments_.size()) {
      bad_argument(fmt::format("dinov2: append: {} more bytes than the tensors declared", n));
    }
    const Segment& seg = segments_[current_];
    if (bytes.scalar_type() != seg.dtype) {
      bad_argument(fmt::format("dinov2: append: tensor '{}' is declared {} but the data is {}",
                               seg.name, c10::toString(seg.dtype),
                               c10::toString(bytes.scalar_type())));
    }
    const auto* p = static_cast<const char*>(bytes.data_ptr());
    while (n > 0) {
      if (current_ >= segments_.size()) {
        bad_argument(fmt::format("dinov2: append: {} more bytes than the tensors declared", n));
      }
      const Segment& s = segments_[current_];
      if (s.dtype != seg.dtype) {
        bad_argument(fmt::format(
            "dinov2: append: the data runs past tensor '{}' into '{}', which is declared {}",
            seg.name, s.name, c10::toString(s.dtype)));
      }
      const uint64_t take = std::min(n, s.nbytes - written_);
      file_->write(p, take);
      p += take;
      n -= take;
      written_ += take;
      skip_full();
    }
  }

  void commit() {
    if (current_ < segments_.size()) {
      const Segment& s = segments_[current_];
      bad_argument(fmt::format(
          "dinov2: commit: tensor '{}' has {} of its {} bytes; append the rest before commit()",
          s.name, written_, s.nbytes));
    }
    file_->commit();
  }

 private:
  void skip_full() {
    while (current_ < segments_.size() && written_ == segments_[current_].nbytes) {
      ++current_;
      written_ = 0;
    }
  }

  std::unique_ptr<AtomicFile> file_;
  std::vector<Segment> segments_;
  size_t current_ = 0;
  uint64_t written_ = 0;
};

inline uint64_t element_size(at::ScalarType t) {
  return static_cast<uint64_t>(c10::elementSize(t));
}

/// The append of a writer whose Impl holds a SegmentStream `stream`; InputError when the writer
/// (named `writer` in the message) was moved from.
template <class Impl>
void append_to_writer(const std::unique_ptr<Impl>& impl, const char* writer,
                      const at::Tensor& data) {
  if (!impl)
    bad_argument(fmt::format("dinov2: {}::append after the writer was moved from", writer));
  impl->stream->append(data);
}

/// The commit of such a writer; the writer is empty afterwards.
template <class Impl>
void commit_writer(std::unique_ptr<Impl>& impl, const char* writer) {
  if (!impl)
    bad_argument(fmt::format("dinov2: {}::commit after the writer was moved from", writer));
  impl->stream->commit();
  impl.reset();
}

}  // namespace dinov2::detail
