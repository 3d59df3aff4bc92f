// SPDX-License-Identifier: Apache-2.0
// Preprocessing: recipe geometry, a resampler that reproduces Pillow's antialiased bicubic resize,
// normalisation and batching. docs/PREPROCESSING.md states the formulas implemented here.
#include "dinov2/preprocess.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#include "dinov2/error.hpp"
#include "dinov2/model.hpp"

// SSE2 (every x86-64 CPU) speeds up the 8-bit passes with bit-identical results; other CPUs, or a
// build with DINOV2_NO_SIMD defined, use the scalar loops.
#if defined(__SSE2__) && !defined(DINOV2_NO_SIMD)
#define DINOV2_PREPROCESS_SSE2 1
#include <emmintrin.h>
#endif

namespace dinov2 {

namespace {

// ---------------------------------------------------------------------------------------------
// Messages

// Replaces each "{}" of `pattern` with the next argument, streamed. (fmt is not used here, so
// that this file does not depend on which fmt headers come first: the LibTorch wheel bundles its
// own.)
template <typename... Args>
std::string text(const char* pattern, const Args&... args) {
  std::vector<std::string> items;
  (
      [&items](const auto& a) {
        std::ostringstream s;
        s << a;
        items.push_back(s.str());
      }(args),
      ...);
  std::string out;
  std::size_t next = 0;
  for (const char* p = pattern; *p != '\0'; ++p) {
    if (p[0] == '{' && p[1] == '}' && next < items.size()) {
      out += items[next++];
      ++p;
    } else {
      out += *p;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Argument checks

[[noreturn]] void bad_argument(const std::string& message) {
  throw InputError::invalid_argument(message);
}

std::string nearest_multiples(int value) {
  const int below = std::max(1, value / kPatchSize) * kPatchSize;
  const int above = (std::max(0, value) / kPatchSize + 1) * kPatchSize;
  return below == above || below > value ? text("{}", above) : text("{} or {}", below, above);
}

void check_multiple_of_patch(const char* call, const char* what, int value) {
  if (value <= 0 || value % kPatchSize != 0) {
    bad_argument(
        text("dinov2: {}: {} is {}; it must be a positive multiple of {} (the patch size), e.g. {}",
             call, what, value, kPatchSize, nearest_multiples(value)));
  }
}

// Python's round() for a half-integer d / 2 (d >= 0): ties go to the even neighbour, as
// torchvision's centre crop computes int(round((side - crop) / 2.0)).
int64_t half_round_even(int64_t d) {
  int64_t half = d / 2;
  if (d % 2 != 0 && half % 2 != 0) ++half;
  return half;
}

// ---------------------------------------------------------------------------------------------
// Pillow-compatible resampling weights

// Fixed-point precision of Pillow's 8-bit resampler: 32 bits minus 8 for the sample and 2 for
// the overshoot of the bicubic lobes.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

// Keys' cubic convolution kernel with a = -0.5, support 2 (Pillow's BICUBIC filter).
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Clamp a fixed-point sum to a byte. An arithmetic shift rounds toward -inf, so every negative
// sum maps to 0, as in Pillow's lookup table.
inline uint8_t clip8(int32_t sum) {
  const int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

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

Taps make_taps(int64_t in_size, int64_t out_size, int64_t first, int64_t count) {
  Taps t;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  const double inv_filter_scale = 1.0 / filter_scale;
  t.count = count;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.start.resize(static_cast<std::size_t>(count));
  t.size.resize(static_cast<std::size_t>(count));
  t.weight.assign(static_cast<std::size_t>(count * t.ksize), 0.0);
  t.fixed.assign(static_cast<std::size_t>(count * t.ksize), 0);
  for (int64_t i = 0; i < count; ++i) {
    const double center = (static_cast<double>(first + i) + 0.5) * scale;
    // Truncation toward zero, then clamping, as Pillow's (int) casts do.
    int64_t lo = static_cast<int64_t>(center - support + 0.5);
    int64_t hi = static_cast<int64_t>(center + support + 0.5);
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, in_size);
    const int n = static_cast<int>(hi - lo);
    double* w = &t.weight[static_cast<std::size_t>(i * t.ksize)];
    double total = 0.0;
    for (int k = 0; k < n; ++k) {
      w[k] = bicubic_kernel((static_cast<double>(k + lo) - center + 0.5) * inv_filter_scale);
      total += w[k];
    }
    if (total != 0.0) {
      for (int k = 0; k < n; ++k) w[k] /= total;
    }
    int32_t* f = &t.fixed[static_cast<std::size_t>(i * t.ksize)];
    for (int k = 0; k < n; ++k) {
      const double scaled = w[k] * static_cast<double>(1 << kPrecisionBits);
      f[k] = static_cast<int32_t>(w[k] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    t.start[static_cast<std::size_t>(i)] = lo;
    t.size[static_cast<std::size_t>(i)] = n;
  }
  const int pairs = (t.ksize + 1) / 2;
  t.split_stride = pairs * 16;
  t.split.assign(static_cast<std::size_t>(count * t.split_stride), 0);
  for (int64_t i = 0; i < count; ++i) {
    const int32_t* f = &t.fixed[static_cast<std::size_t>(i * t.ksize)];
    int16_t* out = &t.split[static_cast<std::size_t>(i * t.split_stride)];
    const int n = t.size[static_cast<std::size_t>(i)];
    for (int j = 0; j < n; ++j) {
      const int32_t hi = f[j] >> 11;  // floor division, so that lo is never negative
      const int32_t lo = f[j] - hi * 2048;
      int16_t* block = out + (j / 2) * 16 + (j % 2);
      for (int lane = 0; lane < 4; ++lane) {
        block[2 * lane] = static_cast<int16_t>(hi);
        block[8 + 2 * lane] = static_cast<int16_t>(lo);
      }
    }
  }
  return t;
}

// Rows per parallel chunk so that each chunk does at least ~64k multiply-adds.
int64_t grain_rows(int64_t work_per_row) {
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

// ---------------------------------------------------------------------------------------------
// 8-bit path: Pillow's integer arithmetic (horizontal pass, byte rounding, vertical pass)

// Horizontal pass over `rows` source rows starting at row0. The source has C interleaved
// channels; the output has K = 1 (gray) or 3 (RGB) channels, alpha dropped, BGR swapped.
#if defined(DINOV2_PREPROCESS_SSE2)
// One row of the horizontal pass for colour images, 4 bytes per pixel (R, G, B, unused): two taps
// per step with pmaddwd on the split weights, then hi * 2048 + lo + 1/2, >> 22, and saturation to
// bytes, which is exactly Pillow's int32 sum and clip.
void horizontal_row_rgbx_sse2(const uint8_t* rgbx, const Taps& t, uint8_t* out) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i half = _mm_set1_epi32(kHalf);
  for (int64_t i = 0; i < t.count; ++i) {
    const uint8_t* p = rgbx + t.start[static_cast<std::size_t>(i)] * 4;
    const int n = t.size[static_cast<std::size_t>(i)];
    const int16_t* c = &t.split[static_cast<std::size_t>(i * t.split_stride)];
    __m128i hi = zero;
    __m128i lo = zero;
    int j = 0;
    for (; j + 1 < n; j += 2, c += 16) {
      // r0 g0 b0 x0 r1 g1 b1 x1 -> 16-bit r0 r1 g0 g1 b0 b1 x0 x1
      __m128i px =
          _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j * 4)), zero);
      px = _mm_unpacklo_epi16(px, _mm_srli_si128(px, 8));
      hi = _mm_add_epi32(hi,
                         _mm_madd_epi16(px, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c))));
      lo = _mm_add_epi32(
          lo, _mm_madd_epi16(px, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 8))));
    }
    if (j < n) {  // an odd last tap: its partner weight is 0
      int32_t v;
      std::memcpy(&v, p + j * 4, 4);
      const __m128i px = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(v), zero), zero);
      hi = _mm_add_epi32(hi,
                         _mm_madd_epi16(px, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c))));
      lo = _mm_add_epi32(
          lo, _mm_madd_epi16(px, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 8))));
    }
    __m128i sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi, 11), lo), half);
    sum = _mm_srai_epi32(sum, kPrecisionBits);
    sum = _mm_packus_epi16(_mm_packs_epi32(sum, zero), zero);
    const int32_t rgbx_out = _mm_cvtsi128_si32(sum);
    std::memcpy(out + i * 3, &rgbx_out, 3);
  }
}
#endif

template <int C, bool kBGR>
void horizontal_u8(const uint8_t* src, int64_t src_stride, int64_t row0, int64_t rows,
                   const Taps& t, uint8_t* dst) {
  constexpr int K = C == 1 ? 1 : 3;
  const int64_t dst_stride = t.count * K;
  parallel_rows(0, rows, grain_rows(t.count * K * t.ksize), [&](int64_t begin, int64_t end) {
#if defined(DINOV2_PREPROCESS_SSE2)
    if constexpr (K == 3) {
      // Colour rows are first copied to 4 bytes per pixel in RGB order.
      std::vector<uint8_t> rgbx(static_cast<std::size_t>(t.start.back() + t.size.back()) * 4);
      const int64_t first = t.start.front();
      const int64_t last = t.start.back() + t.size.back();
      for (int64_t y = begin; y < end; ++y) {
        const uint8_t* in = src + (row0 + y) * src_stride;
        for (int64_t x = first; x < last; ++x) {
          rgbx[static_cast<std::size_t>(x * 4 + 0)] = in[x * C + (kBGR ? 2 : 0)];
          rgbx[static_cast<std::size_t>(x * 4 + 1)] = in[x * C + 1];
          rgbx[static_cast<std::size_t>(x * 4 + 2)] = in[x * C + (kBGR ? 0 : 2)];
        }
        horizontal_row_rgbx_sse2(rgbx.data(), t, dst + y * dst_stride);
      }
      return;
    }
#endif
    for (int64_t y = begin; y < end; ++y) {
      const uint8_t* in = src + (row0 + y) * src_stride;
      uint8_t* out = dst + y * dst_stride;
      for (int64_t i = 0; i < t.count; ++i) {
        const int32_t* k = &t.fixed[static_cast<std::size_t>(i * t.ksize)];
        const uint8_t* p = in + t.start[static_cast<std::size_t>(i)] * C;
        const int n = t.size[static_cast<std::size_t>(i)];
        if constexpr (K == 1) {
          int32_t s = kHalf;
          for (int j = 0; j < n; ++j) s += static_cast<int32_t>(p[j]) * k[j];
          out[i] = clip8(s);
        } else {
          int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
          for (int j = 0; j < n; ++j) {
            s0 += static_cast<int32_t>(p[j * C + 0]) * k[j];
            s1 += static_cast<int32_t>(p[j * C + 1]) * k[j];
            s2 += static_cast<int32_t>(p[j * C + 2]) * k[j];
          }
          if constexpr (kBGR) std::swap(s0, s2);
          out[i * 3 + 0] = clip8(s0);
          out[i * 3 + 1] = clip8(s1);
          out[i * 3 + 2] = clip8(s2);
        }
      }
    }
  });
}

// Vertical pass: each output row is a weighted sum of whole rows of `src` (row_len samples each),
// accumulated row by row so that the inner loop runs over contiguous memory.
#if defined(DINOV2_PREPROCESS_SSE2)
// Samples [0, x_end) (a multiple of 16) of one output row of the vertical pass: 16 samples at a
// time, two source rows per step interleaved for pmaddwd on the split weights; exact as in
// horizontal_row_rgbx_sse2.
void vertical_row_sse2(const uint8_t* rows, int64_t row_len, int64_t x_end, const int16_t* c, int n,
                       uint8_t* out) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i half = _mm_set1_epi32(kHalf);
  for (int64_t x = 0; x < x_end; x += 16) {
    __m128i h[4] = {zero, zero, zero, zero};
    __m128i l[4] = {zero, zero, zero, zero};
    const int16_t* cc = c;
    for (int r = 0; r < n; r += 2, cc += 16) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + r * row_len + x));
      const __m128i b =
          r + 1 < n
              ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + (r + 1) * row_len + x))
              : zero;  // an odd last row: its partner weight is 0
      const __m128i kh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cc));
      const __m128i kl = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cc + 8));
      const __m128i ab_lo = _mm_unpacklo_epi8(a, b);
      const __m128i ab_hi = _mm_unpackhi_epi8(a, b);
      const __m128i p[4] = {_mm_unpacklo_epi8(ab_lo, zero), _mm_unpackhi_epi8(ab_lo, zero),
                            _mm_unpacklo_epi8(ab_hi, zero), _mm_unpackhi_epi8(ab_hi, zero)};
      for (int q = 0; q < 4; ++q) {
        h[q] = _mm_add_epi32(h[q], _mm_madd_epi16(p[q], kh));
        l[q] = _mm_add_epi32(l[q], _mm_madd_epi16(p[q], kl));
      }
    }
    __m128i v[4];
    for (int q = 0; q < 4; ++q) {
      v[q] = _mm_srai_epi32(_mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(h[q], 11), l[q]), half),
                            kPrecisionBits);
    }
    const __m128i bytes =
        _mm_packus_epi16(_mm_packs_epi32(v[0], v[1]), _mm_packs_epi32(v[2], v[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + x), bytes);
  }
}
#endif

void vertical_u8(const uint8_t* src, int64_t row_len, int64_t row0, const Taps& t, uint8_t* dst) {
  parallel_rows(0, t.count, grain_rows(row_len * t.ksize), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int32_t* k = &t.fixed[static_cast<std::size_t>(j * t.ksize)];
      const uint8_t* rows = src + (t.start[static_cast<std::size_t>(j)] - row0) * row_len;
      const int n = t.size[static_cast<std::size_t>(j)];
      uint8_t* out = dst + j * row_len;
      int64_t x = 0;
#if defined(DINOV2_PREPROCESS_SSE2)
      x = row_len / 16 * 16;
      vertical_row_sse2(rows, row_len, x, &t.split[static_cast<std::size_t>(j * t.split_stride)], n,
                        out);
#endif
      for (; x < row_len; ++x) {
        int32_t s = kHalf;
        for (int r = 0; r < n; ++r) s += static_cast<int32_t>(rows[r * row_len + x]) * k[r];
        out[x] = clip8(s);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Floating path (16-bit and float images): the same taps in double precision with float32
// intermediate storage, as Pillow resizes mode "F" images.

// Copies rows [row0, row0 + rows) as packed RGB (or gray), alpha dropped: bytes stay bytes,
// other samples become float in [0, 1].
template <typename T, typename Out, int C, bool kBGR>
void pack_rows(const ImageView& image, int64_t stride, int64_t row0, int64_t rows, Out* dst) {
  constexpr int K = C == 1 ? 1 : 3;
  const auto* base = static_cast<const unsigned char*>(image.data);
  parallel_rows(0, rows, grain_rows(image.width * K), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const T* in = reinterpret_cast<const T*>(base + (row0 + y) * stride);
      Out* out = dst + y * image.width * K;
      for (int64_t x = 0; x < image.width; ++x) {
        for (int c = 0; c < K; ++c) {
          const T v = in[x * C + (kBGR ? 2 - c : c)];
          if constexpr (std::is_same_v<T, uint16_t>) {
            out[x * K + c] = static_cast<Out>(v) / 65535.0f;
          } else {
            out[x * K + c] = static_cast<Out>(v);
          }
        }
      }
    }
  });
}

void horizontal_f(const float* src, int64_t width, int K, int64_t rows, const Taps& t, float* dst) {
  parallel_rows(0, rows, grain_rows(t.count * K * t.ksize), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const float* in = src + y * width * K;
      float* out = dst + y * t.count * K;
      for (int64_t i = 0; i < t.count; ++i) {
        const double* k = &t.weight[static_cast<std::size_t>(i * t.ksize)];
        const float* p = in + t.start[static_cast<std::size_t>(i)] * K;
        const int n = t.size[static_cast<std::size_t>(i)];
        for (int c = 0; c < K; ++c) {
          double s = 0.0;
          for (int j = 0; j < n; ++j) s += static_cast<double>(p[j * K + c]) * k[j];
          out[i * K + c] = static_cast<float>(s);
        }
      }
    }
  });
}

void vertical_f(const float* src, int64_t row_len, int64_t row0, const Taps& t, float* dst) {
  parallel_rows(0, t.count, grain_rows(row_len * t.ksize), [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<std::size_t>(row_len));
    for (int64_t j = begin; j < end; ++j) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const double* k = &t.weight[static_cast<std::size_t>(j * t.ksize)];
      const int64_t first = t.start[static_cast<std::size_t>(j)] - row0;
      const int n = t.size[static_cast<std::size_t>(j)];
      double* a = acc.data();
      for (int r = 0; r < n; ++r) {
        const float* in = src + (first + r) * row_len;
        const double w = k[r];
        for (int64_t x = 0; x < row_len; ++x) a[x] += static_cast<double>(in[x]) * w;
      }
      float* out = dst + j * row_len;
      for (int64_t x = 0; x < row_len; ++x) out[x] = static_cast<float>(a[x]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// One image through the plan

int bytes_per_sample(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return 1;
    case SampleType::kUInt16:
      return 2;
    case SampleType::kFloat32:
      return 4;
    case SampleType::kFloat64:
      return 8;
  }
  return 0;
}

const char* sample_type_name(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return "uint8";
    case SampleType::kUInt16:
      return "uint16";
    case SampleType::kFloat32:
      return "float32";
    case SampleType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// Checks an ImageView and returns its row stride in bytes.
int64_t checked_stride(const ImageView& image, std::size_t index, std::size_t count) {
  const std::string which = count > 1 ? text("image {}", index) : std::string("image");
  if (image.data == nullptr || image.height <= 0 || image.width <= 0) {
    throw InputError(
        text("dinov2: {} is empty ({}x{} pixels{}); check that it was loaded or decoded correctly",
             which, image.height, image.width, image.data == nullptr ? ", no pixel data" : ""));
  }
  if (image.channels != 1 && image.channels != 3 && image.channels != 4) {
    throw InputError(
        text("dinov2: {} has {} channels; expected 1 (gray), 3 (colour) or 4 (colour and alpha); "
             "convert it to RGB or BGR first",
             which, image.channels));
  }
  const int bytes = bytes_per_sample(image.type);
  if (bytes == 0) {
    throw InputError(
        text("dinov2: {} has an unknown SampleType ({})", which, static_cast<int>(image.type)));
  }
  const int64_t packed = image.width * image.channels * bytes;
  const int64_t stride = image.row_stride == 0 ? packed : image.row_stride;
  if (stride < packed) {
    throw InputError(
        text("dinov2: {} has row_stride {} bytes, less than one row of {} {} pixels with {} "
             "channels ({} bytes); set row_stride to 0 for packed rows",
             which, image.row_stride, image.width, sample_type_name(image.type), image.channels,
             packed));
  }
  return stride;
}

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

// Coefficient tables are shared between images of one call that have the same size.
class TapCache {
 public:
  const Taps& get(int64_t in_size, int64_t out_size, int64_t first, int64_t count) {
    auto key = std::make_tuple(in_size, out_size, first, count);
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      it = cache_.emplace(key, make_taps(in_size, out_size, first, count)).first;
    }
    return it->second;
  }

 private:
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Taps> cache_;
};

template <int C, bool kBGR>
void horizontal_u8_dispatch(const ImageView& image, int64_t stride, int64_t row0, int64_t rows,
                            const Taps& t, uint8_t* dst) {
  horizontal_u8<C, kBGR>(static_cast<const uint8_t*>(image.data), stride, row0, rows, t, dst);
}

template <typename T, typename Out>
void pack_dispatch(const ImageView& image, int64_t stride, int64_t row0, int64_t rows, Out* dst) {
  const bool bgr = image.order == ChannelOrder::kBGR;
  switch (image.channels) {
    case 1:
      pack_rows<T, Out, 1, false>(image, stride, row0, rows, dst);
      break;
    case 3:
      bgr ? pack_rows<T, Out, 3, true>(image, stride, row0, rows, dst)
          : pack_rows<T, Out, 3, false>(image, stride, row0, rows, dst);
      break;
    default:
      bgr ? pack_rows<T, Out, 4, true>(image, stride, row0, rows, dst)
          : pack_rows<T, Out, 4, false>(image, stride, row0, rows, dst);
      break;
  }
}

Resampled resample(const ImageView& image, int64_t stride, const ResizePlan& plan,
                   TapCache& cache) {
  Resampled r;
  r.height = plan.grid.height();
  r.width = plan.grid.width();
  r.channels = image.channels == 1 ? 1 : 3;
  const int K = r.channels;
  const Taps& tx = cache.get(image.width, plan.resized_width, plan.crop_left, r.width);
  const Taps& ty = cache.get(image.height, plan.resized_height, plan.crop_top, r.height);
  // Source rows that the vertical pass reads.
  const int64_t row0 = ty.start.front();
  const int64_t row1 = ty.start.back() + ty.size.back();
  const int64_t rows = row1 - row0;
  const int64_t out_row_len = r.width * K;
  const int64_t in_row_len = image.width * K;
  // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
  // pixels as the width (earlier versions always start with the horizontal pass). The order
  // matters for 8-bit images, which are rounded to bytes between the passes.
  const int64_t height_loss = image.height - plan.resized_height;
  const bool vertical_first =
      height_loss > 0 && height_loss > 2 * (image.width - plan.resized_width);

  if (image.type == SampleType::kUInt8) {
    r.bytes.resize(static_cast<std::size_t>(r.height * out_row_len));
    const bool bgr = image.order == ChannelOrder::kBGR;
    if (vertical_first) {
      std::vector<uint8_t> packed(static_cast<std::size_t>(rows * in_row_len));
      pack_dispatch<uint8_t>(image, stride, row0, rows, packed.data());
      std::vector<uint8_t> temp(static_cast<std::size_t>(r.height * in_row_len));
      vertical_u8(packed.data(), in_row_len, row0, ty, temp.data());
      if (K == 1) {
        horizontal_u8<1, false>(temp.data(), in_row_len, 0, r.height, tx, r.bytes.data());
      } else {
        horizontal_u8<3, false>(temp.data(), in_row_len, 0, r.height, tx, r.bytes.data());
      }
      return r;
    }
    std::vector<uint8_t> temp(static_cast<std::size_t>(rows * out_row_len));
    switch (image.channels) {
      case 1:
        horizontal_u8_dispatch<1, false>(image, stride, row0, rows, tx, temp.data());
        break;
      case 3:
        bgr ? horizontal_u8_dispatch<3, true>(image, stride, row0, rows, tx, temp.data())
            : horizontal_u8_dispatch<3, false>(image, stride, row0, rows, tx, temp.data());
        break;
      default:
        bgr ? horizontal_u8_dispatch<4, true>(image, stride, row0, rows, tx, temp.data())
            : horizontal_u8_dispatch<4, false>(image, stride, row0, rows, tx, temp.data());
        break;
    }
    vertical_u8(temp.data(), out_row_len, row0, ty, r.bytes.data());
    return r;
  }

  std::vector<float> source(static_cast<std::size_t>(rows * in_row_len));
  switch (image.type) {
    case SampleType::kUInt16:
      pack_dispatch<uint16_t>(image, stride, row0, rows, source.data());
      break;
    case SampleType::kFloat32:
      pack_dispatch<float>(image, stride, row0, rows, source.data());
      break;
    default:
      pack_dispatch<double>(image, stride, row0, rows, source.data());
      break;
  }
  r.floats.resize(static_cast<std::size_t>(r.height * out_row_len));
  if (vertical_first) {
    std::vector<float> temp(static_cast<std::size_t>(r.height * in_row_len));
    vertical_f(source.data(), in_row_len, row0, ty, temp.data());
    horizontal_f(temp.data(), image.width, K, r.height, tx, r.floats.data());
  } else {
    std::vector<float> temp(static_cast<std::size_t>(rows * out_row_len));
    horizontal_f(source.data(), image.width, K, rows, tx, temp.data());
    vertical_f(temp.data(), out_row_len, row0, ty, r.floats.data());
  }
  return r;
}

// Writes (x / 255 - mean) / stddev, or (x - mean) / stddev for floats, as [3, H, W] planes. The
// float32 operations are the ones torchvision's ToTensor and Normalize perform.
void normalise_into(const Resampled& r, const Normalization& n, float* dst) {
  const int64_t plane = r.height * r.width;
  const int K = r.channels;
  if (r.is_u8()) {
    float lut[3][256];
    for (int c = 0; c < 3; ++c) {
      for (int v = 0; v < 256; ++v) {
        lut[c][v] = (static_cast<float>(v) / 255.0f - n.mean[c]) / n.stddev[c];
      }
    }
    const uint8_t* src = r.bytes.data();
    parallel_rows(0, plane, 65536, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int c = 0; c < 3; ++c) dst[c * plane + i] = lut[c][src[i * K + (K == 1 ? 0 : c)]];
      }
    });
    return;
  }
  const float* src = r.floats.data();
  parallel_rows(0, plane, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int c = 0; c < 3; ++c) {
        dst[c * plane + i] = (src[i * K + (K == 1 ? 0 : c)] - n.mean[c]) / n.stddev[c];
      }
    }
  });
}

at::Tensor to_hwc_tensor(const Resampled& r) {
  const auto options = at::TensorOptions().dtype(r.is_u8() ? at::kByte : at::kFloat);
  at::Tensor out = at::empty({r.height, r.width, 3}, options);
  const int64_t pixels = r.height * r.width;
  if (r.is_u8()) {
    uint8_t* dst = out.data_ptr<uint8_t>();
    if (r.channels == 3) {
      std::memcpy(dst, r.bytes.data(), r.bytes.size());
    } else {
      for (int64_t i = 0; i < pixels; ++i)
        dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = r.bytes[i];
    }
  } else {
    float* dst = out.data_ptr<float>();
    if (r.channels == 3) {
      std::memcpy(dst, r.floats.data(), r.floats.size() * sizeof(float));
    } else {
      for (int64_t i = 0; i < pixels; ++i) {
        dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = r.floats[static_cast<std::size_t>(i)];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tensors as images

std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return s + "]";
}

bool is_channel_count(int64_t n) { return n == 1 || n == 3 || n == 4; }

// A 2-D or 3-D image tensor made contiguous HWC on the CPU, and its view. The tensor owns the
// pixels the view points to.
struct TensorImage {
  at::Tensor hwc;
  ImageView view;
};

TensorImage tensor_image(const at::Tensor& input, TensorLayout layout, ChannelOrder order,
                         const std::string& which) {
  if (!input.defined()) {
    throw InputError(text("dinov2: {} is an undefined tensor; pass an image tensor", which));
  }
  const auto sizes = input.sizes();
  if (input.dim() != 2 && input.dim() != 3) {
    throw InputError(
        text("dinov2: {} has {} dimensions (shape {}); expected [H, W], [H, W, C] or [C, H, W]",
             which, input.dim(), shape_text(sizes)));
  }
  SampleType type;
  at::Tensor t = input;
  switch (input.scalar_type()) {
    case at::kByte:
      type = SampleType::kUInt8;
      break;
    case at::kUInt16:
      type = SampleType::kUInt16;
      break;
    case at::kFloat:
      type = SampleType::kFloat32;
      break;
    case at::kDouble:
      type = SampleType::kFloat64;
      break;
    case at::kHalf:
    case at::kBFloat16:
      type = SampleType::kFloat32;
      t = t.to(at::kFloat);
      break;
    default:
      throw InputError(
          text("dinov2: {} has dtype {}; expected uint8 (0..255), uint16 (0..65535) or a floating "
               "dtype (0..1); convert it, e.g. with .to(at::kByte) for values 0..255",
               which, c10::toString(input.scalar_type())));
  }
  if (t.dim() == 2) {
    t = t.unsqueeze(2);
  } else {
    TensorLayout chosen = layout;
    const bool hwc = is_channel_count(sizes[2]);
    const bool chw = is_channel_count(sizes[0]);
    if (layout == TensorLayout::kAuto) {
      if (hwc == chw) {
        throw InputError(text(
            "dinov2: cannot tell the layout of {} with shape {}: {}; pass TensorLayout::kHWC or "
            "TensorLayout::kCHW",
            which, shape_text(sizes),
            hwc ? "both the first and the last dimension could be channels"
                : "neither the first nor the last dimension is 1, 3 or 4 channels"));
      }
      chosen = hwc ? TensorLayout::kHWC : TensorLayout::kCHW;
    }
    const int64_t channels = chosen == TensorLayout::kHWC ? sizes[2] : sizes[0];
    if (!is_channel_count(channels)) {
      throw InputError(
          text("dinov2: {} with shape {} has {} channels in the {} layout; expected 1 (gray), 3 "
               "(colour) or 4 (colour and alpha)",
               which, shape_text(sizes), channels, chosen == TensorLayout::kHWC ? "HWC" : "CHW"));
    }
    if (chosen == TensorLayout::kCHW) t = t.permute({1, 2, 0});
  }
  TensorImage out;
  out.hwc = t.cpu().contiguous();
  out.view.data = out.hwc.data_ptr();
  out.view.height = out.hwc.size(0);
  out.view.width = out.hwc.size(1);
  out.view.channels = static_cast<int>(out.hwc.size(2));
  out.view.row_stride = 0;
  out.view.type = type;
  out.view.order = order;
  if (out.view.height == 0 || out.view.width == 0) {
    throw InputError(text("dinov2: {} is empty (shape {}); pass an image with pixels", which,
                          shape_text(sizes)));
  }
  return out;
}

std::vector<TensorImage> tensor_images(const std::vector<at::Tensor>& images, TensorLayout layout,
                                       ChannelOrder order) {
  std::vector<TensorImage> out;
  out.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string which =
        images.size() > 1 ? text("image tensor {}", i) : std::string("image tensor");
    out.push_back(tensor_image(images[i], layout, order, which));
  }
  return out;
}

std::vector<ImageView> views_of(const std::vector<TensorImage>& images) {
  std::vector<ImageView> views;
  views.reserve(images.size());
  for (const auto& image : images) views.push_back(image.view);
  return views;
}

// Runs f, turning LibTorch errors (e.g. an allocation failure) into dinov2 errors.
template <typename F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw RuntimeError(
        text("dinov2: preprocessing failed inside LibTorch: {}", e.what_without_backtrace()));
  }
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// Recipe

Recipe Recipe::square(int size) {
  check_multiple_of_patch(text("Recipe::square({})", size).c_str(), "the size", size);
  return Recipe(Kind::kSquare, size, size, 0);
}

Recipe Recipe::eval_center_crop(int resize, int crop) {
  const std::string call = text("Recipe::eval_center_crop({}, {})", resize, crop);
  check_multiple_of_patch(call.c_str(), "the crop size", crop);
  if (resize < crop) {
    bad_argument(text(
        "dinov2: {}: the shorter side is resized to {}, less than the crop size {}; use a resize "
        "size of at least {} (the official ratio is 256/224)",
        call, resize, crop, crop));
  }
  return Recipe(Kind::kEvalCenterCrop, resize, crop, 0);
}

Recipe Recipe::patch_aligned(int max_side, int64_t max_tokens) {
  const std::string call = text("Recipe::patch_aligned({}, {})", max_side, max_tokens);
  if (max_side <= 0) {
    bad_argument(
        text("dinov2: {}: max_side is {}; it must be positive (e.g. 518)", call, max_side));
  }
  if (max_tokens <= 0) {
    bad_argument(
        text("dinov2: {}: max_tokens is {}; it must be positive (e.g. 16384)", call, max_tokens));
  }
  return Recipe(Kind::kPatchAligned, max_side, 0, max_tokens);
}

Recipe Recipe::resize(int height, int width) {
  const std::string call = text("Recipe::resize({}, {})", height, width);
  check_multiple_of_patch(call.c_str(), "the height", height);
  check_multiple_of_patch(call.c_str(), "the width", width);
  return Recipe(Kind::kResize, height, width, 0);
}

Recipe Recipe::parse(const std::string& input) {
  std::string s;
  for (char ch : input) {
    if (!std::isspace(static_cast<unsigned char>(ch))) s += ch;
  }
  const auto fail = [&input]() {
    bad_argument(
        text("dinov2: cannot read the recipe \"{}\"; expected square(SIZE), "
             "eval_center_crop(RESIZE,CROP), patch_aligned(MAX_SIDE,MAX_TOKENS) or "
             "resize(HEIGHT,WIDTH), or a bare name for the defaults",
             input));
  };
  std::string name = s;
  std::vector<int64_t> args;
  const auto open = s.find('(');
  if (open != std::string::npos) {
    if (s.back() != ')') fail();
    name = s.substr(0, open);
    const std::string inner = s.substr(open + 1, s.size() - open - 2);
    std::size_t pos = 0;
    while (pos <= inner.size()) {
      const auto comma = std::min(inner.find(',', pos), inner.size());
      const std::string item = inner.substr(pos, comma - pos);
      if (item.empty() || item.size() > 18) fail();
      for (std::size_t i = 0; i < item.size(); ++i) {
        if (!std::isdigit(static_cast<unsigned char>(item[i])) && !(i == 0 && item[i] == '-')) {
          fail();
        }
      }
      if (item == "-") fail();
      args.push_back(std::stoll(item));
      pos = comma + 1;
    }
  }
  const auto as_int = [&](int64_t v) {
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) fail();
    return static_cast<int>(v);
  };
  if (name == "square" && args.size() <= 1) {
    return args.empty() ? square() : square(as_int(args[0]));
  }
  if (name == "eval_center_crop" && (args.empty() || args.size() == 2)) {
    return args.empty() ? eval_center_crop() : eval_center_crop(as_int(args[0]), as_int(args[1]));
  }
  if (name == "patch_aligned" && args.size() <= 2) {
    if (args.empty()) return patch_aligned();
    return args.size() == 1 ? patch_aligned(as_int(args[0]))
                            : patch_aligned(as_int(args[0]), args[1]);
  }
  if (name == "resize" && args.size() == 2) return resize(as_int(args[0]), as_int(args[1]));
  fail();
  return square();  // not reached
}

std::string Recipe::to_string() const {
  switch (kind_) {
    case Kind::kSquare:
      return text("square({})", a_);
    case Kind::kEvalCenterCrop:
      return text("eval_center_crop({},{})", a_, b_);
    case Kind::kPatchAligned:
      return text("patch_aligned({},{})", a_, max_tokens_);
    case Kind::kResize:
      return text("resize({},{})", a_, b_);
  }
  return "unknown";
}

int64_t Recipe::token_bound() const {
  switch (kind_) {
    case Kind::kEvalCenterCrop:
      return int64_t{b_ / kPatchSize} * (b_ / kPatchSize);
    case Kind::kPatchAligned: {
      const int64_t side = std::max<int64_t>(1, (a_ + kPatchSize / 2) / kPatchSize);
      // The longer side gets `side` patches, the shorter one at most as many.
      return std::min(max_tokens_, side * side);
    }
    default:
      return int64_t{a_ / kPatchSize} * (b_ / kPatchSize);
  }
}

ResizePlan Recipe::plan(int64_t height, int64_t width) const {
  if (height <= 0 || width <= 0) {
    throw InputError(
        text("dinov2: cannot plan {} for an image of {}x{} pixels; both sides must be positive",
             to_string(), height, width));
  }
  ResizePlan p;
  int64_t out_h = 0;
  int64_t out_w = 0;
  switch (kind_) {
    case Kind::kSquare:
    case Kind::kResize:
      p.resized_height = out_h = a_;
      p.resized_width = out_w = b_;
      break;
    case Kind::kEvalCenterCrop: {
      // torchvision Resize(int): short side -> a_, long side -> int(a_ * long / short).
      const int64_t short_side = std::min(height, width);
      const int64_t long_side = std::max(height, width);
      const auto new_long = static_cast<int64_t>(static_cast<double>(a_ * long_side) /
                                                 static_cast<double>(short_side));
      p.resized_height = height <= width ? a_ : new_long;
      p.resized_width = height <= width ? new_long : a_;
      out_h = out_w = b_;
      p.crop_top = half_round_even(p.resized_height - b_);
      p.crop_left = half_round_even(p.resized_width - b_);
      break;
    }
    case Kind::kPatchAligned: {
      const double scale = static_cast<double>(a_) / static_cast<double>(std::max(height, width));
      const double rows_exact = static_cast<double>(height) * scale / kPatchSize;
      const double cols_exact = static_cast<double>(width) * scale / kPatchSize;
      int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(std::floor(rows_exact + 0.5)));
      int64_t cols = std::max<int64_t>(1, static_cast<int64_t>(std::floor(cols_exact + 0.5)));
      if (rows * cols > max_tokens_) {
        const double shrink =
            std::sqrt(static_cast<double>(max_tokens_) / (rows_exact * cols_exact));
        rows = std::max<int64_t>(1, static_cast<int64_t>(std::floor(rows_exact * shrink)));
        cols = std::max<int64_t>(1, static_cast<int64_t>(std::floor(cols_exact * shrink)));
        // Only when one side was raised to 1 can the product still be too large.
        if (rows * cols > max_tokens_) {
          if (rows == 1) {
            cols = max_tokens_;
          } else {
            rows = max_tokens_ / cols;
          }
        }
      }
      p.resized_height = out_h = rows * kPatchSize;
      p.resized_width = out_w = cols * kPatchSize;
      break;
    }
  }
  if (p.resized_height * p.resized_width > kMaxResizedPixels) {
    throw InputError::too_many_tokens(
        text("dinov2: {} resizes an image of {}x{} pixels to {}x{}, over the limit of "
             "{} pixels (kMaxResizedPixels); crop the image or use another recipe",
             to_string(), height, width, p.resized_height, p.resized_width, kMaxResizedPixels));
  }
  PatchGrid& g = p.grid;
  g.rows = out_h / kPatchSize;
  g.cols = out_w / kPatchSize;
  g.patch_size = kPatchSize;
  g.original_height = height;
  g.original_width = width;
  // Output pixel i of the resized image covers input [i, i + 1) * (input / resized).
  const double sy = static_cast<double>(height) / static_cast<double>(p.resized_height);
  const double sx = static_cast<double>(width) / static_cast<double>(p.resized_width);
  g.crop_y = static_cast<double>(p.crop_top) * sy;
  g.crop_x = static_cast<double>(p.crop_left) * sx;
  g.crop_height = static_cast<double>(out_h) * sy;
  g.crop_width = static_cast<double>(out_w) * sx;
  return p;
}

// -----------------------------------------------------------------------------------------------
// Normalization

Normalization Normalization::from(const std::vector<double>& mean,
                                  const std::vector<double>& stddev) {
  if (mean.size() != 3 || stddev.size() != 3) {
    bad_argument(text(
        "dinov2: normalisation needs 3 means and 3 standard deviations (R, G, B); got {} and {}",
        mean.size(), stddev.size()));
  }
  Normalization n;
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c]) || !std::isfinite(stddev[c]) || stddev[c] <= 0.0) {
      bad_argument(text(
          "dinov2: normalisation channel {} has mean {} and std {}; both must be finite and the "
          "std positive",
          c, mean[c], stddev[c]));
    }
    n.mean[c] = static_cast<float>(mean[c]);
    n.stddev[c] = static_cast<float>(stddev[c]);
  }
  return n;
}

// -----------------------------------------------------------------------------------------------
// Preprocessor

Preprocessor::Preprocessor(Recipe recipe, Normalization normalization)
    : recipe_(recipe), normalization_(normalization) {
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(normalization_.mean[c]) || !std::isfinite(normalization_.stddev[c]) ||
        normalization_.stddev[c] <= 0.0f) {
      bad_argument(text(
          "dinov2: Preprocessor: normalisation channel {} has mean {} and std {}; both must be "
          "finite and the std positive",
          c, normalization_.mean[c], normalization_.stddev[c]));
    }
  }
}

Preprocessor Preprocessor::for_model(const Model& model, Recipe recipe) {
  const ModelInfo& info = model.info();
  if (info.patch_size != kPatchSize) {
    bad_argument(text(
        "dinov2: Preprocessor::for_model: the model '{}' has {}-pixel patches; the recipes plan "
        "{}-pixel patches (every DINOv2 backbone)",
        info.variant, info.patch_size, kPatchSize));
  }
  Normalization normalization;
  normalization.mean = info.mean;
  normalization.stddev = info.std;
  return Preprocessor(recipe, normalization);
}

Batch Preprocessor::operator()(const ImageView& image) const {
  return (*this)(std::vector<ImageView>{image});
}

Batch Preprocessor::operator()(const std::vector<ImageView>& images) const {
  if (images.empty()) {
    throw InputError("dinov2: no images to preprocess; pass at least one");
  }
  return guarded([&] {
    std::vector<int64_t> strides;
    std::vector<ResizePlan> plans;
    for (std::size_t i = 0; i < images.size(); ++i) {
      strides.push_back(checked_stride(images[i], i, images.size()));
      plans.push_back(recipe_.plan(images[i].height, images[i].width));
      const PatchGrid& g0 = plans.front().grid;
      const PatchGrid& g = plans.back().grid;
      if (g.rows != g0.rows || g.cols != g0.cols) {
        throw InputError(text(
            "dinov2: images 0 ({}x{}) and {} ({}x{}) give different model input sizes under {}: "
            "{}x{} and {}x{}; preprocess them separately, use Preprocessor::group_by_shape, or "
            "use a fixed-size recipe (square, resize, eval_center_crop)",
            images[0].height, images[0].width, i, images[i].height, images[i].width,
            recipe_.to_string(), g0.height(), g0.width(), g.height(), g.width()));
      }
    }
    const PatchGrid& g0 = plans.front().grid;
    Batch batch;
    batch.pixels = at::empty({static_cast<int64_t>(images.size()), 3, g0.height(), g0.width()},
                             at::TensorOptions().dtype(at::kFloat));
    float* dst = batch.pixels.data_ptr<float>();
    const int64_t per_image = 3 * g0.height() * g0.width();
    TapCache cache;
    for (std::size_t i = 0; i < images.size(); ++i) {
      const Resampled r = resample(images[i], strides[i], plans[i], cache);
      normalise_into(r, normalization_, dst + static_cast<int64_t>(i) * per_image);
      batch.grids.push_back(plans[i].grid);
    }
    return batch;
  });
}

Batch Preprocessor::operator()(const at::Tensor& images, TensorLayout layout,
                               ChannelOrder order) const {
  if (images.defined() && images.dim() == 4) {
    if (images.size(0) == 0) {
      throw InputError(
          text("dinov2: the image batch tensor {} holds no images", shape_text(images.sizes())));
    }
    return (*this)(images.unbind(0), layout, order);
  }
  const auto held = guarded([&] { return tensor_images({images}, layout, order); });
  return (*this)(views_of(held));
}

Batch Preprocessor::operator()(const std::vector<at::Tensor>& images, TensorLayout layout,
                               ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_images(images, layout, order); });
  return (*this)(views_of(held));
}

std::vector<ShapeGroup> Preprocessor::group_by_shape(const std::vector<ImageView>& images) const {
  std::vector<ShapeGroup> groups;
  std::map<std::pair<int64_t, int64_t>, std::size_t> where;
  std::vector<std::vector<ImageView>> members;
  for (std::size_t i = 0; i < images.size(); ++i) {
    checked_stride(images[i], i, images.size());
    const PatchGrid g = recipe_.plan(images[i].height, images[i].width).grid;
    const auto key = std::make_pair(g.rows, g.cols);
    auto it = where.find(key);
    if (it == where.end()) {
      it = where.emplace(key, groups.size()).first;
      groups.emplace_back();
      members.emplace_back();
    }
    groups[it->second].indices.push_back(i);
    members[it->second].push_back(images[i]);
  }
  for (std::size_t k = 0; k < groups.size(); ++k) groups[k].batch = (*this)(members[k]);
  return groups;
}

std::vector<ShapeGroup> Preprocessor::group_by_shape(const std::vector<at::Tensor>& images,
                                                     TensorLayout layout,
                                                     ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_images(images, layout, order); });
  return group_by_shape(views_of(held));
}

at::Tensor Preprocessor::resized(const ImageView& image) const {
  return guarded([&] {
    const int64_t stride = checked_stride(image, 0, 1);
    const ResizePlan plan = recipe_.plan(image.height, image.width);
    TapCache cache;
    return to_hwc_tensor(resample(image, stride, plan, cache));
  });
}

at::Tensor Preprocessor::resized(const at::Tensor& image, TensorLayout layout,
                                 ChannelOrder order) const {
  const auto held = guarded([&] { return tensor_image(image, layout, order, "image tensor"); });
  return resized(held.view);
}

}  // namespace dinov2
