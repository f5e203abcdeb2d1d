// Internal: the per-ISA kernel tables behind formats.cpp (kernels_<isa>.cpp) and sensitivity.cpp
// (sensitivity_<isa>.cpp). Each ISA lives in its own *_<isa>.cpp files, the only ones compiled with that ISA's
// flags, so no AVX code can leak into callers on older CPUs. The drivers pick a table through isa_dispatch.hpp.
#pragma once
#include <cstddef>
#include <cstdint>

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

/// compute_scales on float32 without its checks, threads and allocations (the arguments are valid; scratch holds
/// n_blocks MinMax): the same scales bit for bit, for drivers that call it per small chunk (sensitivity.cpp, per 8
/// rows of a wide layer, where the public call's OpenMP region and buffers had cost more than the pass itself).
void block_scales_serial(const float* x, std::size_t block, std::size_t n_blocks, const Format& fmt, ScaleRule rule,
                         MinMax* scratch, float* scales, float* zero_points);

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
