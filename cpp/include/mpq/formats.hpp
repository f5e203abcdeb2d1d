// mpq/formats.hpp: numeric formats and the fake quantizer (quantize, then dequantize) on raw buffers.
//
// A tensor is seen as a run of `n` values split into blocks of `block` consecutive values; every block has one
// scale (per tensor: block == n; per row: block == columns; per group: block == group size). Callers that want
// another layout (a channel axis that is not the outermost one) move that axis first.
//
// Semantics, identical in every ISA path and in python/mpq/reference.py:
//   v = x * (1 / s)                         (fp32; 1/s rounded once, as torch.fake_quantize_* does)
//   float formats: q = round_to_nearest_even(v) in the format, saturating to +-max for the fp8 formats
//                  (Inf saturates too), overflowing to Inf for bf16/fp16, subnormals kept;
//   int formats:   q = clamp(nearbyint(v) + zp, qmin, qmax) - zp;
//   y = q * s                               (fp32, then rounded to the input dtype).
//   The formats that saturate (fp8, int) saturate y too, at +-the largest finite value of the input dtype
//   (FLT_MAX, bf16 0x7F7F, fp16 65504): a grid point beyond it (the scale is rounded, and an asymmetric grid may
//   reach half a step past lo or hi) gives that value, never Inf, so a finite input gives a finite output.
//   bf16/fp16 stay plain casts and overflow to Inf where torch's casts do.
// NaN stays NaN. For fp8 formats the NaN bits equal those of torch's casts (fp8 -> fp32/fp16/bf16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mpq/span.hpp"

namespace mpq {

/// Storage type of a buffer that crosses the API (numpy has no bf16: bf16/fp16 travel as uint16 bits).
enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

/// How a block's scale is chosen when the caller gives none.
enum class ScaleRule : int {
  kNone = 0,    ///< scale 1 (bf16, fp16: plain casts)
  kMaxAbs = 1,  ///< s = amax / max (int: amax / qmax; asymmetric: (hi - lo) / (qmax - qmin), with
                ///< lo = min(min, 0), hi = max(max, 0); where hi - lo overflows fp32, every rule uses
                ///< (hi/2 - lo/2) against (qmax - qmin)/2: the fp32 result with an unbounded exponent, so
                ///< [-FLT_MAX, FLT_MAX] gets s = 2 * FLT_MAX / 255 for int8_asym, not a clipped range)
  kPow2 = 2,    ///< smallest power of two s with amax <= max * s
  kHw = 3,      ///< smallest hardware scale with amax <= max * s (Gaudi-2 E4M3: 2^-8, 2^-4, 2^0, 2^4)
};

/// One element format. Float formats round to `mbits` mantissa bits with minimum normal exponent `emin`.
struct Format {
  std::string name;
  bool is_int = false;
  // float formats
  int mbits = 0;
  int emin = 0;
  float max = 0;             ///< largest finite magnitude
  bool saturate = false;     ///< clamp to +-max (fp8) instead of overflowing to Inf (bf16, fp16)
  bool neg_zero = true;      ///< false for e4m3fnuz: -0 becomes +0
  uint32_t nan_bits = 0x7FC00000u;  ///< fp32 bits of its NaN (sign added when nan_signed)
  bool nan_signed = false;
  // int formats
  bool asymmetric = false;
  int qmin = 0, qmax = 0;
  // scales
  ScaleRule default_rule = ScaleRule::kNone;
  std::vector<float> hw_scales;  ///< ascending; only for ScaleRule::kHw
  int bits() const;              ///< storage bits (8 for fp8/int8, 4 for int4, 16 for bf16/fp16)
};

/// The format called `name`. @throws std::invalid_argument listing the known names.
const Format& format_by_name(const std::string& name);
/// Every known format name, in a stable order.
std::vector<std::string> format_names();
/// Parses "maxabs" | "pow2" | "hw" | "none". @throws std::invalid_argument.
ScaleRule scale_rule_by_name(const std::string& name);

/// Per-block scales (and zero points, 0 for symmetric formats) by `rule`, from the finite values only.
/// x: n values of `dtype`; scales, zero_points: n / block floats each. A block with no finite non-zero value
/// gets scale 1. @throws std::invalid_argument on a bad shape or a rule the format cannot use.
void compute_scales(const void* x, DType dtype, std::size_t n, std::size_t block, const Format& fmt,
                    ScaleRule rule, float* scales, float* zero_points, int num_threads = 1);

/// Fake-quantizes x into y (both n values of `dtype`; y may be x itself, in place, or disjoint from it).
/// scales/zero_points: one per block, or one in all (broadcast). Thread-safe; OpenMP over blocks (or over chunks
/// when there is one block).
/// @throws std::invalid_argument on a bad shape, a non-positive / non-finite scale, or x and y overlapping
/// partially (y != x but sharing bytes: values would be read after being overwritten).
void fake_quantize(const void* x, void* y, DType dtype, std::size_t n, std::size_t block, const Format& fmt,
                   Span<const float> scales, Span<const float> zero_points, int num_threads = 1);

/// Scales by `rule` and fake-quantizes in one call (the scales are computed first, then used). x and y as in
/// fake_quantize, with the same checks.
void fake_quantize_auto(const void* x, void* y, DType dtype, std::size_t n, std::size_t block,
                        const Format& fmt, ScaleRule rule, int num_threads = 1);

/// Fake-quantizes one fp32 value with a given scale, as fake_quantize on kF32 (saturating at +-FLT_MAX for
/// fp8/int formats); slow, for tests and tools.
float fake_quantize_value(float x, const Format& fmt, float scale, float zero_point = 0.f);

}  // namespace mpq
