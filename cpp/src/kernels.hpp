// Internal: the per-ISA block kernels behind formats.cpp. Each ISA lives in its own kernels_<isa>.cpp, the only
// files compiled with that ISA's flags, so no AVX code can leak into callers on older CPUs.
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
};
Params make_params(const Format& fmt);

/// Smallest and largest finite value of a run (lo = +inf, hi = -inf when there is none).
struct MinMax {
  float lo, hi;
};

/// One scale (and zero point) applied to a run of n values.
struct BlockScale {
  float scale, inv_scale, zero_point;
};

using MinMaxFn = MinMax (*)(const void* x, DType dtype, std::size_t n);
using QuantizeFn = void (*)(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s);

namespace scalar {
MinMax minmax(const void* x, DType dtype, std::size_t n);
void quantize(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s);
/// One value, the definition every SIMD path must reproduce bit for bit.
float quantize_one(float x, const Params& p, BlockScale s);
float load_bf16(uint16_t h);
float load_f16(uint16_t h);
uint16_t store_bf16(float f);
uint16_t store_f16(float f);
}  // namespace scalar

namespace avx2 {
MinMax minmax(const void* x, DType dtype, std::size_t n);
void quantize(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s);
}  // namespace avx2

/// The kernels of the active ISA.
MinMaxFn active_minmax();
QuantizeFn active_quantize();

}  // namespace mpq::detail
