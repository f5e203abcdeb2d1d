// AVX-512 sensitivity kernel: sixteen values of T per step, quantized once by the shared Quantizer
// (bit-identical to scalar::quantize_one) and dotted with up to eight gradients held in registers. Partial sums of
// at most kFlush products stay in fp32 lanes, then go to double; the tail is one masked step (masked-out lanes
// read as 0 and add Q(0) - 0 = 0 times a zero gradient). Compiled with the AVX-512 flags (only *_avx512.cpp are).
#include <algorithm>
#include <limits>
#include <new>

#include "quantizer_avx512.hpp"

namespace mpq::detail::avx512 {
namespace {

constexpr std::size_t kFlush = 512;  // values per fp32 partial sum

inline double hsum(__m512 v) {
  const __m512d d = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                                  _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
  return _mm512_reduce_add_pd(d);
}

// Q(x) saturated at +-FLT_MAX for the formats that saturate, as fake_quantize does (formats.hpp); lim is +inf for
// the others. y is min's and max's second operand, so a NaN passes with its bits.
inline __m512 sat_limit(const Quantizer& q) {
  return _mm512_set1_ps(saturates_output(q.p) ? finite_max(DType::kF32) : std::numeric_limits<float>::infinity());
}

inline __m512 saturated(const Quantizer& q, __m512 lim, __m512 x) {
  const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), lim);
  return _mm512_max_ps(neg, _mm512_min_ps(lim, q(x)));
}

// K gradients (1..8) against one run of T.
template <int K>
void delta_dot_k(const float* t, const float* g, std::size_t g_stride, std::size_t n, const Quantizer& q,
                 double* acc) {
  const __m512 lim = sat_limit(q);
  for (std::size_t i = 0; i < n;) {
    __m512 a[K];
    for (int k = 0; k < K; ++k) a[k] = _mm512_setzero_ps();
    const std::size_t stop = std::min(n, i + kFlush);
    for (; i < stop; i += 16) {
      const __mmask16 m = lanes(stop - i);
      const __m512 x = _mm512_maskz_loadu_ps(m, t + i);
      const __m512 d = _mm512_sub_ps(saturated(q, lim, x), x);
      for (int k = 0; k < K; ++k) a[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, g + k * g_stride + i), d, a[k]);
    }
    for (int k = 0; k < K; ++k) acc[k] += hsum(a[k]);
  }
}

// NQ quantizers (1..8) of one run of T against one gradient: T and G are loaded once per sixteen values.
template <int NQ>
void delta_dot_multi_k(const float* t, const float* g, std::size_t n, const Quantizer* q, double* acc) {
  __m512 lim[NQ];
  for (int c = 0; c < NQ; ++c) lim[c] = sat_limit(q[c]);
  for (std::size_t i = 0; i < n;) {
    __m512 a[NQ];
    for (int c = 0; c < NQ; ++c) a[c] = _mm512_setzero_ps();
    const std::size_t stop = std::min(n, i + kFlush);
    for (; i < stop; i += 16) {
      const __mmask16 m = lanes(stop - i);
      const __m512 x = _mm512_maskz_loadu_ps(m, t + i), gv = _mm512_maskz_loadu_ps(m, g + i);
      for (int c = 0; c < NQ; ++c) a[c] = _mm512_fmadd_ps(gv, _mm512_sub_ps(saturated(q[c], lim[c], x), x), a[c]);
    }
    for (int c = 0; c < NQ; ++c) acc[c] += hsum(a[c]);
  }
}

#include "sensitivity_table.inc"

}  // namespace

const SensitivityKernels kSensitivity{delta_dot, delta_dot_multi};

}  // namespace mpq::detail::avx512
