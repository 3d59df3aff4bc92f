// SPDX-License-Identifier: Apache-2.0
// What the libFuzzer targets share: a scratch file for readers that take a path, the rule that
// only dinov2::Error may leave the library, and a mutator that keeps zip archives valid.
#pragma once

#include <caffe2/serialize/inline_container.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <sstream>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include <unistd.h>

#include "dinov2/error.hpp"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace dinov2::fuzz {

/// A file of this process in $TMPDIR (default /tmp), rewritten for every input, removed at exit.
inline const std::string& scratch_path(const char* suffix) {
  static const std::string path = [&] {
    const char* dir = std::getenv("TMPDIR");
    std::string p = std::string(dir && *dir ? dir : "/tmp") + "/dinov2-fuzz-" +
                    std::to_string(::getpid()) + suffix;
    static const std::string removed_at_exit = p;
    std::atexit([] { std::remove(removed_at_exit.c_str()); });
    return p;
  }();
  return path;
}

/// Writes the input to the scratch file and returns its path.
inline const std::string& write_scratch(const uint8_t* data, size_t size, const char* suffix) {
  const std::string& path = scratch_path(suffix);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
  return path;
}

/// Runs `f`; a dinov2::Error is the expected way to refuse an input. Any other exception is a
/// hole in the library's error boundary: it is printed and the process aborts, which libFuzzer
/// records as a crash with the input that caused it.
template <class F>
void only_dinov2_errors(F&& f) {
  try {
    f();
  } catch (const dinov2::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "a non-dinov2 exception left the library: %s: %s\n", typeid(e).name(),
                 e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "an exception of a non-standard type left the library\n");
    std::abort();
  }
}

/// Aborts with a message when a property that must hold for every accepted input does not.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

/// The records of a PyTorch zip archive (TorchScript files are such archives), in order.
using Records = std::vector<std::pair<std::string, std::string>>;

inline Records read_records(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  caffe2::serialize::PyTorchStreamReader reader(&in);
  Records records;
  for (const auto& name : reader.getAllRecords()) {
    // Written again by the writer itself.
    if (name == ".data/version" || name == ".data/serialization_id") continue;
    auto [ptr, n] = reader.getRecord(name);
    records.emplace_back(name, std::string(static_cast<const char*>(ptr.get()), n));
  }
  return records;
}

inline std::string write_records(const Records& records) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t n) {
    out.append(static_cast<const char*>(buf), n);
    return n;
  });
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
  return out;
}

/// A structure-aware mutation of a TorchScript archive: most of the time one small record (the
/// dinov2 metadata JSON, scripted code, pickles) is mutated and the archive rebuilt with valid
/// CRCs, so that mutants get past the zip layer to the library's own checks; sometimes the raw
/// bytes are mutated, for the zip layer itself.
inline size_t mutate_archive(uint8_t* data, size_t size, size_t max_size, unsigned seed,
                             const char* metadata_record) {
  std::minstd_rand rng(seed);
  if (rng() % 8 == 0) return LLVMFuzzerMutate(data, size, max_size);
  try {
    Records records = read_records(data, size);
    std::vector<size_t> small;
    size_t metadata = records.size();
    for (size_t i = 0; i < records.size(); ++i) {
      if (records[i].first.find(metadata_record) != std::string::npos) metadata = i;
      if (records[i].second.size() <= 65536) small.push_back(i);
    }
    if (small.empty()) return LLVMFuzzerMutate(data, size, max_size);
    // Half the mutations go to the metadata: it is what the library parses and checks.
    const size_t pick =
        metadata < records.size() && rng() % 2 == 0 ? metadata : small[rng() % small.size()];
    std::string& bytes = records[pick].second;
    const size_t room = bytes.size() + 256;
    bytes.resize(room);
    bytes.resize(LLVMFuzzerMutate(reinterpret_cast<uint8_t*>(bytes.data()), room - 256, room));
    const std::string out = write_records(records);
    if (out.size() > max_size) return LLVMFuzzerMutate(data, size, max_size);
    std::memcpy(data, out.data(), out.size());
    return out.size();
  } catch (const std::exception&) {
    return LLVMFuzzerMutate(data, size, max_size);  // not an archive (any more): bytes only
  }
}

}  // namespace dinov2::fuzz
