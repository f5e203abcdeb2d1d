// AVX-512 int8 kernels (int8_kernels.hpp), compiled with the AVX2 flags plus -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mavx512vnni; the same results as int8_ref.cpp bit for bit. The unpacked int8_linear is AVX2's.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "int8_kernels.hpp"

namespace mpq::detail::avx512 {
namespace {

inline __m512i q8v(__m512 v, __m512 inv) {
  __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm512_max_ps(r, _mm512_set1_ps(-127.0f));  // NaN in r -> -127, as fmax does (vmaxps returns the 2nd)
  r = _mm512_min_ps(r, _mm512_set1_ps(127.0f));
  return _mm512_cvtps_epi32(r);
}

inline __mmask16 tail_mask(int64_t left) { return static_cast<__mmask16>((1u << (left < 16 ? left : 16)) - 1u); }

inline void quant_span(const float* x, int64_t n, float inv, int8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(q8v(_mm512_loadu_ps(x + i), vinv)));
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    _mm512_mask_cvtepi32_storeu_epi8(q + i, mask, q8v(_mm512_maskz_loadu_ps(mask, x + i), vinv));
  }
}

void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    const __m512 inf = _mm512_set1_ps(INFINITY);
    __m512 m = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(cols - c), xr + c));
      m = _mm512_mask_max_ps(m, _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ), m, a);  // NaN and inf are left out
    }
    const float amax = _mm512_reduce_max_ps(m);
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
    const __m512 vrs = _mm512_set1_ps(rs[r]);
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 mask = tail_mask(cols - c);
      const __m512 s = _mm512_mul_ps(vrs, _mm512_maskz_loadu_ps(mask, cs + c));
      const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + c) : _mm512_setzero_ps();
      const __m512 a = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, ar + c));
      _mm512_mask_storeu_ps(o + c, mask, _mm512_fmadd_ps(a, s, b));
    }
  }
}

// ---- The packed GEMM (layout: mpq/int8.hpp) through VNNI's vpdpbusd, which multiplies unsigned by signed bytes
// and adds each group of 4 products to an int32 lane (no int16 step, so nothing saturates). The weights are the
// unsigned operand, offset by 128 (w ^ 0x80 = w + 128, in [1, 255]); the activations stay signed (-128 allowed).
// Σ (w + 128) x = Σ w x + 128 Σ x, so each row's sum of codes, taken once per call, removes the offset: the
// correction is per row, not per column, and costs no pass over the weights. The sums wrap modulo 2^32 (vpdpbusd
// and vpsubd do), so the result is exact whenever the true sum fits in int32, which the K bound of int8.cpp
// guarantees.

// Rows as the kernel reads them: the codes zero-padded to 4·k4 bytes (a 4-byte broadcast never reads past a row),
// and each row's sum of codes.
void prepare_rows(const int8_t* xq, int64_t m, int64_t k, int64_t k4, int8_t* xp, int32_t* row_sum, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* x = xq + r * k;
    int8_t* o = xp + r * 4 * k4;
    if (k > 0) std::memcpy(o, x, static_cast<size_t>(k));
    std::memset(o + k, 0, static_cast<size_t>(4 * k4 - k));
    int32_t s = 0;
    for (int64_t t = 0; t < k; ++t) s += x[t];
    row_sum[r] = s;
  }
}

// Groups of 4 inputs per pass over a panel of 4 blocks (32 columns): 128 of them are 16 KiB of its weights, which
// stay in L1 while every row passes (Zen 4's L1D is 32 KiB, the Xeons' 48 KiB).
constexpr int64_t kPassGroups = 128;

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// acc (MR rows × 32 int32, the panel's 4 blocks) gets the sums over groups [t0, t1) of MR rows (xp, 4·k4 bytes
// each) × NZ vectors of 2 blocks (wb: the blocks' base pointers), added to what it holds unless first. Lanes 0-7
// of vector v are block 2v's 8 columns, lanes 8-15 block 2v+1's. Not inlined: the loop gets the registers alone.
template <int MR, int NZ>
__attribute__((noinline)) void packed_sums(const int8_t* xp, int64_t k4, const int8_t* const* wb, int64_t t0,
                                           int64_t t1, bool first, int32_t* acc_rows) {
  __m512i acc[MR][NZ];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NZ; ++v)
      acc[r][v] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(acc_rows + 32 * r + 16 * v);
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t t = t0; t < t1; ++t) {
    __m512i w[NZ];
    for (int v = 0; v < NZ; ++v) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[2 * v] + t * 32));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[2 * v + 1] + t * 32));
      w[v] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), offset);
    }
    for (int r = 0; r < MR; ++r) {
      const __m512i bx = broadcast4(xp + r * 4 * k4 + 4 * t);
      for (int v = 0; v < NZ; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], w[v], bx);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NZ; ++v) _mm512_storeu_si512(acc_rows + 32 * r + 16 * v, acc[r][v]);
}

// A row block's codes: within the L2 of the CPUs with AVX-512 (1 MiB Zen 4, 2 MiB Sapphire Rapids) beside the
// weights' passes.
constexpr int64_t kRowBlockBytes = 512 << 10;

constexpr int kRows = 8;  // rows per tile: 8 × 2 accumulators + 2 weight vectors + a broadcast of 32 registers

template <int NZ, int MR>
void rows_tail(const int8_t* xp, int64_t k4, const int8_t* const* wb, int64_t t0, int64_t t1, bool first,
               int32_t* acc, int64_t left) {
  if constexpr (MR > 0) {
    if (left == MR)
      packed_sums<MR, NZ>(xp, k4, wb, t0, t1, first, acc);
    else
      rows_tail<NZ, MR - 1>(xp, k4, wb, t0, t1, first, acc, left);
  }
}

template <int NZ>
void packed_pass(const int8_t* xp, int64_t k4, const int8_t* const* wb, int64_t m, int64_t t0, int64_t t1,
                 int32_t* acc) {
  const bool first = t0 == 0;
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows) packed_sums<kRows, NZ>(xp + i * 4 * k4, k4, wb, t0, t1, first, acc + 32 * i);
  rows_tail<NZ, kRows - 1>(xp + i * 4 * k4, k4, wb, t0, t1, first, acc + 32 * i, m - i);
}

// The m rows × the panel's columns from c0 (NZ · 16, cut at n): the sums over every pass into acc (m × 32 int32),
// then (acc − 128 · row_sum) · (rs · cs) + b stored.
template <int NZ>
void packed_panel(const int8_t* xp, const int32_t* row_sum, int64_t k4, const int8_t* const* wb, int64_t m,
                  int64_t c0, const float* rs, const float* cs, const float* bias, int64_t n, float* out,
                  int32_t* acc) {
  for (int64_t t0 = 0; t0 == 0 || t0 < k4; t0 += kPassGroups)  // one pass even for K = 0: it zeroes acc
    packed_pass<NZ>(xp, k4, wb, m, t0, std::min(k4, t0 + kPassGroups), acc);
  for (int v = 0; v < NZ; ++v) {
    const int64_t col = c0 + 16 * v;
    if (col >= n) break;
    const __mmask16 mask = tail_mask(n - col);
    const __m512 csv = _mm512_maskz_loadu_ps(mask, cs + col);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
    for (int64_t r = 0; r < m; ++r) {
      const int32_t correction = static_cast<int32_t>(static_cast<uint32_t>(row_sum[r]) << 7);  // wraps, as the sums
      const __m512i a = _mm512_sub_epi32(_mm512_loadu_si512(acc + 32 * r + 16 * v), _mm512_set1_epi32(correction));
      const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(_mm512_set1_ps(rs[r]), csv), bv);
      _mm512_mask_storeu_ps(out + r * n + col, mask, y);
    }
  }
}

void int8_linear_packed(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* packed,
                        const float* cs, const float* bias, int64_t n, float* out, int threads) {
  const int64_t k4 = (k + 3) / 4, blocks = (n + 7) / 8, panels = (blocks + 3) / 4;
  std::vector<int8_t> xp(static_cast<size_t>(4 * m * k4));
  std::vector<int32_t> row_sum(static_cast<size_t>(m));
  prepare_rows(xq, m, k, k4, xp.data(), row_sum.data(), threads);
  // Rows in blocks of at most kRowBlockBytes of codes, and within a block the panels outermost: a panel's weights
  // stay in L1 (one pass at a time) while every row of the block passes them, and the block's codes stay in L2
  // while every panel passes them (at 512 rows × 4096 inputs, 2 MiB of codes streamed from L3 for every panel
  // ran at 3.9× fp32 against 5.8× at 128 rows).
  const int64_t block_rows = std::max<int64_t>(kRows, kRowBlockBytes / std::max<int64_t>(1, 4 * k4) / kRows * kRows);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<int32_t> acc(static_cast<size_t>(32 * std::min(m, block_rows)));  // a panel's int32 sums, per thread
    for (int64_t i0 = 0; i0 < m; i0 += block_rows) {
      const int64_t rows = std::min(block_rows, m - i0);
      const int8_t* x = xp.data() + i0 * 4 * k4;
      float* o = out + i0 * n;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t b0 = 4 * p, nb = std::min<int64_t>(4, blocks - b0);
        const int8_t* wb[4];
        for (int64_t i = 0; i < 4; ++i)  // a block past the end reads the last one again; its sums are never stored
          wb[i] = packed + std::min(b0 + i, blocks - 1) * k4 * 32;
        if (nb > 2)
          packed_panel<2>(x, row_sum.data() + i0, k4, wb, rows, 8 * b0, rs + i0, cs, bias, n, o, acc.data());
        else
          packed_panel<1>(x, row_sum.data() + i0, k4, wb, rows, 8 * b0, rs + i0, cs, bias, n, o, acc.data());
      }
    }
  }
}

}  // namespace

const Int8Kernels kInt8{quantize_rows_int8, quant_span, dequantize_int32, avx2::int8_linear,
                        int8_linear_packed};

}  // namespace mpq::detail::avx512
