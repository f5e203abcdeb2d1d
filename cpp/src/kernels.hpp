// Internal: the per-ISA kernel tables behind formats.cpp (kernels_<isa>.cpp) and sensitivity.cpp
// (sensitivity_<isa>.cpp). Each ISA lives in its own *_<isa>.cpp files, the only ones compiled with that ISA's
// flags, so no AVX code can leak into callers on older CPUs. The drivers pick a table through isa_dispatch.hpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "mpq/formats.hpp"

namespace mpq::detail {

/// A Format flattened into what the inner loops read.
struct Params {
  bool is_int = false;
  int mbits = 0, emin = 0;
  float max = 0;
  bool saturate = false, neg_zero = true, nan_signed = false;
  uint32_t nan_bits = 0x7FC00000u;
  float qmin = 0, qmax = 0;
  float tiny = 0;   ///< 2^emin: below it the format is subnormal
  float magic = 0;  ///< 2^(emin - mbits + 23): adding it rounds at the subnormal step
  bool round_add = false;  ///< saturating float whose grid rounding by an add stays finite (lean_flags' kLeanSat)
};
Params make_params(const Format& fmt);

/// Whether fake_quantize saturates y = q * s at +-finite_max(dtype) (see formats.hpp): the formats that saturate
/// themselves (fp8, int). bf16/fp16 are plain casts and overflow to Inf, as torch's casts do.
inline bool saturates_output(const Params& p) { return p.is_int || p.saturate; }

/// The largest finite value of a storage dtype, as fp32 (bf16: 0x7F7F, fp16: 65504).
inline float finite_max(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 3.38953138925153547590e38f;  // (2 - 2^-7) * 2^127, exact in fp32
    case DType::kF16: return 65504.0f;
    default: return 3.40282346638528859812e38f;  // FLT_MAX
  }
}

/// y clamped to [-lim, lim]; NaN passes with its bits (the SIMD paths use min/max with y second, which do too).
inline float saturate(float y, float lim) { return y > lim ? lim : (y < -lim ? -lim : y); }

/// Smallest and largest finite value of a run (lo = +inf, hi = -inf when there is none).
struct MinMax {
  float lo, hi;
};

/// One scale (and zero point) applied to a run of n values.
struct BlockScale {
  float scale, inv_scale, zero_point;
};

/// The scales (and zero points) compute_scales gives blocks whose min/max are mm (minmax_blocks), without its
/// checks, threads and allocations: for drivers that work per small chunk and share one min/max pass among several
/// formats of the same blocks (sensitivity.cpp, per 8 rows of a wide layer).
void block_scales_from_minmax(const MinMax* mm, std::size_t n_blocks, const Format& fmt, ScaleRule rule,
                              float* scales, float* zero_points);

/// The kernels of formats.cpp. kernels_ref.cpp, kernels_avx2.cpp and kernels_avx512.cpp each define one table,
/// with the same results bit for bit.
struct FormatKernels {
  /// The finite minimum and maximum of n values.
  MinMax (*minmax)(const void* x, DType dtype, std::size_t n);
  /// Fake-quantizes n values with one scale.
  void (*quantize)(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s);
  /// n_blocks consecutive blocks of `block` values: the minmax of each.
  void (*minmax_blocks)(const void* x, DType dtype, std::size_t block, std::size_t n_blocks, MinMax* out);
  /// n_blocks consecutive blocks of `block` values: block b fake-quantized with scales[b].
  void (*quantize_blocks)(const void* x, void* y, DType dtype, std::size_t block, std::size_t n_blocks,
                          const Params& p, const BlockScale* scales);
};

/// The FormatKernels of the active ISA (isa_dispatch.hpp), for formats.cpp and the drivers that call its kernels.
const FormatKernels& format_kernels();

/// The Quantizer's variants, fixed at compile time per (format, scale) instead of branching on Params in the
/// inner loop: only the steps this format and scale need. fake_quantize's (Quantizer::lean_quant) equal
/// quantize_one bit for bit; the sensitivity kernels' (lean_delta) equal saturate(quantize_one(x), lim) - x
/// wherever x is not NaN, and give some NaN for a NaN x (a NaN minus x is NaN whatever Q made of it).
enum LeanFlag : unsigned {
  kLeanInt = 1,       ///< integer grid
  kLeanAsym = 2,      ///< integer with a non-zero zero point (adding 0 would change only the sign of a zero)
  kLeanSat = 4,       ///< float format that saturates at its max, rounded by one add and subtract (grid)
  kLeanSatBits = 8,   ///< the same formats where that add could overflow: rounded by quantize_one's bit steps
  kLeanNegZero = 16,  ///< (bit steps) the float format has a negative zero
  kLeanClamp = 32,    ///< the +-FLT_MAX clamp of fake_quantize can change q * scale for this scale
  kLeanNanSigned = 64,  ///< (lean_quant) the format's NaN takes the input's sign; the difference ignores it
};

/// The variant for format p at scale s. The clamp (at +-limit: FLT_MAX, or a narrower output dtype's largest
/// value) is left out only where no q * scale can reach it (bounds with room to spare: keeping it is always exact,
/// only slower).
inline unsigned lean_flags(const Params& p, BlockScale s, float limit = finite_max(DType::kF32)) {
  unsigned f = 0;
  double bound;  // above the largest |q| the format gives before the multiply by the scale
  if (p.is_int) {
    f |= kLeanInt;
    if (s.zero_point != 0.0f) f |= kLeanAsym;
    bound = std::max(-static_cast<double>(p.qmin), static_cast<double>(p.qmax)) + std::fabs(s.zero_point) + 1.0;
  } else {
    if (p.saturate) f |= p.round_add ? kLeanSat : kLeanSatBits;  // decided once per format, in make_params
    if (!(f & kLeanSat) && p.neg_zero) f |= kLeanNegZero;
    bound = 2.0 * p.max;
  }
  if (saturates_output(p) && !(bound * s.scale < 0.5 * limit)) f |= kLeanClamp;
  if (p.nan_signed) f |= kLeanNanSigned;
  return f;
}

/// Calls fn(std::integral_constant<unsigned, F>{}) for F = flags: one instantiation per variant lean_flags gives.
template <class Fn>
inline void with_lean_flags(unsigned flags, Fn&& fn) {
#define MPQ_LEAN_CASE(F) \
  case (F): fn(std::integral_constant<unsigned, (F)>{}); return;
  switch (flags) {
    MPQ_LEAN_CASE(kLeanInt)
    MPQ_LEAN_CASE(kLeanInt | kLeanClamp)
    MPQ_LEAN_CASE(kLeanInt | kLeanAsym)
    MPQ_LEAN_CASE(kLeanInt | kLeanAsym | kLeanClamp)
    MPQ_LEAN_CASE(kLeanSat)
    MPQ_LEAN_CASE(kLeanSat | kLeanClamp)
    MPQ_LEAN_CASE(kLeanSatBits)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanClamp)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanNegZero)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanNegZero | kLeanClamp)
    MPQ_LEAN_CASE(0)
    MPQ_LEAN_CASE(kLeanNegZero)
    MPQ_LEAN_CASE(kLeanSat | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanSat | kLeanClamp | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanClamp | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanNegZero | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanSatBits | kLeanNegZero | kLeanClamp | kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanNanSigned)
    MPQ_LEAN_CASE(kLeanNegZero | kLeanNanSigned)
    default: throw std::logic_error("mpq: no quantizer variant for flags " + std::to_string(flags));
  }
#undef MPQ_LEAN_CASE
}

/// The kernels of sensitivity.cpp. sensitivity_ref.cpp, sensitivity_avx2.cpp and sensitivity_avx512.cpp each
/// define one table; the SIMD ones sum in fp32 lanes (flushed to double every 512 values), the reference in double.
struct SensitivityKernels {
  /// acc[k] += sum_{i<n} g[k*g_stride + i] * (Q(t[i]) - t[i]) for k < n_grads.
  void (*delta_dot)(const float* t, const float* g, std::size_t g_stride, std::size_t n_grads, std::size_t n,
                    const Params& p, BlockScale s, double* acc);
  /// acc[c] += sum_{i<n} g[i] * (Q_c(t[i]) - t[i]) for c < n_q: one gradient, quantizer c with p[c] and s[c].
  void (*delta_dot_multi)(const float* t, const float* g, std::size_t n, const Params* p, const BlockScale* s,
                          std::size_t n_q, double* acc);
};

namespace scalar {
extern const FormatKernels kFormats;
extern const SensitivityKernels kSensitivity;
/// One value, the definition every SIMD path must reproduce bit for bit.
float quantize_one(float x, const Params& p, BlockScale s);
/// kFormats.minmax, for the tails of the SIMD paths.
MinMax minmax(const void* x, DType dtype, std::size_t n);
float load_bf16(uint16_t h);
float load_f16(uint16_t h);
uint16_t store_bf16(float f);
uint16_t store_f16(float f);
}  // namespace scalar

namespace avx2 {
extern const FormatKernels kFormats;
extern const SensitivityKernels kSensitivity;
}  // namespace avx2

namespace avx512 {
extern const FormatKernels kFormats;
extern const SensitivityKernels kSensitivity;
}  // namespace avx512

}  // namespace mpq::detail
