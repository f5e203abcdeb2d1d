// AVX-512 format kernels: sixteen values per step, tails through masked loads and stores, bit-identical to
// kernels_ref.cpp (the tests force every path). Only *_avx512.cpp files are compiled with the AVX-512 flags.
#include "quantizer_avx512.hpp"

namespace mpq::detail::avx512 {
namespace {

constexpr std::size_t esize(DType d) { return d == DType::kF32 ? 4 : 2; }

// The finite minimum and maximum, lanes masked to the finite values of the run.
template <DType D>
MinMax minmax_finite(const void* x, std::size_t n) {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 lo = inf, hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), lo2 = lo, hi2 = hi;
  // only finite lanes (and, in the tail, only lanes inside the run) join the min and max
  auto step = [&](__m512 v, __mmask16 in_run, __m512& l, __m512& h) {
    const __mmask16 finite = _mm512_mask_cmp_ps_mask(in_run, _mm512_abs_ps(v), inf, _CMP_LT_OQ);
    l = _mm512_mask_min_ps(l, finite, l, v);
    h = _mm512_mask_max_ps(h, finite, h, v);
  };
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {  // two accumulator pairs: min/max latency, not a chain
    step(load16<D>(x, i), 0xFFFF, lo, hi);
    step(load16<D>(x, i + 16), 0xFFFF, lo2, hi2);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = lanes(n - i);
    step(load16<D>(x, i, m), m, lo, hi);
  }
  return MinMax{_mm512_reduce_min_ps(_mm512_min_ps(lo, lo2)), _mm512_reduce_max_ps(_mm512_max_ps(hi, hi2))};
}

// The same in half the work where the run holds no infinity: min(v, lo) and max(v, hi) return the accumulator
// when v is NaN, so NaN lanes drop out on their own; an infinity would join, so a run whose min or max comes out
// infinite (one with an infinity, or with no finite value at all) is done again by minmax_finite.
template <DType D>
MinMax minmax_t(const void* x, std::size_t n) {
  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity()), hi = _mm512_sub_ps(_mm512_setzero_ps(), lo);
  __m512 lo2 = lo, hi2 = hi;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = load16<D>(x, i), b = load16<D>(x, i + 16);
    lo = _mm512_min_ps(a, lo);
    hi = _mm512_max_ps(a, hi);
    lo2 = _mm512_min_ps(b, lo2);
    hi2 = _mm512_max_ps(b, hi2);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = lanes(n - i);
    const __m512 a = load16<D>(x, i, m);
    lo = _mm512_mask_min_ps(lo, m, a, lo);
    hi = _mm512_mask_max_ps(hi, m, a, hi);
  }
  const MinMax r{_mm512_reduce_min_ps(_mm512_min_ps(lo, lo2)), _mm512_reduce_max_ps(_mm512_max_ps(hi, hi2))};
  if (std::isinf(r.lo) || std::isinf(r.hi)) return minmax_finite<D>(x, n);
  return r;
}

// q(x) in variant F (Quantizer::lean_quant), saturated at +-finite_max(D) where F says q * scale can reach it
// (scalar::quantize's saturate(): y is the second operand of min and max, which return it unchanged when NaN).
template <DType D, unsigned F>
inline __m512 quantize16(const Quantizer& q, __m512 x) {
  const __m512 y = q.lean_quant<F>(x);
  if constexpr ((F & kLeanClamp) == 0) return y;
  return _mm512_max_ps(_mm512_set1_ps(-finite_max(D)), _mm512_min_ps(_mm512_set1_ps(finite_max(D)), y));
}

template <DType D, unsigned F>
__attribute__((always_inline)) inline void quantize_loop(const Quantizer& q, const void* x, void* y, std::size_t n) {
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) store16<D>(y, i, quantize16<D, F>(q, load16<D>(x, i)));
  if (i < n) {
    const __mmask16 m = lanes(n - i);
    store16<D>(y, i, quantize16<D, F>(q, load16<D>(x, i, m)), m);
  }
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

}  // namespace mpq::detail::avx512
