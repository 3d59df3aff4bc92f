// SPDX-License-Identifier: Apache-2.0
// Shared helpers for the Catch2 tests: the Catch2 v2/v3 include, reference tensors written by the
// Python generators in tests/refgen/, and paths.
#pragma once

#if DINOV2_CATCH_V3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif

// DINOV2_SKIP(reason): leave a test case as skipped, never as a silent pass. Catch2 v3 has SKIP()
// (exit code 4, which catch_discover_tests maps to "skipped"); v2 has none, so the macro prints
// "SKIPPED: <reason>", which tests/CMakeLists.txt tells CTest to report as skipped.
#if DINOV2_CATCH_V3
#define DINOV2_SKIP(reason) SKIP(reason)
#else
#define DINOV2_SKIP(reason)      \
  do {                           \
    WARN("SKIPPED: " << reason); \
    return;                      \
  } while (false)
#endif

#include <torch/serialize.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace dinov2::test {

/// @brief A fresh folder under the system's temporary folder, removed with its contents at the
/// end of the scope.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string name = (std::filesystem::temp_directory_path() / "dinov2_test_XXXXXX").string();
    REQUIRE(::mkdtemp(name.data()) != nullptr);
    path = name;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    // The throwing overload: the error_code one crashed under a CUDA LibTorch that exports its
    // own std::filesystem (tools/dinov2/common.hpp, remove_tree).
    try {
      std::filesystem::remove_all(path);
    } catch (...) {
    }
  }
  /// @brief Writes `bytes` to the file `name` in the folder and returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::filesystem::path file = path / name;
    std::ofstream(file, std::ios::binary) << bytes;
    return file.string();
  }
  /// @brief The path of `name` in the folder.
  std::string file(const std::string& name) const { return (path / name).string(); }
};

/// @brief The substring matcher under its v3 name (v2 calls it Contains).
#if DINOV2_CATCH_V3
using Catch::Matchers::ContainsSubstring;
#else
inline Catch::Matchers::StdString::ContainsMatcher ContainsSubstring(const std::string& s) {
  return Catch::Matchers::Contains(s);
}
#endif

/// @brief The message of the exception of type E that `f` throws; fails the test when `f` throws
/// nothing or another type.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected another exception type, got: " << e.what());
  }
  FAIL("no exception was thrown");
  return {};
}

/// @brief Folder where the CTest fixture writes exported models and reference tensors.
inline std::string data_dir() { return DINOV2_TESTDATA; }
inline std::string data_path(const std::string& name) { return data_dir() + "/" + name; }
inline std::string source_path(const std::string& name) {
  return std::string(DINOV2_SOURCE_DIR) + "/" + name;
}

/// @brief Reads a `torch.save({name: tensor, ...}, path)` file written by a generator.
inline std::map<std::string, at::Tensor> load_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("test data missing: " + path + " (run the refgen fixture)");
  std::vector<char> bytes(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));  // one read, not per char
  auto value = torch::pickle_load(bytes);
  std::map<std::string, at::Tensor> out;
  for (const auto& item : value.toGenericDict()) {
    out.emplace(item.key().toStringRef(), item.value().toTensor());
  }
  return out;
}

/// @brief Largest absolute difference, computed in float32 on the CPU.
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    throw std::runtime_error("shape mismatch in max_abs_diff");
  }
  if (a.numel() == 0) return 0.0;
  return (a.cpu().to(at::kFloat) - b.cpu().to(at::kFloat)).abs().max().item<double>();
}

}  // namespace dinov2::test
