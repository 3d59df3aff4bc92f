// SPDX-License-Identifier: Apache-2.0
// safetensors and .npy files: atomic streaming writers, a validating safetensors reader, an npy
// reader. The byte layouts are stated in include/dinov2/io.hpp.
#include "dinov2/io.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "dinov2/error.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dinov2/io: safetensors and npy data are little-endian; big-endian hosts are not supported"
#endif

namespace dinov2 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The largest header Python's safetensors accepts.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

[[noreturn]] void bad_argument(const std::string& message) {
  throw InputError::invalid_argument(message);
}

[[noreturn]] void bad_file(const std::string& path, const std::string& problem) {
  throw InputError(fmt::format("dinov2: {}: {}", path, problem));
}

std::string errno_text() { return std::strerror(errno); }

struct DTypeName {
  at::ScalarType type;
  const char* safetensors;
  const char* npy;  // nullptr: no NumPy type
};

constexpr DTypeName kDTypes[] = {
    {at::kBool, "BOOL", "|b1"},  {at::kByte, "U8", "|u1"},         {at::kChar, "I8", "|i1"},
    {at::kShort, "I16", "<i2"},  {at::kInt, "I32", "<i4"},         {at::kLong, "I64", "<i8"},
    {at::kHalf, "F16", "<f2"},   {at::kBFloat16, "BF16", nullptr}, {at::kFloat, "F32", "<f4"},
    {at::kDouble, "F64", "<f8"},
};

const DTypeName* find_dtype(at::ScalarType type) {
  for (const auto& d : kDTypes) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

// Product of the dimensions, or -1 when a dimension is negative or the product of the non-zero
// dimensions, in bytes of the widest element (8), overflows: LibTorch refuses such a shape even
// when another dimension is 0 (found by fuzz_npy: [2, 7666, ..., 6666666666666, 6, 0, 2]).
int64_t checked_numel(const std::vector<int64_t>& shape) {
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

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A CPU, contiguous view of `t` whose bytes can be written as they are.
at::Tensor host_bytes(const at::Tensor& t) {
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

uint64_t element_size(at::ScalarType t) { return static_cast<uint64_t>(c10::elementSize(t)); }

// Checks a spec list and computes the header; returns the segments in data order.
std::vector<SegmentStream::Segment> plan_safetensors(const std::vector<TensorSpec>& specs,
                                                     const TensorMetadata& metadata,
                                                     std::string& header) {
  json j = json::object();
  std::set<std::string> names;
  std::vector<SegmentStream::Segment> segments;
  uint64_t offset = 0;
  for (const auto& s : specs) {
    if (s.name.empty()) bad_argument("dinov2: safetensors: a tensor name is empty");
    if (s.name == kMetadataKey) {
      bad_argument("dinov2: safetensors: \"__metadata__\" is reserved; rename that tensor");
    }
    if (!names.insert(s.name).second) {
      bad_argument(fmt::format("dinov2: safetensors: the tensor name '{}' is used twice", s.name));
    }
    const int64_t numel = checked_numel(s.shape);
    if (numel < 0) {
      bad_argument(fmt::format("dinov2: safetensors: tensor '{}' has an invalid shape {}", s.name,
                               shape_text(s.shape)));
    }
    const uint64_t nbytes = static_cast<uint64_t>(numel) * element_size(s.dtype);
    j[s.name] = {{"dtype", safetensors_dtype(s.dtype)},
                 {"shape", s.shape},
                 {"data_offsets", {offset, offset + nbytes}}};
    segments.push_back({s.name, s.dtype, nbytes});
    offset += nbytes;
  }
  if (!metadata.empty()) j[kMetadataKey] = metadata;
  // Non-UTF-8 bytes (possible in file paths) become U+FFFD instead of failing the write.
  header = j.dump(-1, ' ', false, json::error_handler_t::replace);
  // Pad with spaces so that the data starts 8-byte aligned, as Python's safetensors does.
  header.append((8 - header.size() % 8) % 8, ' ');
  return segments;
}

std::vector<TensorSpec> specs_of(const NamedTensors& tensors) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) {
      bad_argument(fmt::format("dinov2: safetensors: tensor '{}' is undefined", name));
    }
    safetensors_dtype(t.scalar_type());  // throws for an unsupported dtype
    specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
  return specs;
}

// ---------------------------------------------------------------------------------------------
// .npy headers

std::string npy_header(at::ScalarType dtype, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(2, 3)"; a 1-D shape keeps "(5,)"
  if (shape.size() == 1) dims.resize(dims.size() - 1);
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}",
                                 npy_descr(dtype), dims);
  // Magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  if (dict.size() > 65535) {
    bad_argument(fmt::format("dinov2: npy: the header of shape {} is too long for format 1.0",
                             shape_text(shape)));
  }
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>(dict.size() >> 8));
  return out + dict;
}

// A tiny reader for the Python literal dict of an npy header.
struct NpyDict {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};

NpyDict parse_npy_dict(const std::string& path, const std::string& text) {
  auto fail = [&](const std::string& what) -> void {
    bad_file(path, fmt::format("not a valid .npy header ({}): {}", what, text));
  };
  auto value_of = [&](const std::string& key) -> size_t {
    const size_t k = text.find("'" + key + "'");
    if (k == std::string::npos) fail("no '" + key + "'");
    size_t p = text.find(':', k);
    if (p == std::string::npos) fail("no value for '" + key + "'");
    ++p;
    while (p < text.size() && text[p] == ' ') ++p;
    return p;
  };
  NpyDict d;
  size_t p = value_of("descr");
  if (p >= text.size() || (text[p] != '\'' && text[p] != '"')) fail("descr is not a string");
  const size_t q = text.find(text[p], p + 1);
  if (q == std::string::npos) fail("unterminated descr");
  d.descr = text.substr(p + 1, q - p - 1);
  p = value_of("fortran_order");
  if (text.compare(p, 4, "True") == 0) {
    d.fortran = true;
  } else if (text.compare(p, 5, "False") != 0) {
    fail("fortran_order is neither True nor False");
  }
  p = value_of("shape");
  if (p >= text.size() || text[p] != '(') fail("shape is not a tuple");
  const size_t close = text.find(')', p);
  if (close == std::string::npos) fail("unterminated shape");
  std::string item;
  for (size_t i = p + 1; i <= close; ++i) {
    const char c = text[i];
    if (c == ',' || c == ')') {
      if (!item.empty()) {
        try {
          size_t used = 0;
          const long long v = std::stoll(item, &used);
          if (used != item.size() || v < 0) fail("bad dimension '" + item + "'");
          d.shape.push_back(v);
        } catch (const std::logic_error&) {
          fail("bad dimension '" + item + "'");
        }
      }
      item.clear();
    } else if (c != ' ' && c != 'L') {
      item.push_back(c);
    }
  }
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtypes

std::string safetensors_dtype(at::ScalarType type) {
  const DTypeName* d = find_dtype(type);
  if (d == nullptr) {
    bad_argument(fmt::format(
        "dinov2: safetensors: dtype {} is not supported; convert the tensor to one of bool, "
        "uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64",
        c10::toString(type)));
  }
  return d->safetensors;
}

at::ScalarType scalar_type_from_safetensors(const std::string& code) {
  for (const auto& d : kDTypes) {
    if (code == d.safetensors) return d.type;
  }
  throw InputError(fmt::format(
      "dinov2: safetensors dtype '{}' is not supported (supported: BOOL, U8, I8, I16, I32, I64, "
      "F16, BF16, F32, F64)",
      code));
}

std::string npy_descr(at::ScalarType type) {
  const DTypeName* d = find_dtype(type);
  if (d == nullptr || d->npy == nullptr) {
    bad_argument(fmt::format(
        "dinov2: npy: dtype {} has no NumPy equivalent; convert it first (e.g. bfloat16 to "
        "float32)",
        c10::toString(type)));
  }
  return d->npy;
}

int64_t TensorEntry::numel() const { return checked_numel(shape); }

// ---------------------------------------------------------------------------------------------
// safetensors writing

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const TensorMetadata& metadata) {
  NamedTensors ordered = tensors;
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    const bool ad = a.second.defined(), bd = b.second.defined();
    if (!ad || !bd) return ad && !bd;
    return a.second.element_size() > b.second.element_size();
  });
  SafetensorsWriter writer(path, specs_of(ordered), metadata);
  for (const auto& item : ordered) writer.append(item.second);
  writer.commit();
}

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const TensorMetadata& metadata) {
  save_safetensors(path, NamedTensors(tensors.begin(), tensors.end()), metadata);
}

struct SafetensorsWriter::Impl {
  std::unique_ptr<SegmentStream> stream;
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<TensorSpec> specs,
                                     const TensorMetadata& metadata)
    : impl_(std::make_unique<Impl>()) {
  std::string header;
  auto segments = plan_safetensors(specs, metadata, header);
  auto file = std::make_unique<AtomicFile>(path);
  uint64_t n = header.size();
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
  file->write(prefix, 8);
  file->write(header.data(), header.size());
  impl_->stream = std::make_unique<SegmentStream>(std::move(file), std::move(segments));
}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::append(const at::Tensor& data) {
  if (!impl_) bad_argument("dinov2: SafetensorsWriter::append after the writer was moved from");
  impl_->stream->append(data);
}

void SafetensorsWriter::commit() {
  if (!impl_) bad_argument("dinov2: SafetensorsWriter::commit after the writer was moved from");
  impl_->stream->commit();
  impl_.reset();
}

// ---------------------------------------------------------------------------------------------
// safetensors reading

struct SafetensorsReader::Impl {
  std::string path;
  mutable std::ifstream in;
  uint64_t data_start = 0;
  std::vector<TensorEntry> entries;
  std::map<std::string, size_t> index;
  TensorMetadata metadata;
};

SafetensorsReader::SafetensorsReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) bad_file(path, "no such file");
  if (fs::is_directory(status)) bad_file(path, "is a folder, not a safetensors file");
  const uint64_t size = fs::file_size(path, ec);
  if (ec) bad_file(path, fmt::format("cannot read its size ({})", ec.message()));
  m.in.open(path, std::ios::binary);
  if (!m.in) bad_file(path, fmt::format("cannot open the file ({})", errno_text()));
  if (size < 8) {
    bad_file(path, fmt::format("{} bytes is too short for a safetensors file (a header length of "
                               "8 bytes comes first)",
                               size));
  }
  unsigned char prefix[8];
  m.in.read(reinterpret_cast<char*>(prefix), 8);
  if (!m.in) bad_file(path, "cannot read the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  if (n > kMaxHeaderBytes) {
    bad_file(path, fmt::format("the header length {} is over the 100 MB limit; the file is not "
                               "safetensors or is corrupt",
                               n));
  }
  if (n > size - 8) {
    bad_file(path, fmt::format("the header length {} runs past the end of the {}-byte file; the "
                               "file is truncated or not safetensors",
                               n, size));
  }
  std::string header(n, '\0');
  m.in.read(header.data(), static_cast<std::streamsize>(n));
  if (!m.in) bad_file(path, "cannot read the header");
  m.data_start = 8 + n;
  const uint64_t data_size = size - m.data_start;
  if (header.empty() || header[0] != '{') {
    bad_file(path, "the header does not start with '{'; the file is not safetensors");
  }

  json j;
  try {
    j = json::parse(header);
  } catch (const json::exception& e) {
    bad_file(path, fmt::format("the header is not valid JSON ({})", e.what()));
  }
  if (!j.is_object()) bad_file(path, "the header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) bad_file(path, "\"__metadata__\" is not an object");
      for (auto mt = v.begin(); mt != v.end(); ++mt) {
        if (!mt.value().is_string()) {
          bad_file(path, fmt::format("metadata value '{}' is not a string", mt.key()));
        }
        m.metadata[mt.key()] = mt.value().get<std::string>();
      }
      continue;
    }
    auto fail = [&](const std::string& what) {
      bad_file(path, fmt::format("tensor '{}': {}", name, what));
    };
    if (!v.is_object()) fail("its entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail("no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) fail("no shape list");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2) {
      fail("no data_offsets pair");
    }
    TensorEntry e;
    e.name = name;
    try {
      e.dtype = scalar_type_from_safetensors(v["dtype"].get<std::string>());
    } catch (const InputError& err) {
      fail(err.message());
    }
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t{1} << 62) {
        fail(fmt::format("shape {} is not a list of non-negative integers", v["shape"].dump()));
      }
      e.shape.push_back(d.get<int64_t>());
    }
    for (const auto& o : v["data_offsets"]) {
      if (!o.is_number_unsigned()) {
        fail(
            fmt::format("data_offsets {} are not non-negative integers", v["data_offsets"].dump()));
      }
    }
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.end < e.begin) {
      fail(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    }
    const int64_t numel = checked_numel(e.shape);
    if (numel < 0) fail(fmt::format("shape {} overflows", shape_text(e.shape)));
    const uint64_t es = element_size(e.dtype);
    if (static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / es ||
        static_cast<uint64_t>(numel) * es != e.nbytes()) {
      fail(fmt::format("shape {} of {} needs {} bytes but data_offsets [{}, {}] give {}",
                       shape_text(e.shape), v["dtype"].get<std::string>(),
                       static_cast<uint64_t>(numel) * es, e.begin, e.end, e.nbytes()));
    }
    m.entries.push_back(std::move(e));
  }

  std::sort(m.entries.begin(), m.entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const auto& e : m.entries) {
    if (e.begin != expected) {
      bad_file(path, fmt::format("tensor '{}' starts at byte {} of the data but the previous "
                                 "tensor ends at {} (a gap or an overlap); the file is corrupt",
                                 e.name, e.begin, expected));
    }
    expected = e.end;
  }
  if (expected != data_size) {
    bad_file(path, expected > data_size
                       ? fmt::format("the tensors need {} data bytes but the file holds {}; it "
                                     "is truncated",
                                     expected, data_size)
                       : fmt::format("{} bytes follow the last tensor; the file is corrupt",
                                     data_size - expected));
  }
  for (size_t i = 0; i < m.entries.size(); ++i) m.index[m.entries[i].name] = i;
}

SafetensorsReader::SafetensorsReader(SafetensorsReader&&) noexcept = default;
SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&&) noexcept = default;
SafetensorsReader::~SafetensorsReader() = default;

const std::string& SafetensorsReader::path() const { return impl_->path; }
const std::vector<TensorEntry>& SafetensorsReader::entries() const { return impl_->entries; }
const TensorMetadata& SafetensorsReader::metadata() const { return impl_->metadata; }
bool SafetensorsReader::contains(const std::string& name) const {
  return impl_->index.count(name) != 0;
}

const TensorEntry& SafetensorsReader::entry(const std::string& name) const {
  auto it = impl_->index.find(name);
  if (it == impl_->index.end()) {
    std::vector<std::string> names;
    for (const auto& e : impl_->entries) names.push_back(e.name);
    std::sort(names.begin(), names.end());
    if (names.size() > 12) {
      names.resize(12);
      names.push_back("...");
    }
    bad_file(impl_->path,
             fmt::format("has no tensor '{}' (it has: {})", name, fmt::join(names, ", ")));
  }
  return impl_->entries[it->second];
}

at::Tensor SafetensorsReader::read(const std::string& name) const {
  const TensorEntry& e = entry(name);
  return e.shape.empty() ? read_rows(name, 0, 1).reshape({}) : read_rows(name, 0, e.shape[0]);
}

at::Tensor SafetensorsReader::read_rows(const std::string& name, int64_t begin, int64_t end) const {
  const TensorEntry& e = entry(name);
  std::vector<int64_t> shape = e.shape;
  const int64_t rows = shape.empty() ? 1 : shape[0];
  if (begin < 0 || end < begin || end > rows) {
    bad_argument(fmt::format("dinov2: read_rows: rows [{}, {}) are outside tensor '{}' of shape {}",
                             begin, end, name, shape_text(e.shape)));
  }
  if (shape.empty()) shape.push_back(1);
  const uint64_t row_bytes = rows == 0 ? 0 : e.nbytes() / static_cast<uint64_t>(rows);
  shape[0] = end - begin;
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(e.dtype));
  const uint64_t n = row_bytes * static_cast<uint64_t>(end - begin);
  if (n > 0) {
    impl_->in.clear();
    impl_->in.seekg(static_cast<std::streamoff>(impl_->data_start + e.begin +
                                                row_bytes * static_cast<uint64_t>(begin)));
    impl_->in.read(static_cast<char*>(out.data_ptr()), static_cast<std::streamsize>(n));
    if (!impl_->in) {
      bad_file(impl_->path, fmt::format("cannot read the data of tensor '{}' (was the file changed "
                                        "while it was open?)",
                                        name));
    }
  }
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  SafetensorsReader reader(path);
  SafetensorsFile file;
  for (const auto& e : reader.entries()) file.tensors[e.name] = reader.read(e.name);
  file.metadata = reader.metadata();
  return file;
}

// ---------------------------------------------------------------------------------------------
// npy

struct NpyWriter::Impl {
  std::unique_ptr<SegmentStream> stream;
};

NpyWriter::NpyWriter(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape)
    : impl_(std::make_unique<Impl>()) {
  const int64_t numel = checked_numel(shape);
  if (numel < 0) {
    bad_argument(fmt::format("dinov2: npy: invalid shape {}", shape_text(shape)));
  }
  const std::string header = npy_header(dtype, shape);
  auto file = std::make_unique<AtomicFile>(path);
  file->write(header.data(), header.size());
  std::vector<SegmentStream::Segment> segments{
      {fs::path(path).filename().string(), dtype,
       static_cast<uint64_t>(numel) * element_size(dtype)}};
  impl_->stream = std::make_unique<SegmentStream>(std::move(file), std::move(segments));
}

NpyWriter::NpyWriter(NpyWriter&&) noexcept = default;
NpyWriter& NpyWriter::operator=(NpyWriter&&) noexcept = default;
NpyWriter::~NpyWriter() = default;

void NpyWriter::append(const at::Tensor& data) {
  if (!impl_) bad_argument("dinov2: NpyWriter::append after the writer was moved from");
  impl_->stream->append(data);
}

void NpyWriter::commit() {
  if (!impl_) bad_argument("dinov2: NpyWriter::commit after the writer was moved from");
  impl_->stream->commit();
  impl_.reset();
}

void save_npy(const std::string& path, const at::Tensor& tensor) {
  if (!tensor.defined()) bad_argument("dinov2: save_npy: the tensor is undefined");
  NpyWriter writer(path, tensor.scalar_type(), tensor.sizes().vec());
  writer.append(tensor);
  writer.commit();
}

at::Tensor load_npy(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) bad_file(path, "no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_file(path, fmt::format("cannot open the file ({})", errno_text()));
  const uint64_t size = fs::file_size(path, ec);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    bad_file(path, "not a .npy file (no \\x93NUMPY magic)");
  }
  const int major = static_cast<unsigned char>(magic[6]);
  uint64_t header_len = 0;
  uint64_t prefix = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (uint64_t{b[1]} << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (uint64_t{b[1]} << 8) | (uint64_t{b[2]} << 16) | (uint64_t{b[3]} << 24);
    prefix = 12;
  } else {
    bad_file(path, fmt::format(".npy format version {} is not supported (1, 2 or 3)", major));
  }
  if (!in || prefix + header_len > size) bad_file(path, "the header is truncated");
  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  if (!in) bad_file(path, "the header is truncated");
  const NpyDict d = parse_npy_dict(path, text);

  // Normalise the byte-order mark: single bytes have none, '=' is native (little-endian here).
  std::string descr = d.descr;
  if (descr.size() == 3 && (descr[0] == '<' || descr[0] == '>' || descr[0] == '=')) {
    if (descr[2] == '1') {
      descr[0] = '|';
    } else if (descr[0] == '>') {
      bad_file(path, fmt::format("big-endian data ('{}') is not supported; save it little-endian",
                                 d.descr));
    } else {
      descr[0] = '<';
    }
  }
  const DTypeName* found = nullptr;
  for (const auto& t : kDTypes) {
    if (t.npy != nullptr && descr == t.npy) found = &t;
  }
  if (found == nullptr) {
    bad_file(path, fmt::format("NumPy dtype '{}' is not supported", d.descr));
  }
  const int64_t numel = checked_numel(d.shape);
  if (numel < 0) {
    bad_file(path, fmt::format("shape {} overflows: its dimensions multiply past 2^60 elements; "
                               "the header is corrupt",
                               shape_text(d.shape)));
  }
  if (static_cast<uint64_t>(numel) > size / element_size(found->type)) {
    bad_file(path, fmt::format("shape {} of '{}' needs more data bytes than the file's {}; it is "
                               "truncated or corrupt",
                               shape_text(d.shape), d.descr, size));
  }
  const uint64_t nbytes = static_cast<uint64_t>(numel) * element_size(found->type);
  if (prefix + header_len + nbytes != size) {
    bad_file(path, fmt::format("shape {} of '{}' needs {} data bytes but the file holds {}; it is "
                               "truncated or corrupt",
                               shape_text(d.shape), d.descr, nbytes, size - prefix - header_len));
  }
  std::vector<int64_t> stored = d.shape;
  if (d.fortran) std::reverse(stored.begin(), stored.end());
  at::Tensor out = at::empty(stored, at::TensorOptions().dtype(found->type));
  if (nbytes > 0) {
    in.read(static_cast<char*>(out.data_ptr()), static_cast<std::streamsize>(nbytes));
    if (!in) bad_file(path, "cannot read the data");
  }
  if (d.fortran && stored.size() > 1) {
    std::vector<int64_t> perm(stored.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(perm.size() - 1 - i);
    out = out.permute(perm).contiguous();
  }
  return out;
}

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace dinov2
