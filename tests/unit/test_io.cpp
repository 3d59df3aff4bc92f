// SPDX-License-Identifier: Apache-2.0
// safetensors and .npy: round trips, files written by Python's safetensors and NumPy
// (tests/refgen/io_refs.py), atomic writes, and the errors of the reader on corrupt files.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "dinov2/error.hpp"
#include "dinov2/io.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
using dinov2::test::ContainsSubstring;

namespace {

// A fresh folder per test case under the build's test data folder.
std::string scratch(const std::string& name) {
  const fs::path dir = fs::path(dinov2::test::data_dir()) / "io_scratch" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

/// The temporary files a write to `path` left beside it (PATH.tmp-XXXXXX).
std::vector<std::string> temporaries(const std::string& path) {
  std::vector<std::string> found;
  const std::string prefix = fs::path(path).filename().string() + ".tmp";
  for (const auto& entry : fs::directory_iterator(fs::path(path).parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) found.push_back(name);
  }
  return found;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from a header text and a data section, with the 8-byte length prefix.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// One tensor of each supported dtype, with shapes covering scalars, empty and non-contiguous.
dinov2::NamedTensors sample_tensors() {
  at::manual_seed(7);
  dinov2::NamedTensors t;
  t.emplace_back("f32", at::randn({3, 5}));
  t.emplace_back("f32_transposed", at::randn({4, 6}).t());  // non-contiguous input
  t.emplace_back("f16", at::randn({2, 3, 4}).to(at::kHalf));
  t.emplace_back("bf16", at::randn({7}).to(at::kBFloat16));
  t.emplace_back("f64", at::randn({2, 2}, at::kDouble));
  t.emplace_back("i64", at::randint(-(int64_t{1} << 40), int64_t{1} << 40, {4, 2}, at::kLong));
  t.emplace_back("i32", at::randint(-(1 << 30), 1 << 30, {6}, at::kInt));
  t.emplace_back("i16", at::randint(-30000, 30000, {2, 3}, at::kShort));
  t.emplace_back("i8", at::randint(-128, 128, {5}, at::kChar));
  t.emplace_back("u8", at::randint(0, 256, {3, 4, 2}, at::kByte));
  t.emplace_back("bool", at::randint(0, 2, {9}).to(at::kBool));
  t.emplace_back("scalar", at::scalar_tensor(2.5, at::kFloat));
  t.emplace_back("empty", at::zeros({0, 384}));
  return t;
}

template <typename F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const dinov2::InputError& e) {
    return e.what();
  }
  return "(no InputError thrown)";
}

}  // namespace

TEST_CASE("writing a file never touches a file of the user's named like its temporary", "[io]") {
  const std::string path = scratch("user_tmp") + "/out.safetensors";
  const std::string mine = path + ".tmp";
  { std::ofstream(mine, std::ios::binary) << "the user's notes"; }
  dinov2::save_safetensors(path, dinov2::NamedTensors{{"a", at::ones({2})}});
  CHECK(read_bytes(mine) == "the user's notes");
  CHECK(dinov2::load_safetensors(path).tensors.size() == 1);
  CHECK(temporaries(path) == std::vector<std::string>{"out.safetensors.tmp"});
}

TEST_CASE("safetensors round trip keeps every dtype, shape, value and the metadata", "[io]") {
  const std::string path = scratch("roundtrip") + "/all.safetensors";
  const auto tensors = sample_tensors();
  const dinov2::TensorMetadata meta{{"format", "pt"}, {"paths", "[\"a.jpg\", \"ü.png\"]"}};
  dinov2::save_safetensors(path, tensors, meta);
  CHECK(temporaries(path).empty());

  const auto file = dinov2::load_safetensors(path);
  CHECK(file.metadata == meta);
  REQUIRE(file.tensors.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    const at::Tensor& got = file.tensors.at(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(got.is_contiguous());
    CHECK(at::equal(got, t));
  }

  // Wider types come first, so every tensor starts at a multiple of its element size.
  const dinov2::SafetensorsReader reader(path);
  for (const auto& e : reader.entries()) {
    INFO(e.name);
    CHECK(e.begin % c10::elementSize(e.dtype) == 0);
  }
  // The data section starts 8-byte aligned (the header is padded with spaces).
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  CHECK(n % 8 == 0);
}

TEST_CASE("safetensors files written by Python's safetensors package are read exactly", "[io]") {
  const auto expected =
      dinov2::test::load_tensors(dinov2::test::data_path("io_python_expected.pt"));
  const auto file = dinov2::load_safetensors(dinov2::test::data_path("io_python.safetensors"));
  CHECK(file.metadata.at("format") == "pytorch");
  CHECK(file.metadata.at("utf8") == "\xC3\xBCn\xC3\xAF\x63\xC3\xB8\x64\xC3\xA9");  // "ünïcødé"
  REQUIRE(file.tensors.size() == expected.size());
  for (const auto& [name, t] : expected) {
    INFO(name);
    REQUIRE(file.tensors.count(name) == 1);
    const at::Tensor& got = file.tensors.at(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
}

TEST_CASE("read_rows reads a range of rows without loading the rest", "[io]") {
  const std::string path = scratch("rows") + "/rows.safetensors";
  const at::Tensor t = at::arange(5 * 3 * 2, at::kFloat).reshape({5, 3, 2});
  dinov2::save_safetensors(path, dinov2::NamedTensors{{"x", t}});
  const dinov2::SafetensorsReader reader(path);
  CHECK(at::equal(reader.read_rows("x", 1, 4), t.slice(0, 1, 4)));
  CHECK(reader.read_rows("x", 2, 2).sizes() == at::IntArrayRef({0, 3, 2}));
  CHECK_THROWS_AS(reader.read_rows("x", 3, 6), dinov2::Error);
  CHECK_THAT(input_error_of([&] { reader.read("y"); }), ContainsSubstring("has no tensor 'y'"));
}

TEST_CASE("the streaming writer accepts data in pieces and writes what save_safetensors writes",
          "[io]") {
  const std::string dir = scratch("stream");
  const at::Tensor a = at::randn({6, 4});
  const at::Tensor b = at::randn({3, 2}).to(at::kHalf);
  dinov2::save_safetensors(dir + "/whole.safetensors", dinov2::NamedTensors{{"a", a}, {"b", b}},
                           {{"k", "v"}});
  {
    dinov2::SafetensorsWriter w(dir + "/pieces.safetensors",
                                {{"a", at::kFloat, {6, 4}}, {"b", at::kHalf, {3, 2}}},
                                {{"k", "v"}});
    w.append(a.slice(0, 0, 1));
    w.append(a.slice(0, 1, 5));
    w.append(a.slice(0, 5, 6));
    CHECK_FALSE(fs::exists(dir + "/pieces.safetensors"));  // not before commit
    w.append(b[0]);
    w.append(b.slice(0, 1, 3));
    w.commit();
  }
  CHECK(read_bytes(dir + "/whole.safetensors") == read_bytes(dir + "/pieces.safetensors"));
}

TEST_CASE("writer misuse is an error and leaves no file behind", "[io]") {
  const std::string dir = scratch("misuse");
  const std::string path = dir + "/x.safetensors";
  using Specs = std::vector<dinov2::TensorSpec>;
  CHECK_THROWS_AS(
      dinov2::SafetensorsWriter(path, Specs{{"a", at::kFloat, {1}}, {"a", at::kFloat, {1}}}),
      dinov2::Error);
  CHECK_THROWS_AS(dinov2::SafetensorsWriter(path, Specs{{"__metadata__", at::kFloat, {1}}}),
                  dinov2::Error);
  CHECK_THROWS_AS(dinov2::SafetensorsWriter(path, Specs{{"", at::kFloat, {1}}}), dinov2::Error);
  CHECK_THROWS_AS(dinov2::SafetensorsWriter(path, Specs{{"c", at::kComplexFloat, {1}}}),
                  dinov2::Error);
  {
    dinov2::SafetensorsWriter w(path, Specs{{"a", at::kFloat, {2}}});
    CHECK_THROWS_AS(w.append(at::zeros({2}, at::kDouble)), dinov2::Error);  // wrong dtype
    CHECK_THROWS_AS(w.append(at::zeros({3})), dinov2::Error);               // overrun
  }
  {
    dinov2::SafetensorsWriter w(path, Specs{{"a", at::kFloat, {2}}});
    w.append(at::zeros({1}));
    CHECK_THROWS_WITH(w.commit(), ContainsSubstring("has 4 of its 8 bytes"));
  }
  CHECK_FALSE(fs::exists(path));
  CHECK(temporaries(path).empty());

  // An existing file is replaced only by a committed write.
  dinov2::save_safetensors(path, dinov2::NamedTensors{{"old", at::ones({2})}});
  const std::string before = read_bytes(path);
  {
    dinov2::SafetensorsWriter w(path, Specs{{"new", at::kFloat, {2}}});
    w.append(at::zeros({2}));
  }  // destroyed without commit
  CHECK(read_bytes(path) == before);
  CHECK(temporaries(path).empty());
  CHECK_THAT(input_error_of([&] {
               dinov2::save_safetensors(dir + "/no/such/folder/x.safetensors",
                                        dinov2::NamedTensors{{"a", at::ones({1})}});
             }),
             ContainsSubstring("cannot create the file"));
}

TEST_CASE("a corrupt safetensors file is refused with a message naming the problem", "[io]") {
  const std::string dir = scratch("corrupt");
  // A valid reference: "a" F32 [2] at [0, 8), "b" U8 [3] at [8, 11).
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";
  const std::string data(11, '\x01');
  write_bytes(dir + "/ok.safetensors", safetensors_bytes(ok_header, data));
  CHECK(dinov2::load_safetensors(dir + "/ok.safetensors").tensors.size() == 2);

  struct Case {
    const char* what;
    std::string bytes;
    const char* message;
  };
  std::string huge_len(8, '\0');
  huge_len[4] = 1;  // 2^32 bytes
  std::string past_end = safetensors_bytes(ok_header, data);
  past_end[0] = static_cast<char>(0xff);
  const std::vector<Case> cases = {
      {"empty file", "", "too short"},
      {"7 bytes", std::string(7, '\0'), "too short"},
      {"header over 100 MB", huge_len + "{}", "over the 100 MB limit"},
      {"header past the end", past_end, "runs past the end"},
      {"not JSON", safetensors_bytes("{not json", data), "not valid JSON"},
      {"not an object", safetensors_bytes("[1, 2]", ""), "does not start with '{'"},
      {"unknown dtype",
       safetensors_bytes(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})",
                         std::string(8, '\0')),
       "tensor 'a': safetensors dtype 'F8' is not supported"},
      {"negative dimension",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                         std::string(8, '\0')),
       "is not a list of non-negative integers"},
      {"size mismatch",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                         std::string(8, '\0')),
       "needs 12 bytes but data_offsets [0, 8] give 8"},
      {"offsets reversed",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})",
                         std::string(8, '\0')),
       "end before they begin"},
      {"missing field",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0')),
       "no data_offsets pair"},
      {"gap",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                         std::string(5, '\0')),
       "tensor 'b' starts at byte 3 of the data but the previous tensor ends at 2"},
      {"overlap",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                         std::string(4, '\0')),
       "a gap or an overlap"},
      {"truncated data", safetensors_bytes(ok_header, data.substr(0, 9)),
       "need 11 data bytes but the file holds 9; it is truncated"},
      {"trailing bytes", safetensors_bytes(ok_header, data + "xyz"),
       "3 bytes follow the last tensor"},
      {"metadata not strings", safetensors_bytes(R"({"__metadata__":{"n":3}})", ""),
       "metadata value 'n' is not a string"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string path = dir + "/bad.safetensors";
    write_bytes(path, c.bytes);
    const std::string message = input_error_of([&] { dinov2::SafetensorsReader r(path); });
    CHECK_THAT(message, ContainsSubstring(c.message));
    CHECK_THAT(message, ContainsSubstring(path));
    CHECK(message.rfind("dinov2: ", 0) == 0);
  }
  CHECK_THAT(input_error_of([&] { dinov2::SafetensorsReader r(dir + "/absent.safetensors"); }),
             ContainsSubstring("no such file"));
}

TEST_CASE("npy round trip keeps dtype, shape and values, with the header padded to 64 bytes",
          "[io]") {
  const std::string dir = scratch("npy");
  for (const auto& [name, t] : sample_tensors()) {
    if (t.scalar_type() == at::kBFloat16) continue;
    INFO(name);
    const std::string path = dir + "/" + name + ".npy";
    dinov2::save_npy(path, t);
    const std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() > 10);
    CHECK(bytes.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) == 0);
    const size_t header_len = static_cast<unsigned char>(bytes[8]) |
                              (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    CHECK((10 + header_len) % 64 == 0);
    const at::Tensor got = dinov2::load_npy(path);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
  CHECK_THROWS_WITH(dinov2::save_npy(dir + "/bf16.npy", at::zeros({2}, at::kBFloat16)),
                    ContainsSubstring("no NumPy equivalent"));
  CHECK_FALSE(fs::exists(dir + "/bf16.npy"));
}

TEST_CASE("npy files written by NumPy are read exactly, Fortran order included", "[io]") {
  const auto expected = dinov2::test::load_tensors(dinov2::test::data_path("io_numpy_expected.pt"));
  REQUIRE(expected.size() == 9);
  for (const auto& [name, t] : expected) {
    INFO(name);
    const at::Tensor got = dinov2::load_npy(dinov2::test::data_path("io_numpy_" + name + ".npy"));
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
}

TEST_CASE("a truncated or foreign npy file is refused with the reason", "[io]") {
  const std::string dir = scratch("npy_bad");
  dinov2::save_npy(dir + "/ok.npy", at::ones({4, 4}));
  const std::string bytes = read_bytes(dir + "/ok.npy");
  write_bytes(dir + "/short.npy", bytes.substr(0, bytes.size() - 5));
  CHECK_THAT(input_error_of([&] { dinov2::load_npy(dir + "/short.npy"); }),
             ContainsSubstring("truncated or corrupt"));
  write_bytes(dir + "/text.npy", "just text, not numpy");
  CHECK_THAT(input_error_of([&] { dinov2::load_npy(dir + "/text.npy"); }),
             ContainsSubstring("not a .npy file"));
  std::string big_endian = bytes;
  big_endian.replace(big_endian.find("'<f4'"), 5, "'>f4'");
  write_bytes(dir + "/be.npy", big_endian);
  CHECK_THAT(input_error_of([&] { dinov2::load_npy(dir + "/be.npy"); }),
             ContainsSubstring("big-endian"));
  // A header whose shape needs 2^64 bytes: the byte count wraps to 0 in 64 bits, so a check on
  // the product alone would accept the header-only file and ask LibTorch for 2^61 doubles.
  const std::string header =
      "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952, 1), }";
  std::string bomb = std::string("\x93NUMPY\x01\x00", 8);
  const std::string padded = header + std::string(118 - header.size(), ' ') + "\n";
  bomb += std::string(1, static_cast<char>(padded.size() & 0xFF)) +
          std::string(1, static_cast<char>(padded.size() >> 8)) + padded;
  write_bytes(dir + "/bomb.npy", bomb);
  CHECK_THAT(input_error_of([&] { dinov2::load_npy(dir + "/bomb.npy"); }),
             ContainsSubstring("shape [2305843009213693952, 1] overflows"));
  // Found by fuzz_npy: a 0 in the shape made the element count 0, but LibTorch still refused the
  // other dimensions' product with a c10::Error that escaped load_npy.
  const std::string zero_header =
      "{'descr': '<f4', 'fortran_order': False, 'shape': (6666666666666, 7666, 7666, 0), }";
  const std::string zero_padded = zero_header + std::string(118 - zero_header.size(), ' ') + "\n";
  write_bytes(dir + "/zero.npy", std::string("\x93NUMPY\x01\x00", 8) +
                                     std::string(1, static_cast<char>(zero_padded.size() & 0xFF)) +
                                     std::string(1, static_cast<char>(zero_padded.size() >> 8)) +
                                     zero_padded);
  CHECK_THAT(input_error_of([&] { dinov2::load_npy(dir + "/zero.npy"); }),
             ContainsSubstring("shape [6666666666666, 7666, 7666, 0] overflows"));
}

TEST_CASE("the streaming npy writer writes what save_npy writes", "[io]") {
  const std::string dir = scratch("npy_stream");
  const at::Tensor t = at::randn({5, 3, 2});
  dinov2::save_npy(dir + "/whole.npy", t);
  {
    dinov2::NpyWriter w(dir + "/pieces.npy", at::kFloat, {5, 3, 2});
    w.append(t.slice(0, 0, 2));
    w.append(t.slice(0, 2, 5));
    w.commit();
  }
  CHECK(read_bytes(dir + "/whole.npy") == read_bytes(dir + "/pieces.npy"));
}
