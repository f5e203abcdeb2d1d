// AVX2 sensitivity kernel: eight values of T per step, quantized once by the shared Quantizer's lean variant
// (bit-identical to scalar::quantize_one but for NaN patterns) and dotted with up to eight gradients held in
// registers. Partial sums of at most kFlush products stay in fp32 lanes, then go to double. Compiled with -mavx2
// -mfma -mf16c (only *_avx2.cpp files are).
#include <algorithm>
#include <cstring>
#include <new>

#include "quantizer_avx2.hpp"

namespace mpq::detail::avx2 {
namespace {

constexpr std::size_t kFlush = 512;  // values per fp32 partial sum

inline double hsum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(lo), _mm256_cvtps_pd(hi));
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// K gradients (1..8) against one run of T, quantizer variant F (lean_flags).
template <unsigned F, int K>
void delta_dot_k(const float* t, const float* g, std::size_t g_stride, std::size_t n, const Quantizer& q,
                 double* acc) {
  std::size_t i = 0;
  const std::size_t full = n - n % 8;
  while (i < full) {
    __m256 a[K];
    for (int k = 0; k < K; ++k) a[k] = _mm256_setzero_ps();
    const std::size_t stop = std::min(full, i + kFlush);
    for (; i < stop; i += 8) {
      const __m256 d = q.lean_delta<F>(_mm256_loadu_ps(t + i));
      for (int k = 0; k < K; ++k) a[k] = _mm256_fmadd_ps(_mm256_loadu_ps(g + k * g_stride + i), d, a[k]);
    }
    for (int k = 0; k < K; ++k) acc[k] += hsum(a[k]);
  }
  if (i == n) return;
  // Tail: zero-padded lanes give Q(0) - 0 = 0 and a zero gradient.
  alignas(32) float xt[8] = {}, gt[8];
  const std::size_t rest = n - i;
  std::memcpy(xt, t + i, rest * sizeof(float));
  const __m256 d = q.lean_delta<F>(_mm256_load_ps(xt));
  for (int k = 0; k < K; ++k) {
    std::memset(gt, 0, sizeof gt);
    std::memcpy(gt, g + k * g_stride + i, rest * sizeof(float));
    acc[k] += hsum(_mm256_mul_ps(_mm256_load_ps(gt), d));
  }
}

#include "sensitivity_table.inc"

}  // namespace

const SensitivityKernels kSensitivity{delta_dot, delta_dot_multi};

}  // namespace mpq::detail::avx2
