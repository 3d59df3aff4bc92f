// SPDX-License-Identifier: Apache-2.0
// .npy files: an atomic streaming writer and a reader. The byte layout is stated in
// include/dinov2/io.hpp.
#include <algorithm>
#include <fstream>

#include "detail/tensor_file.hpp"
#include "dinov2/io.hpp"

namespace dinov2 {

namespace fs = std::filesystem;
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
  detail::append_to_writer(impl_, "NpyWriter", data);
}

void NpyWriter::commit() { detail::commit_writer(impl_, "NpyWriter"); }

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

}  // namespace dinov2
