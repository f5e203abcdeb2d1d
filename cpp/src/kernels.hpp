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
  float tiny = 0;   ///< 2^emin: below it the format is subnormal
  float magic = 0;  ///< 2^(emin - mbits + 23): adding it rounds at the subnormal step
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
/// n_blocks consecutive blocks of `block` values: minmax of each / fake-quantize block b with scales[b].
using MinMaxBlocksFn = void (*)(const void* x, DType dtype, std::size_t block, std::size_t n_blocks, MinMax* out);
using QuantizeBlocksFn = void (*)(const void* x, void* y, DType dtype, std::size_t block, std::size_t n_blocks,
                                  const Params& p, const BlockScale* scales);

namespace scalar {
MinMax minmax(const void* x, DType dtype, std::size_t n);
void quantize(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s);
void minmax_blocks(const void* x, DType dtype, std::size_t block, std::size_t n_blocks, MinMax* out);
void quantize_blocks(const void* x, void* y, DType dtype, std::size_t block, std::size_t n_blocks, const Params& p,
                     const BlockScale* scales);
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
void minmax_blocks(const void* x, DType dtype, std::size_t block, std::size_t n_blocks, MinMax* out);
void quantize_blocks(const void* x, void* y, DType dtype, std::size_t block, std::size_t n_blocks, const Params& p,
                     const BlockScale* scales);
}  // namespace avx2

/// The kernels of the active ISA.
MinMaxFn active_minmax();
QuantizeFn active_quantize();
MinMaxBlocksFn active_minmax_blocks();
QuantizeBlocksFn active_quantize_blocks();

}  // namespace mpq::detail
