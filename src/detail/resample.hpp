// SPDX-License-Identifier: Apache-2.0
// Private to src/: the resampler that reproduces Pillow's antialiased bicubic resize (8-bit images
// with Pillow's fixed-point arithmetic, SSE2 where available; 16-bit and float images in floating
// point), and the row-parallel loop it and the normalisation share. docs/PREPROCESSING.md states
// the formulas.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <map>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "dinov2/preprocess.hpp"

namespace dinov2::detail {

// The taps of outputs [first, first + count) of a 1-D resize from in_size to out_size samples.
// Output i samples the input around (i + 0.5) * scale with the kernel stretched by
// max(scale, 1) (the antialiasing), over a window that is clipped to the image and renormalised
// to sum 1. The arithmetic follows Pillow's order so that the fixed-point weights are identical.
struct Taps {
  int64_t count = 0;
  int ksize = 0;               // stride of the weight arrays
  std::vector<int64_t> start;  // first input sample of each output
  std::vector<int> size;       // samples used by each output
  std::vector<double> weight;  // [count * ksize], normalised to sum 1
  std::vector<int32_t> fixed;  // the same in Pillow's fixed point, for 8-bit images
  // The fixed-point weights split as k = hi * 2048 + lo (lo in [0, 2048)), both int16, in pairs
  // of taps laid out for SSE2's pmaddwd: per output, (ksize + 1) / 2 blocks of
  // {hi_j, hi_j+1} x 4 then {lo_j, lo_j+1} x 4. The products and sums stay exact.
  std::vector<int16_t> split;
  int split_stride = 0;  // int16 values per output in `split`
};

// Coefficient tables are shared between images of one call that have the same size.
class TapCache {
 public:
  const Taps& get(int64_t in_size, int64_t out_size, int64_t first, int64_t count);

 private:
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Taps> cache_;
};

// A resized and cropped image: K = 1 (gray) or 3 (RGB) interleaved channels, uint8 for 8-bit
// inputs, float in [0, 1] otherwise.
struct Resampled {
  int64_t height = 0;
  int64_t width = 0;
  int channels = 3;
  std::vector<uint8_t> bytes;
  std::vector<float> floats;
  bool is_u8() const { return !bytes.empty(); }
};

// Resizes and crops `image` (rows `stride` bytes apart) as `plan` says.
Resampled resample(const ImageView& image, int64_t stride, const ResizePlan& plan, TapCache& cache);

// Rows per parallel chunk so that each chunk does at least ~64k multiply-adds.
inline int64_t grain_rows(int64_t work_per_row) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_row));
}

// Runs f(begin, end) over [first, last) in contiguous chunks of at least `grain` items on up to
// at::get_num_threads() threads, the calling thread included. at::parallel_for is not used: with
// LibTorch's OpenMP backend it is header code that runs serially unless the calling file is
// compiled with -fopenmp.
template <typename F>
void parallel_rows(int64_t first, int64_t last, int64_t grain, const F& f) {
  const int64_t n = last - first;
  if (n <= 0) return;
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t workers =
      at::in_parallel_region() ? 1 : std::min<int64_t>({chunks, at::get_num_threads(), 64});
  if (workers <= 1) {
    f(first, last);
    return;
  }
  const int64_t size = (n + workers - 1) / workers;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  auto run = [&](int64_t w) {
    try {
      const int64_t begin = first + w * size;
      if (begin < last) f(begin, std::min(last, begin + size));
    } catch (...) {
      errors[static_cast<std::size_t>(w)] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  int64_t w = 1;
  try {
    for (; w < workers; ++w) threads.emplace_back(run, w);
  } catch (const std::system_error&) {
    // No more threads available: the calling thread does the remaining chunks.
  }
  for (int64_t rest = w; rest < workers; ++rest) run(rest);
  run(0);
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace dinov2::detail
