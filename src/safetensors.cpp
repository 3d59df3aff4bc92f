// SPDX-License-Identifier: Apache-2.0
// safetensors files: an atomic streaming writer and a validating reader. The byte layout is stated
// in include/dinov2/io.hpp.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "detail/tensor_file.hpp"
#include "dinov2/io.hpp"

namespace dinov2 {

namespace fs = std::filesystem;
using json = nlohmann::json;
using detail::AtomicFile;
using detail::bad_argument;
using detail::bad_file;
using detail::checked_numel;
using detail::DTypeName;
using detail::element_size;
using detail::errno_text;
using detail::find_dtype;
using detail::host_bytes;
using detail::kDTypes;
using detail::SegmentStream;
using detail::shape_text;

namespace {

// The largest header Python's safetensors accepts.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

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
  detail::append_to_writer(impl_, "SafetensorsWriter", data);
}

void SafetensorsWriter::commit() { detail::commit_writer(impl_, "SafetensorsWriter"); }

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

}  // namespace dinov2
