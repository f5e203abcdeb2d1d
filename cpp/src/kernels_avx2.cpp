// AVX2 + FMA + F16C kernels: eight values per step, bit-identical to kernels_ref.cpp (the tests force both paths).
// Only *_avx2.cpp files are compiled with -mavx2 -mfma -mf16c.
#include "quantizer_avx2.hpp"

namespace mpq::detail::avx2 {

MinMax minmax(const void* x, DType dtype, std::size_t n) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 lo = inf, hi = ninf;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = load8(x, dtype, i);
    const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), inf, _CMP_LT_OQ);
    lo = _mm256_min_ps(lo, _mm256_blendv_ps(inf, v, finite));
    hi = _mm256_max_ps(hi, _mm256_blendv_ps(ninf, v, finite));
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, lo);
  _mm256_store_ps(h, hi);
  MinMax tail = scalar::minmax(dtype == DType::kF32 ? static_cast<const void*>(static_cast<const float*>(x) + i)
                                                    : static_cast<const void*>(static_cast<const uint16_t*>(x) + i),
                               dtype, n - i);
  for (int k = 0; k < 8; ++k) {
    tail.lo = std::fmin(tail.lo, l[k]);
    tail.hi = std::fmax(tail.hi, h[k]);
  }
  return tail;
}

void quantize(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s) {
  const Quantizer q(p, s);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) store8(y, dtype, i, q(load8(x, dtype, i)));
  if (i == n) return;
  // Tail: through a padded lane buffer so the same vector code rounds it.
  alignas(32) uint8_t in[32] = {}, out[32];
  const std::size_t esize = dtype == DType::kF32 ? 4 : 2, rest = n - i;
  std::memcpy(in, static_cast<const uint8_t*>(x) + i * esize, rest * esize);
  store8(out, dtype, 0, q(load8(in, dtype, 0)));
  std::memcpy(static_cast<uint8_t*>(y) + i * esize, out, rest * esize);
}

}  // namespace mpq::detail::avx2
