// AVX2 int8 kernels (int8_kernels.hpp), compiled with -mavx2 -mfma -mf16c; the same results as int8_ref.cpp bit for
// bit.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "int8_kernels.hpp"

namespace mpq::detail::avx2 {
namespace {

inline int8_t q8s(float v) {
  float r = std::nearbyint(v);
  r = std::fmin(std::fmax(r, -127.0f), 127.0f);
  return static_cast<int8_t>(r);
}

inline __m256i q8v(__m256 v, __m256 inv) {
  __m256 r = _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_max_ps(r, _mm256_set1_ps(-127.0f));  // NaN in r -> -127, as fmax does
  r = _mm256_min_ps(r, _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(r);
}

// 32 floats -> 32 int8 in order
inline void store32(const float* x, __m256 inv, int8_t* q) {
  __m256i a = q8v(_mm256_loadu_ps(x), inv), b = q8v(_mm256_loadu_ps(x + 8), inv);
  __m256i c = q8v(_mm256_loadu_ps(x + 16), inv), d = q8v(_mm256_loadu_ps(x + 24), inv);
  __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  __m256i abcd = _mm256_packs_epi16(ab, cd);
  abcd = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), abcd);
}

inline void quant_span(const float* x, int64_t n, float inv, int8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) store32(x + i, vinv, q + i);
  for (; i < n; ++i) q[i] = q8s(x[i] * inv);
}

void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 m = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(xr + c), absmask);
      a = _mm256_and_ps(a, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));  // NaN and inf -> 0
      m = _mm256_max_ps(m, a);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    float amax = 0.0f;
    for (float v : lanes) amax = v > amax ? v : amax;
    for (; c < cols; ++c) {
      const float a = std::fabs(xr[c]);
      if (a < INFINITY && a > amax) amax = a;
    }
    const float s = amax == 0.0f ? 1.0f : std::fmax(amax / 127.0f, FLT_MIN);
    scales[r] = s;
    quant_span(xr, cols, 1.0f / s, q + r * cols);
  }
}

void dequantize_int32(const int32_t* acc, int64_t rows, int64_t cols, const float* rs, const float* cs,
                      const float* bias, float* out, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* ar = acc + r * cols;
    float* o = out + r * cols;
    const float rsv = rs[r];
    const __m256 vrs = _mm256_set1_ps(rsv);
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      __m256 s = _mm256_mul_ps(vrs, _mm256_loadu_ps(cs + c));
      __m256 b = bias ? _mm256_loadu_ps(bias + c) : _mm256_setzero_ps();
      __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + c)));
      _mm256_storeu_ps(o + c, _mm256_fmadd_ps(a, s, b));
    }
    for (; c < cols; ++c) o[c] = std::fma(static_cast<float>(ar[c]), rsv * cs[c], bias ? bias[c] : 0.0f);
  }
}

inline __m256i dot32(__m256i ax, __m256i x, __m256i w, __m256i acc) {
  const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x));  // |x| * (sign(x) w), pairs -> int16
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// sums of the 8 lanes of each of 4 accumulators
inline __m128i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

inline int32_t dot_tail(const int8_t* x, const int8_t* w, int64_t from, int64_t k) {
  int32_t s = 0;
  for (int64_t t = from; t < k; ++t) s += static_cast<int32_t>(x[t]) * static_cast<int32_t>(w[t]);
  return s;
}

inline void emit(float* o, int32_t acc, float rs, float cs, const float* bias, int64_t j) {
  *o = std::fma(static_cast<float>(acc), rs * cs, bias ? bias[j] : 0.0f);
}

}  // namespace

// Outside the anonymous namespace: the AVX-512 table (int8_avx512.cpp) runs this one too.
void int8_linear(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* w, const float* cs,
                 const float* bias, int64_t n, float* out, int threads) {
  const int64_t k32 = k / 32 * 32;
  const int64_t nb = (n + 3) / 4;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t j0 = b * 4;
    const int64_t nj = n - j0 < 4 ? n - j0 : 4;
    if (nj < 4) {  // last partial block: one column at a time
      for (int64_t j = j0; j < n; ++j) {
        const int8_t* wj = w + j * k;
        for (int64_t i = 0; i < m; ++i) {
          const int8_t* xi = xq + i * k;
          __m256i acc = _mm256_setzero_si256();
          for (int64_t t = 0; t < k32; t += 32) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xi + t));
            acc = dot32(_mm256_abs_epi8(x), x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + t)), acc);
          }
          const __m128i s = hsum4(acc, acc, acc, acc);
          emit(out + i * n + j, _mm_cvtsi128_si32(s) + dot_tail(xi, wj, k32, k), rs[i], cs[j], bias, j);
        }
      }
      continue;
    }
    const int8_t* w0 = w + j0 * k;
    const int8_t* w1 = w0 + k;
    const int8_t* w2 = w1 + k;
    const int8_t* w3 = w2 + k;
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) {
      const int8_t* xa = xq + i * k;
      const int8_t* xb = xa + k;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t t = 0; t < k32; t += 32) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + t));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + t));
        const __m256i ax = _mm256_abs_epi8(x), ay = _mm256_abs_epi8(y);
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + t));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + t));
        const __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w2 + t));
        const __m256i v3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w3 + t));
        a0 = dot32(ax, x, v0, a0);
        a1 = dot32(ax, x, v1, a1);
        a2 = dot32(ax, x, v2, a2);
        a3 = dot32(ax, x, v3, a3);
        b0 = dot32(ay, y, v0, b0);
        b1 = dot32(ay, y, v1, b1);
        b2 = dot32(ay, y, v2, b2);
        b3 = dot32(ay, y, v3, b3);
      }
      alignas(16) int32_t sa[4], sb[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(sa), hsum4(a0, a1, a2, a3));
      _mm_store_si128(reinterpret_cast<__m128i*>(sb), hsum4(b0, b1, b2, b3));
      const int8_t* ws[4] = {w0, w1, w2, w3};
      for (int q = 0; q < 4; ++q) {
        emit(out + i * n + j0 + q, sa[q] + dot_tail(xa, ws[q], k32, k), rs[i], cs[j0 + q], bias, j0 + q);
        emit(out + (i + 1) * n + j0 + q, sb[q] + dot_tail(xb, ws[q], k32, k), rs[i + 1], cs[j0 + q], bias, j0 + q);
      }
    }
    for (; i < m; ++i) {
      const int8_t* xa = xq + i * k;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t t = 0; t < k32; t += 32) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + t));
        const __m256i ax = _mm256_abs_epi8(x);
        a0 = dot32(ax, x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + t)), a0);
        a1 = dot32(ax, x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + t)), a1);
        a2 = dot32(ax, x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w2 + t)), a2);
        a3 = dot32(ax, x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w3 + t)), a3);
      }
      alignas(16) int32_t sa[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(sa), hsum4(a0, a1, a2, a3));
      const int8_t* ws[4] = {w0, w1, w2, w3};
      for (int q = 0; q < 4; ++q)
        emit(out + i * n + j0 + q, sa[q] + dot_tail(xa, ws[q], k32, k), rs[i], cs[j0 + q], bias, j0 + q);
    }
  }
}

namespace {

// ---- The packed GEMM (layout: mpq/int8.hpp). One 32-byte load holds 8 columns × 4 inputs; the 4 activation
// bytes of a row are broadcast to every column, so each int32 lane accumulates a whole output and the epilogue
// needs no horizontal sum.

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// The activations as the kernel reads them: per row and group of 4 inputs, the 4 codes then their absolute values
// (8 bytes; |-128| reads as 128 unsigned), zero-padded to k4 groups. One stream per row, not two: two arrays
// whose rows sit a multiple of 4 KiB apart fight over the same L1 sets.
void interleave_rows(const int8_t* xq, int64_t m, int64_t k, int64_t k4, int8_t* xa, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* x = xq + r * k;
    int8_t* o = xa + r * 8 * k4;
    int64_t t = 0;
    for (; t + 16 <= k; t += 16, o += 32) {  // 4 groups: [x0 a0 x1 a1] [x2 a2 x3 a3]
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + t)), a = _mm_abs_epi8(v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_unpacklo_epi32(v, a));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_unpackhi_epi32(v, a));
    }
    for (; t < 4 * k4; t += 4, o += 8)
      for (int q = 0; q < 4; ++q) {
        const int8_t v = t + q < k ? x[t + q] : 0;
        o[q] = v;
        o[4 + q] = static_cast<int8_t>(v < 0 ? -v : v);  // -(-128) wraps to -128: 128 unsigned, as vpabsb
      }
  }
}

// Groups of 4 inputs per pass over a column pair: 256 of them are 16 KiB of its weights, which then stay in L1
// while every row passes (at K = 4096 a whole pair, 64 KiB, did not, and M = 32 ran slower than the unpacked kernel).
constexpr int64_t kPassGroups = 256;

// acc (MR rows × 16 int32, the NR blocks' columns) gets the sums over groups [t0, t1) of MR interleaved rows (xa,
// 8·k4 bytes each) × NR blocks of 8 columns (wb), added to what it holds unless first. Not inlined: alone, the
// loop gets all 16 vector registers (GCC spilled accumulators when the epilogue shared them).
template <int MR, int NR>
__attribute__((noinline)) void packed_sums(const int8_t* xa, const int8_t* wb, int64_t k4, int64_t t0, int64_t t1,
                                           bool first, int32_t* acc_rows) {
  __m256i acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NR; ++v)
      acc[r][v] = first ? _mm256_setzero_si256()
                        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc_rows + 16 * r + 8 * v));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t t = t0; t < t1; ++t) {
    __m256i w[NR];
    for (int v = 0; v < NR; ++v) w[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + (v * k4 + t) * 32));
    for (int r = 0; r < MR; ++r) {
      const int8_t* g = xa + (r * k4 + t) * 8;
      const __m256i bx = broadcast4(g), ba = broadcast4(g + 4);
      for (int v = 0; v < NR; ++v)  // |x| · (sign(x) w): int16 pairs that never saturate (|x| <= 128, |w| <= 127)
        acc[r][v] = _mm256_add_epi32(
            acc[r][v], _mm256_madd_epi16(_mm256_maddubs_epi16(ba, _mm256_sign_epi8(w[v], bx)), ones));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NR; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_rows + 16 * r + 8 * v), acc[r][v]);
}

template <int NR>
void packed_pass(const int8_t* xa, const int8_t* wb, int64_t k4, int64_t m, int64_t t0, int64_t t1, int32_t* acc) {
  const bool first = t0 == 0;
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) packed_sums<4, NR>(xa + i * 8 * k4, wb, k4, t0, t1, first, acc + 16 * i);
  const int8_t* x = xa + i * 8 * k4;
  switch (m - i) {
    case 3: packed_sums<3, NR>(x, wb, k4, t0, t1, first, acc + 16 * i); break;
    case 2: packed_sums<2, NR>(x, wb, k4, t0, t1, first, acc + 16 * i); break;
    case 1: packed_sums<1, NR>(x, wb, k4, t0, t1, first, acc + 16 * i); break;
    default: break;
  }
}

// The m rows × NR blocks of 8 columns from column c0: the sums over every pass into acc (m × 16 int32), then
// acc·(rs·cs) + b stored, the last block masked to n.
template <int NR>
void packed_panel(const int8_t* xa, const int8_t* wb, int64_t k4, int64_t m, int64_t c0, const float* rs,
                  const float* cs, const float* bias, int64_t n, float* out, int32_t* acc) {
  for (int64_t t0 = 0; t0 == 0 || t0 < k4; t0 += kPassGroups)  // one pass even for K = 0: it zeroes acc
    packed_pass<NR>(xa, wb, k4, m, t0, std::min(k4, t0 + kPassGroups), acc);
  for (int v = 0; v < NR; ++v) {
    const int64_t col = c0 + 8 * v, cols = n - col < 8 ? n - col : 8;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 csv = _mm256_maskload_ps(cs + col, mask);
    const __m256 bv = bias ? _mm256_maskload_ps(bias + col, mask) : _mm256_setzero_ps();
    for (int64_t r = 0; r < m; ++r) {
      const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + 16 * r + 8 * v)));
      const __m256 y = _mm256_fmadd_ps(a, _mm256_mul_ps(_mm256_set1_ps(rs[r]), csv), bv);
      float* o = out + r * n + col;
      if (cols == 8)
        _mm256_storeu_ps(o, y);
      else
        _mm256_maskstore_ps(o, mask, y);
    }
  }
}

void int8_linear_packed(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* packed,
                        const float* cs, const float* bias, int64_t n, float* out, int threads) {
  const int64_t k4 = (k + 3) / 4, blocks = (n + 7) / 8, pairs = (blocks + 1) / 2;
  std::vector<int8_t> xa(static_cast<size_t>(8 * m * k4));
  interleave_rows(xq, m, k, k4, xa.data(), threads);
  // column pairs outermost: a pair's weights stay in L1 or L2 (one pass at a time) while every row passes them
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<int32_t> acc(static_cast<size_t>(16 * m));  // one column pair's int32 sums, per thread
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = 2 * p;
      const int8_t* wb = packed + b * k4 * 32;
      if (b + 2 <= blocks)
        packed_panel<2>(xa.data(), wb, k4, m, 8 * b, rs, cs, bias, n, out, acc.data());
      else
        packed_panel<1>(xa.data(), wb, k4, m, 8 * b, rs, cs, bias, n, out, acc.data());
    }
  }
}

}  // namespace

const Int8Kernels kInt8{quantize_rows_int8, quant_span, dequantize_int32, int8_linear, int8_linear_packed};

}  // namespace mpq::detail::avx2
