// Internal, AVX2 only: the vector load/store and the fake quantizer of kernels_avx2.cpp, for other *_avx2.cpp
// kernels (the sensitivity kernel). Include it ONLY from files compiled with the AVX2 flags: its inline
// functions must never be instantiated in a file that runs on CPUs without AVX2.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels.hpp"

namespace mpq::detail::avx2 {
namespace {

template <DType D>
inline __m256 load8(const void* x, std::size_t i) {
  switch (D) {
    case DType::kBF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i)));
    default: return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  }
}

template <DType D>
inline void store8(void* y, std::size_t i, __m256 v) {
  switch (D) {
    case DType::kBF16: {
      __m256i b = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
      b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
      const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
      b = _mm256_blendv_epi8(b, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(y) + i), _mm256_castsi256_si128(packed));
      break;
    }
    case DType::kF16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(y) + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: _mm256_storeu_ps(static_cast<float*>(y) + i, v);
  }
}

// Run-time dtype versions, for code that is not hot enough to instantiate per dtype.
inline __m256 load8(const void* x, DType dtype, std::size_t i) {
  return dtype == DType::kBF16 ? load8<DType::kBF16>(x, i)
         : dtype == DType::kF16 ? load8<DType::kF16>(x, i) : load8<DType::kF32>(x, i);
}
inline void store8(void* y, DType dtype, std::size_t i, __m256 v) {
  if (dtype == DType::kBF16) store8<DType::kBF16>(y, i, v);
  else if (dtype == DType::kF16) store8<DType::kF16>(y, i, v);
  else store8<DType::kF32>(y, i, v);
}

// The same steps as scalar::quantize_one, eight lanes at a time.
struct Quantizer {
  Params p;
  __m256 scale, inv, zp, qmin, qmax, maxv, tiny, magic, inf, nanv;
  __m256i sign_mask, round_bias, trunc_mask, one;
  __m256 negmax, grid_sub;  // grid()'s rounding add (kLeanSat)
  __m256i exp_mask, grid_bias, zero_sign;  // zero_sign: sign_mask where the format has -0, else 0
  int sh;

  Quantizer(const Params& prm, BlockScale s) : p(prm) {
    set_scale(s);
    qmin = _mm256_set1_ps(p.qmin);
    qmax = _mm256_set1_ps(p.qmax);
    maxv = _mm256_set1_ps(p.max);
    inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    sh = p.is_int ? 0 : 23 - p.mbits;
    negmax = _mm256_set1_ps(-p.max);
    exp_mask = _mm256_set1_epi32(0x7F800000);
    grid_sub = _mm256_setzero_ps();
    grid_bias = _mm256_setzero_si256();
    if (!p.is_int) {
      tiny = _mm256_set1_ps(p.tiny);
      magic = _mm256_set1_ps(p.magic);
      grid_sub = _mm256_set1_ps(1.5f * p.magic);
      grid_bias = _mm256_set1_epi32(static_cast<int>((static_cast<unsigned>(sh) << 23) | 0x00400000u));
      round_bias = _mm256_set1_epi32(static_cast<int>((1u << (sh - 1)) - 1));
      trunc_mask = _mm256_set1_epi32(static_cast<int>(~((1u << sh) - 1u)));
    }
    float nan;
    std::memcpy(&nan, &p.nan_bits, 4);
    nanv = _mm256_set1_ps(nan);
    sign_mask = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    zero_sign = p.neg_zero ? sign_mask : _mm256_setzero_si256();
    one = _mm256_set1_epi32(1);
  }

  void set_scale(BlockScale s) {
    scale = _mm256_set1_ps(s.scale);
    inv = _mm256_set1_ps(s.inv_scale);
    zp = _mm256_set1_ps(s.zero_point);
  }

  // quantize_one's bit steps for a float format (saturating or overflowing to Inf, with or without -0)
  template <bool Saturate, bool NegZero>
  __m256 bit_steps(__m256 v) const {
    __m256i sign = _mm256_and_si256(_mm256_castps_si256(v), sign_mask);
    __m256 a = _mm256_castsi256_ps(_mm256_andnot_si256(sign_mask, _mm256_castps_si256(v)));
    if constexpr (Saturate) a = _mm256_min_ps(a, maxv);
    const __m256 sub = _mm256_cmp_ps(a, tiny, _CMP_LT_OQ);
    const __m256 rs = _mm256_sub_ps(_mm256_add_ps(a, magic), magic);
    __m256i b = _mm256_castps_si256(a);
    b = _mm256_add_epi32(b, _mm256_add_epi32(round_bias, _mm256_and_si256(_mm256_srli_epi32(b, sh), one)));
    __m256 r = _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_and_si256(b, trunc_mask)), rs, sub);
    if constexpr (!Saturate) r = _mm256_blendv_ps(r, inf, _mm256_cmp_ps(r, maxv, _CMP_GT_OQ));
    if constexpr (!NegZero)
      sign = _mm256_and_si256(sign, _mm256_castps_si256(_mm256_cmp_ps(r, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(r), sign));
  }

  // The grid value q of v = x / scale for the variant F: quantizer_avx512.hpp's grid(), eight lanes (why the
  // rounding add is the format's round to nearest even is said there).
  template <unsigned F, bool Exact>
  __m256 grid(__m256 v) const {
    __m256 q;
    if constexpr ((F & kLeanInt) != 0) {
      q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if constexpr ((F & kLeanAsym) != 0 || Exact) q = _mm256_add_ps(q, zp);  // +0 for -0, as quantize_one
      q = _mm256_min_ps(_mm256_max_ps(q, qmin), qmax);
      if constexpr ((F & kLeanAsym) != 0) q = _mm256_sub_ps(q, zp);
    } else if constexpr ((F & kLeanSat) != 0) {
      const __m256 c = _mm256_min_ps(_mm256_max_ps(v, negmax), maxv);
      const __m256i e = _mm256_and_si256(_mm256_castps_si256(c), exp_mask);
      const __m256 m = _mm256_max_ps(_mm256_castsi256_ps(_mm256_add_epi32(e, grid_bias)), grid_sub);
      q = _mm256_sub_ps(_mm256_add_ps(c, m), m);
      if constexpr (Exact)
        q = _mm256_or_ps(q, _mm256_and_ps(v, _mm256_castsi256_ps(zero_sign)));
    } else {
      q = bit_steps<(F & kLeanSatBits) != 0, (F & kLeanNegZero) != 0>(v);
    }
    return q;
  }

  // Q(x), clamped at +-FLT_MAX where F says it can matter, minus x: the sensitivity kernels' difference, without
  // lean_quant's NaN blend (a NaN x gives a NaN difference whatever Q made of it).
  template <unsigned F>
  __m256 lean_delta(__m256 x) const {
    __m256 y = _mm256_mul_ps(grid<F, false>(_mm256_mul_ps(x, inv)), scale);
    if constexpr ((F & kLeanClamp) != 0) {
      const __m256 lim = _mm256_set1_ps(finite_max(DType::kF32));
      y = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), lim), _mm256_min_ps(lim, y));
    }
    return _mm256_sub_ps(y, x);
  }

  // scalar::quantize_one bit for bit, NaN pattern included (set after the multiply: an fp8 NaN pattern may be
  // signalling), the format's steps fixed at compile time (variant F).
  template <unsigned F>
  __m256 lean_quant(__m256 x) const {
    const __m256 y = _mm256_mul_ps(grid<F, true>(_mm256_mul_ps(x, inv)), scale);
    __m256 nan_out = nanv;
    if constexpr ((F & kLeanNanSigned) != 0)
      nan_out = _mm256_or_ps(nanv, _mm256_and_ps(x, _mm256_castsi256_ps(sign_mask)));
    return _mm256_blendv_ps(y, nan_out, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
};

}  // namespace
}  // namespace mpq::detail::avx2
