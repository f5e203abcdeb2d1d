// Internal, AVX-512 only: the vector load/store and the fake quantizer of kernels_avx512.cpp, for the other
// *_avx512.cpp kernels (the sensitivity kernel). Sixteen lanes and mask registers: the same steps as
// quantizer_avx2.hpp, blends as masked moves, tails as masked loads and stores. Include it ONLY from files compiled
// with the AVX-512 flags: its inline functions must never be instantiated in a file that runs on other CPUs.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels.hpp"

namespace mpq::detail::avx512 {
namespace {

inline __mmask16 lanes(std::size_t left) { return static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u); }

// 16 values from x + i (only the lanes of `mask`; the others read as 0)
template <DType D>
inline __m512 load16(const void* x, std::size_t i, __mmask16 mask = 0xFFFF) {
  switch (D) {
    case DType::kBF16: {
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DType::kF16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x) + i));
    default: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(x) + i);
  }
}

// the lanes of `mask` of v to y + i, rounded to nearest even for bf16 and fp16
template <DType D>
inline void store16(void* y, std::size_t i, __m512 v, __mmask16 mask = 0xFFFF) {
  switch (D) {
    case DType::kBF16: {
      __m512i b = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
      b = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)), 16);
      b = _mm512_mask_mov_epi32(b, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
      _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(y) + i, mask, b);
      break;
    }
    case DType::kF16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + i, mask,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: _mm512_mask_storeu_ps(static_cast<float*>(y) + i, mask, v);
  }
}

// The same steps as scalar::quantize_one (and avx2::Quantizer), sixteen lanes at a time. min and max keep the
// AVX2 operand order, so a NaN lane takes the same value.
struct Quantizer {
  Params p;
  __m512 scale, inv, zp, qmin, qmax, maxv, tiny, magic, inf, nanv;
  __m512i sign_mask, round_bias, trunc_mask, one;
  __m512 negmax, grid_sub;  // grid()'s rounding add (kLeanSat)
  __m512i exp_mask, grid_bias, zero_sign;  // zero_sign: sign_mask where the format has -0, else 0
  __m128i shift;

  Quantizer(const Params& prm, BlockScale s) : p(prm) {
    set_scale(s);
    qmin = _mm512_set1_ps(p.qmin);
    qmax = _mm512_set1_ps(p.qmax);
    maxv = _mm512_set1_ps(p.max);
    inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    const int sh = p.is_int ? 0 : 23 - p.mbits;
    shift = _mm_cvtsi32_si128(sh);
    tiny = magic = grid_sub = _mm512_setzero_ps();
    round_bias = trunc_mask = grid_bias = _mm512_setzero_si512();
    negmax = _mm512_set1_ps(-p.max);
    exp_mask = _mm512_set1_epi32(0x7F800000);
    if (!p.is_int) {
      tiny = _mm512_set1_ps(p.tiny);
      magic = _mm512_set1_ps(p.magic);
      grid_sub = _mm512_set1_ps(1.5f * p.magic);
      grid_bias = _mm512_set1_epi32(static_cast<int>((static_cast<unsigned>(sh) << 23) | 0x00400000u));
      round_bias = _mm512_set1_epi32(static_cast<int>((1u << (sh - 1)) - 1));
      trunc_mask = _mm512_set1_epi32(static_cast<int>(~((1u << sh) - 1u)));
    }
    float nan;
    std::memcpy(&nan, &p.nan_bits, 4);
    nanv = _mm512_set1_ps(nan);
    sign_mask = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    zero_sign = p.neg_zero ? sign_mask : _mm512_setzero_si512();
    one = _mm512_set1_epi32(1);
  }

  void set_scale(BlockScale s) {
    scale = _mm512_set1_ps(s.scale);
    inv = _mm512_set1_ps(s.inv_scale);
    zp = _mm512_set1_ps(s.zero_point);
  }

  // quantize_one's bit steps for a float format (saturating or overflowing to Inf, with or without -0)
  template <bool Saturate, bool NegZero>
  __m512 bit_steps(__m512 v) const {
    const __m512i vb = _mm512_castps_si512(v);
    __m512i sign = _mm512_and_si512(vb, sign_mask);
    __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign_mask, vb));
    if constexpr (Saturate) a = _mm512_min_ps(a, maxv);
    const __mmask16 sub = _mm512_cmp_ps_mask(a, tiny, _CMP_LT_OQ);
    const __m512 rs = _mm512_sub_ps(_mm512_add_ps(a, magic), magic);
    __m512i b = _mm512_castps_si512(a);
    b = _mm512_add_epi32(b, _mm512_add_epi32(round_bias, _mm512_and_si512(_mm512_srl_epi32(b, shift), one)));
    __m512 r = _mm512_mask_blend_ps(sub, _mm512_castsi512_ps(_mm512_and_si512(b, trunc_mask)), rs);
    if constexpr (!Saturate) r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(r, maxv, _CMP_GT_OQ), r, inf);
    if constexpr (!NegZero)
      sign = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_NEQ_OQ), sign);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
  }

  // The grid value q (before the multiply by the scale) of v = x / scale, for the variant F (lean_flags,
  // kernels.hpp), the format's steps fixed at compile time. Exact: quantize_one's q bit for bit, the sign of a zero
  // included; otherwise (the sensitivity kernels) a zero's sign may differ, since y - x is the same for y = +-0.
  template <unsigned F, bool Exact>
  __m512 grid(__m512 v) const {
    __m512 q;
    if constexpr ((F & kLeanInt) != 0) {
      q = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if constexpr ((F & kLeanAsym) != 0 || Exact) q = _mm512_add_ps(q, zp);  // +0 for -0, as quantize_one
      q = _mm512_min_ps(_mm512_max_ps(q, qmin), qmax);
      if constexpr ((F & kLeanAsym) != 0) q = _mm512_sub_ps(q, zp);
    } else if constexpr ((F & kLeanSat) != 0) {
      // Saturate, then round to the format's grid with m = 1.5 * 2^(e + 23 - mbits), e = max(exponent of c,
      // emin): c + m lies in m's binade, whose fp32 step is the grid's step at c (the subnormal one below tiny),
      // and m's own last bit there is even, so the add rounds to nearest, ties to even, as the format does. A
      // zero comes out +0; a non-zero q has c's sign, so OR-ing v's sign in (formats with -0) changes only zeros.
      const __m512 c = _mm512_min_ps(_mm512_max_ps(v, negmax), maxv);
      const __m512i e = _mm512_and_si512(_mm512_castps_si512(c), exp_mask);
      const __m512 m = _mm512_max_ps(_mm512_castsi512_ps(_mm512_add_epi32(e, grid_bias)), grid_sub);
      q = _mm512_sub_ps(_mm512_add_ps(c, m), m);
      if constexpr (Exact)
        q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q),
                                                _mm512_and_si512(_mm512_castps_si512(v), zero_sign)));
    } else {
      q = bit_steps<(F & kLeanSatBits) != 0, (F & kLeanNegZero) != 0>(v);
    }
    return q;
  }

  // Q(x), clamped at +-FLT_MAX where F says it can matter, minus x: the sensitivity kernels' difference, without
  // lean_quant's NaN blend (a NaN x gives a NaN difference whatever Q made of it).
  template <unsigned F>
  __m512 lean_delta(__m512 x) const {
    __m512 y = _mm512_mul_ps(grid<F, false>(_mm512_mul_ps(x, inv)), scale);
    if constexpr ((F & kLeanClamp) != 0) {
      const __m512 lim = _mm512_set1_ps(finite_max(DType::kF32));
      y = _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), _mm512_min_ps(lim, y));
    }
    return _mm512_sub_ps(y, x);
  }

  // scalar::quantize_one bit for bit, NaN pattern included (set after the multiply: an fp8 NaN pattern may be
  // signalling), the format's steps fixed at compile time (variant F).
  template <unsigned F>
  __m512 lean_quant(__m512 x) const {
    const __m512 y = _mm512_mul_ps(grid<F, true>(_mm512_mul_ps(x, inv)), scale);
    __m512 nan_out = nanv;
    if constexpr ((F & kLeanNanSigned) != 0)
      nan_out = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(nanv),
                                                    _mm512_and_si512(_mm512_castps_si512(x), sign_mask)));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, nan_out);
  }
};

}  // namespace
}  // namespace mpq::detail::avx512
