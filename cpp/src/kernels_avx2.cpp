// AVX2 + FMA + F16C kernels: eight values per step, bit-identical to kernels_ref.cpp (the tests force both paths).
// Only *_avx2.cpp files are compiled with -mavx2 -mfma -mf16c.
#include "quantizer_avx2.hpp"

namespace mpq::detail::avx2 {
namespace {

constexpr std::size_t esize(DType d) { return d == DType::kF32 ? 4 : 2; }

// Two accumulator pairs reduced across their lanes (which hold no NaN), joined by the scalar tail x[i, n).
template <DType D>
MinMax reduce_minmax(__m256 lo, __m256 hi, __m256 lo2, __m256 hi2, const void* x, std::size_t i, std::size_t n) {
  lo = _mm256_min_ps(lo, lo2);
  hi = _mm256_max_ps(hi, hi2);
  __m128 l4 = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
  __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
  l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
  h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
  l4 = _mm_min_ss(l4, _mm_shuffle_ps(l4, l4, 1));
  h4 = _mm_max_ss(h4, _mm_shuffle_ps(h4, h4, 1));
  MinMax m{_mm_cvtss_f32(l4), _mm_cvtss_f32(h4)};
  if (i < n) {
    const MinMax t = scalar::minmax(static_cast<const char*>(x) + i * esize(D), D, n - i);
    m.lo = t.lo < m.lo ? t.lo : m.lo;
    m.hi = t.hi > m.hi ? t.hi : m.hi;
  }
  return m;
}

// The finite minimum and maximum: non-finite lanes replaced by +-inf before they join.
template <DType D>
MinMax minmax_finite(const void* x, std::size_t n) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 lo = inf, hi = ninf, lo2 = inf, hi2 = ninf;  // two accumulator pairs: min/max latency, not a chain
  auto step = [&](__m256 v, __m256& l, __m256& h) {
    const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), inf, _CMP_LT_OQ);
    l = _mm256_min_ps(l, _mm256_blendv_ps(inf, v, finite));
    h = _mm256_max_ps(h, _mm256_blendv_ps(ninf, v, finite));
  };
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    step(load8<D>(x, i), lo, hi);
    step(load8<D>(x, i + 8), lo2, hi2);
  }
  if (i + 8 <= n) {
    step(load8<D>(x, i), lo, hi);
    i += 8;
  }
  return reduce_minmax<D>(lo, hi, lo2, hi2, x, i, n);
}

// The same in half the work where the run holds no infinity: min(v, lo) and max(v, hi) return the accumulator
// when v is NaN, so NaN lanes drop out on their own; an infinity would join, so a run whose min or max comes out
// infinite (one with an infinity, or with no finite value at all) is done again by minmax_finite.
template <DType D>
MinMax minmax_t(const void* x, std::size_t n) {
  __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity()), hi = _mm256_sub_ps(_mm256_setzero_ps(), lo);
  __m256 lo2 = lo, hi2 = hi;
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = load8<D>(x, i), b = load8<D>(x, i + 8);
    lo = _mm256_min_ps(a, lo);
    hi = _mm256_max_ps(a, hi);
    lo2 = _mm256_min_ps(b, lo2);
    hi2 = _mm256_max_ps(b, hi2);
  }
  if (i + 8 <= n) {
    const __m256 a = load8<D>(x, i);
    lo = _mm256_min_ps(a, lo);
    hi = _mm256_max_ps(a, hi);
    i += 8;
  }
  const MinMax m = reduce_minmax<D>(lo, hi, lo2, hi2, x, i, n);
  if (std::isinf(m.lo) || std::isinf(m.hi)) return minmax_finite<D>(x, n);
  return m;
}

// q(x) in variant F (Quantizer::lean_quant), saturated at +-finite_max(D) where F says q * scale can reach it
// (scalar::quantize's saturate(): y is the second operand of min and max, which return it unchanged when NaN).
template <DType D, unsigned F>
inline __m256 quantize8(const Quantizer& q, __m256 x) {
  const __m256 y = q.lean_quant<F>(x);
  if constexpr ((F & kLeanClamp) == 0) return y;
  return _mm256_max_ps(_mm256_set1_ps(-finite_max(D)), _mm256_min_ps(_mm256_set1_ps(finite_max(D)), y));
}

template <DType D, unsigned F>
__attribute__((always_inline)) inline void quantize_loop(const Quantizer& q, const void* x, void* y, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) store8<D>(y, i, quantize8<D, F>(q, load8<D>(x, i)));
  if (i == n) return;
  // Tail: through a padded lane buffer so the same vector code rounds it.
  alignas(32) uint8_t in[32] = {}, out[32];
  const std::size_t rest = n - i;
  std::memcpy(in, static_cast<const uint8_t*>(x) + i * esize(D), rest * esize(D));
  store8<D>(out, 0, quantize8<D, F>(q, load8<D>(in, 0)));
  std::memcpy(static_cast<uint8_t*>(y) + i * esize(D), out, rest * esize(D));
}

// A long run works on a local copy of q: through the reference the compiler must assume the stores to y may
// change q's constants and reloads them for every vector (on AVX-512 that made the casts 10-25% slower than the
// code before the compile-time variants); a short block (a group of 32) would pay more for the copy than it saves.
template <DType D, unsigned F>
void quantize_run(const Quantizer& q, const void* x, void* y, std::size_t n) {
  if (n < 256) return quantize_loop<D, F>(q, x, y, n);
  const Quantizer local = q;
  quantize_loop<D, F>(local, x, y, n);
}

#include "format_table.inc"

}  // namespace

const FormatKernels kFormats{minmax, quantize, minmax_blocks, quantize_blocks};

}  // namespace mpq::detail::avx2
