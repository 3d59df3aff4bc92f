// SPDX-License-Identifier: Apache-2.0
// The Pillow-compatible resampler (detail/resample.hpp).
#include "detail/resample.hpp"

#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

// SSE2 (every x86-64 CPU) speeds up the 8-bit passes with bit-identical results; other CPUs, or a
// build with DINOV2_NO_SIMD defined, use the scalar loops.
#if defined(__SSE2__) && !defined(DINOV2_NO_SIMD)
#define DINOV2_PREPROCESS_SSE2 1
#include <emmintrin.h>
#endif

namespace dinov2::detail {

namespace {

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

}  // namespace

const Taps& TapCache::get(int64_t in_size, int64_t out_size, int64_t first, int64_t count) {
  auto key = std::make_tuple(in_size, out_size, first, count);
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    it = cache_.emplace(key, make_taps(in_size, out_size, first, count)).first;
  }
  return it->second;
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

}  // namespace dinov2::detail
