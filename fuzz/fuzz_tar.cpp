// SPDX-License-Identifier: Apache-2.0
// Tar shard bytes -> dinov2::TarShard: libarchive's listing of a hostile archive (any of the
// compressions it detects), WebDataset keys and side files, and reading every member in order
// and again out of order. Seeds: fuzz/corpus/tar (a WebDataset shard with side files, a repeated
// member and a non-image, a GNU long name, gzip, a cut-short shard).
#include "dinov2/webdataset.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = dinov2::fuzz::write_scratch(data, size, ".tar");
  dinov2::fuzz::only_dinov2_errors([&] {
    const auto limits = dinov2::ImageLimits{}.with_max_file_bytes(1 << 20);
    const dinov2::TarShard shard = dinov2::TarShard::open(path, limits);
    const std::size_t n = shard.samples().size();
    for (std::size_t i = 0; i < n; ++i) {
      dinov2::fuzz::only_dinov2_errors([&] {
        const std::string bytes = shard.read(i);
        const int64_t size = shard.samples()[i].size;
        dinov2::fuzz::require(size < 0 || static_cast<int64_t>(bytes.size()) == size,
                              "a member read whole has its declared size");
      });
    }
    if (n > 1) {  // backwards: the stream starts again
      dinov2::fuzz::only_dinov2_errors([&] { shard.read(0); });
    }
    for (const auto& sample : shard.samples()) {
      for (const auto& [ext, text] : sample.side) {
        dinov2::fuzz::require(text.size() <= dinov2::TarShard::kMaxSideBytes,
                              "side files are kept up to the limit");
      }
    }
  });
  return 0;
}
