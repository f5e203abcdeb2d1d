// Scalar kernels: the definition of every format's rounding, used on CPUs without AVX2 and as the reference the
// SIMD paths are tested against. Compiled without -ffast-math: (a + C) - C must round exactly as written.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels.hpp"

namespace mpq::detail::scalar {
namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Round a non-negative, non-NaN fp32 magnitude to the format's grid (round to nearest, ties to even).
float round_magnitude(float a, const Params& p) {
  if (p.saturate) a = std::fmin(a, p.max);
  float r;
  if (a < p.tiny) {
    // Subnormal range: adding C (whose ulp is the subnormal step) makes the FPU round at that step.
    volatile float t = a + p.magic;  // volatile: keep the two roundings apart whatever the optimiser thinks
    r = t - p.magic;
  } else {
    const int sh = 23 - p.mbits;
    uint32_t b = bits_of(a);
    b += (1u << (sh - 1)) - 1 + ((b >> sh) & 1u);
    b &= ~((1u << sh) - 1u);
    r = float_of(b);
  }
  if (!p.saturate && r > p.max) r = std::numeric_limits<float>::infinity();
  return r;
}

}  // namespace

float quantize_one(float x, const Params& p, BlockScale s) {
  const float v = x * s.inv_scale;
  if (std::isnan(v) || std::isnan(x)) {
    const uint32_t sign = p.nan_signed ? (bits_of(x) & 0x80000000u) : 0u;
    return float_of(p.nan_bits | sign);
  }
  float q;
  if (p.is_int) {
    q = std::nearbyint(v) + s.zero_point;
    q = std::fmin(std::fmax(q, p.qmin), p.qmax) - s.zero_point;
  } else {
    uint32_t sign = bits_of(v) & 0x80000000u;
    const float r = round_magnitude(std::fabs(v), p);
    if (!p.neg_zero && r == 0.0f) sign = 0;
    q = float_of(bits_of(r) | sign);
  }
  return q * s.scale;
}

float load_bf16(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

uint16_t store_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;  // torch's canonical bf16 NaN for values coming back from fp8
  uint32_t b = bits_of(f);
  b += 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}

float load_f16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0x1F) return float_of(sign | 0x7F800000u | (mant << 13));  // Inf / NaN, payload kept
  if (exp == 0) {
    const float m = std::ldexp(static_cast<float>(mant), -24);  // subnormal (exact)
    return sign ? -m : m;
  }
  return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t store_f16(float f) {
  const uint32_t b = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  if (std::isnan(f)) return sign | 0x7E00u | static_cast<uint16_t>((b >> 13) & 0x3FFu);  // as F16C: quiet, payload
  static const Params p = [] {
    Format f;
    f.mbits = 10;
    f.emin = -14;
    f.max = 65504.0f;
    return make_params(f);
  }();
  const float r = round_magnitude(std::fabs(f), p);
  if (std::isinf(r)) return sign | 0x7C00u;
  if (r < std::ldexp(1.0f, -14)) return sign | static_cast<uint16_t>(std::ldexp(r, 24));
  const uint32_t rb = bits_of(r);
  return sign | static_cast<uint16_t>(((((rb >> 23) & 0xFFu) - 112u) << 10) | ((rb >> 13) & 0x3FFu));
}

namespace {
float load(const void* x, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::kBF16: return load_bf16(static_cast<const uint16_t*>(x)[i]);
    case DType::kF16: return load_f16(static_cast<const uint16_t*>(x)[i]);
    default: return static_cast<const float*>(x)[i];
  }
}
void store(void* y, DType dtype, std::size_t i, float v) {
  switch (dtype) {
    case DType::kBF16: static_cast<uint16_t*>(y)[i] = store_bf16(v); break;
    case DType::kF16: static_cast<uint16_t*>(y)[i] = store_f16(v); break;
    default: static_cast<float*>(y)[i] = v;
  }
}
}  // namespace

MinMax minmax(const void* x, DType dtype, std::size_t n) {
  MinMax m{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  for (std::size_t i = 0; i < n; ++i) {
    const float v = load(x, dtype, i);
    if (!std::isfinite(v)) continue;
    m.lo = std::fmin(m.lo, v);
    m.hi = std::fmax(m.hi, v);
  }
  return m;
}

namespace {

void quantize(const void* x, void* y, DType dtype, std::size_t n, const Params& p, BlockScale s) {
  if (!saturates_output(p)) {
    for (std::size_t i = 0; i < n; ++i) store(y, dtype, i, quantize_one(load(x, dtype, i), p, s));
    return;
  }
  const float lim = finite_max(dtype);  // a grid point q * s beyond the dtype's range saturates (formats.hpp)
  for (std::size_t i = 0; i < n; ++i) store(y, dtype, i, saturate(quantize_one(load(x, dtype, i), p, s), lim));
}

void minmax_blocks(const void* x, DType dtype, std::size_t block, std::size_t n_blocks, MinMax* out) {
  const std::size_t esize = dtype == DType::kF32 ? 4 : 2;
  for (std::size_t b = 0; b < n_blocks; ++b) out[b] = minmax(static_cast<const char*>(x) + b * block * esize, dtype, block);
}

void quantize_blocks(const void* x, void* y, DType dtype, std::size_t block, std::size_t n_blocks, const Params& p,
                     const BlockScale* scales) {
  const std::size_t esize = dtype == DType::kF32 ? 4 : 2;
  for (std::size_t b = 0; b < n_blocks; ++b)
    quantize(static_cast<const char*>(x) + b * block * esize, static_cast<char*>(y) + b * block * esize, dtype, block,
             p, scales[b]);
}

}  // namespace

const FormatKernels kFormats{minmax, quantize, minmax_blocks, quantize_blocks};

}  // namespace mpq::detail::scalar
