// AVX-512 sensitivity kernel: sixteen values of T per step, quantized once by the shared Quantizer's lean variant
// (bit-identical to scalar::quantize_one but for NaN patterns) and dotted with up to eight gradients in registers.
// Partial sums of at most kFlush products stay in fp32 lanes, then go to double; the tail is one masked step
// (masked-out lanes read as 0 and add Q(0) - 0 = 0 times a zero gradient). Compiled with the AVX-512 flags (only
// *_avx512.cpp are).
#include <algorithm>
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

// K gradients (1..8) against one run of T, quantizer variant F (lean_flags).
template <unsigned F, int K>
void delta_dot_k(const float* t, const float* g, std::size_t g_stride, std::size_t n, const Quantizer& q,
                 double* acc) {
  for (std::size_t i = 0; i < n;) {
    __m512 a[K];
    for (int k = 0; k < K; ++k) a[k] = _mm512_setzero_ps();
    const std::size_t stop = std::min(n, i + kFlush);
    for (; i < stop; i += 16) {
      const __mmask16 m = lanes(stop - i);
      const __m512 d = q.lean_delta<F>(_mm512_maskz_loadu_ps(m, t + i));
      for (int k = 0; k < K; ++k) a[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, g + k * g_stride + i), d, a[k]);
    }
    for (int k = 0; k < K; ++k) acc[k] += hsum(a[k]);
  }
}

#include "sensitivity_table.inc"

}  // namespace

const SensitivityKernels kSensitivity{delta_dot, delta_dot_multi};

}  // namespace mpq::detail::avx512
