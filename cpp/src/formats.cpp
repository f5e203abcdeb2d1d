// The format registry, the scale rules and the block driver (validation, threads, ISA dispatch).
#include "mpq/formats.hpp"

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>

#include "isa_dispatch.hpp"
#include "kernels.hpp"

namespace mpq {

const detail::FormatKernels& detail::format_kernels() {
  return detail::select(detail::scalar::kFormats, MPQ_AVX2_KERNELS(detail::avx2::kFormats),
                        MPQ_AVX512_KERNELS(detail::avx512::kFormats));
}

namespace {

using detail::BlockScale;

const detail::FormatKernels& kernels() { return detail::format_kernels(); }

Format fp_format(const char* name, int mbits, int emin, float max, bool saturate, bool neg_zero, uint32_t nan_bits,
                 bool nan_signed, ScaleRule rule) {
  Format f;
  f.name = name;
  f.mbits = mbits;
  f.emin = emin;
  f.max = max;
  f.saturate = saturate;
  f.neg_zero = neg_zero;
  f.nan_bits = nan_bits;
  f.nan_signed = nan_signed;
  f.default_rule = rule;
  return f;
}

Format int_format(const char* name, int bits, bool asymmetric) {
  Format f;
  f.name = name;
  f.is_int = true;
  f.asymmetric = asymmetric;
  // Symmetric formats use the narrow range [-(2^(b-1)-1), 2^(b-1)-1] so that Q(-x) = -Q(x).
  f.qmin = asymmetric ? 0 : -((1 << (bits - 1)) - 1);
  f.qmax = asymmetric ? (1 << bits) - 1 : (1 << (bits - 1)) - 1;
  f.max = static_cast<float>(f.qmax);
  f.default_rule = ScaleRule::kMaxAbs;
  return f;
}

const std::vector<Format>& registry() {
  static const std::vector<Format> formats = [] {
    std::vector<Format> v;
    // NaN bits are those torch produces when it casts the fp8 NaN back to fp32.
    v.push_back(fp_format("fp8_e4m3", 3, -6, 448.0f, true, true, 0x7FF00000u, true, ScaleRule::kMaxAbs));
    v.push_back(fp_format("fp8_e4m3fnuz", 3, -7, 240.0f, true, false, 0x7F800001u, false, ScaleRule::kMaxAbs));
    // Gaudi-2 E4M3: IEEE-style (exponent 15 reserved), bias 7, so the e4m3fn grid up to 240.
    Format gaudi = fp_format("fp8_e4m3_gaudi2", 3, -6, 240.0f, true, true, 0x7FF00000u, true, ScaleRule::kHw);
    gaudi.hw_scales = {std::ldexp(1.0f, -8), std::ldexp(1.0f, -4), 1.0f, 16.0f};
    v.push_back(gaudi);
    v.push_back(fp_format("fp8_e5m2", 2, -14, 57344.0f, true, true, 0x7FE00000u, true, ScaleRule::kMaxAbs));
    v.push_back(fp_format("bf16", 7, -126, FLT_MAX, false, true, 0x7FC00000u, false, ScaleRule::kNone));
    v.push_back(fp_format("fp16", 10, -14, 65504.0f, false, true, 0x7FC00000u, false, ScaleRule::kNone));
    v.push_back(int_format("int8", 8, false));
    v.push_back(int_format("int4", 4, false));
    v.push_back(int_format("int8_asym", 8, true));
    v.push_back(int_format("int4_asym", 4, true));
    return v;
  }();
  return formats;
}

std::string joined_names() {
  std::string s;
  for (const auto& f : registry()) s += (s.empty() ? "" : ", ") + f.name;
  return s;
}

// Smallest power of two p with need <= limit * p (exact: multiplying by a power of two does not round).
float pow2_at_least(float need, float limit) {
  int e;
  std::frexp(need / limit, &e);
  float p = std::ldexp(1.0f, e);
  while (p > FLT_MIN && need <= limit * (p * 0.5f)) p *= 0.5f;
  while (need > limit * p && p < FLT_MAX / 2) p *= 2.0f;
  return p;
}

BlockScale block_scale(detail::MinMax m, const Format& f, ScaleRule rule) {
  const bool any = m.lo <= m.hi;
  if (rule == ScaleRule::kNone || !any) return {1.0f, 1.0f, 0.0f};
  float span, lo = 0.0f;
  float range = f.asymmetric ? f.qmax - f.qmin : f.max;
  if (f.asymmetric) {
    lo = std::fmin(m.lo, 0.0f);
    const float hi = std::fmax(m.hi, 0.0f);
    span = hi - lo;
    if (!std::isfinite(span)) {
      // hi - lo overflows fp32 (|hi|, |lo| >= 2^103 then, so halving them is exact): the rules below compare and
      // divide span by range only, so halving both gives what fp32 would with an unbounded exponent.
      span = hi * 0.5f - lo * 0.5f;
      range *= 0.5f;
    }
  } else {
    span = std::fmax(-m.lo, m.hi);
  }
  if (span == 0.0f) return {1.0f, 1.0f, 0.0f};
  float s;
  switch (rule) {
    case ScaleRule::kPow2: s = pow2_at_least(span, range); break;
    case ScaleRule::kHw: {
      s = f.hw_scales.back();
      for (float h : f.hw_scales)
        if (span <= range * h) {
          s = h;
          break;
        }
      break;
    }
    default: s = span / range;
  }
  s = std::fmax(s, FLT_MIN);  // keeps 1/s finite for denormal-sized data
  float zp = 0.0f;
  if (f.asymmetric) zp = std::fmin(std::fmax(std::nearbyint(static_cast<float>(f.qmin) - lo / s), f.qmin), f.qmax);
  return {s, 1.0f / s, zp};
}

// x and y may be the same buffer (in place) or disjoint; a partial overlap would read values already written.
void check_alias(const char* fn, const void* x, const void* y, DType dtype, std::size_t n) {
  if (x == y || n == 0) return;
  const auto xb = reinterpret_cast<std::uintptr_t>(x), yb = reinterpret_cast<std::uintptr_t>(y);
  const std::uintptr_t bytes = n * (dtype == DType::kF32 ? 4 : 2);
  if (xb < yb + bytes && yb < xb + bytes)
    throw std::invalid_argument(std::string(fn) + ": x and y overlap without being the same buffer (y must be x "
                                "itself or disjoint from it)");
}

void check_shape(const char* fn, std::size_t n, std::size_t block) {
  if (block == 0 && n != 0) throw std::invalid_argument(std::string(fn) + ": block must be positive");
  if (block != 0 && n % block != 0)
    throw std::invalid_argument(std::string(fn) + ": n = " + std::to_string(n) + " is not a multiple of block = " +
                                std::to_string(block));
}

const void* offset(const void* x, DType dtype, std::size_t i) {
  return static_cast<const char*>(x) + i * (dtype == DType::kF32 ? 4 : 2);
}
void* offset(void* x, DType dtype, std::size_t i) {
  return static_cast<char*>(x) + i * (dtype == DType::kF32 ? 4 : 2);
}

// Runs body(i) for i in [0, count) on up to num_threads threads; an exception inside is rethrown here
// (escaping an OpenMP region would call std::terminate).
template <class Body>
void parallel_for(std::size_t count, int num_threads, Body body) {
  std::exception_ptr error;
  const int threads = static_cast<int>(std::min<std::size_t>(std::max(1, num_threads), std::max<std::size_t>(1, count)));
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(count); ++i) {
    try {
      body(static_cast<std::size_t>(i));
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

constexpr std::size_t kChunk = 1 << 16;  // values per work item: amortises calls, stays in L2 between passes

std::size_t blocks_per_item(std::size_t block) { return std::max<std::size_t>(1, kChunk / block); }

// Min and max of the finite values of a whole run, in parallel chunks.
detail::MinMax whole_minmax(const void* x, DType dtype, std::size_t n, int num_threads) {
  const auto minmax = kernels().minmax;
  std::vector<detail::MinMax> parts((n + kChunk - 1) / kChunk);
  parallel_for(parts.size(), num_threads, [&](std::size_t c) {
    parts[c] = minmax(offset(x, dtype, c * kChunk), dtype, std::min(kChunk, n - c * kChunk));
  });
  detail::MinMax m = parts[0];
  for (const auto& p : parts) m = {std::fmin(m.lo, p.lo), std::fmax(m.hi, p.hi)};
  return m;
}

void quantize_one_scale(const void* x, void* y, DType dtype, std::size_t n, const detail::Params& p, BlockScale s,
                        int num_threads) {
  const auto quantize = kernels().quantize;
  parallel_for((n + kChunk - 1) / kChunk, num_threads, [&](std::size_t c) {
    quantize(offset(x, dtype, c * kChunk), offset(y, dtype, c * kChunk), dtype, std::min(kChunk, n - c * kChunk), p, s);
  });
}

}  // namespace

int Format::bits() const {
  if (is_int) return qmax > 15 ? 8 : 4;
  return mbits >= 7 ? 16 : 8;
}

const Format& format_by_name(const std::string& name) {
  for (const auto& f : registry())
    if (f.name == name) return f;
  throw std::invalid_argument("unknown format '" + name + "' (known: " + joined_names() + ")");
}

std::vector<std::string> format_names() {
  std::vector<std::string> names;
  for (const auto& f : registry()) names.push_back(f.name);
  return names;
}

ScaleRule scale_rule_by_name(const std::string& name) {
  if (name == "none") return ScaleRule::kNone;
  if (name == "maxabs") return ScaleRule::kMaxAbs;
  if (name == "pow2") return ScaleRule::kPow2;
  if (name == "hw") return ScaleRule::kHw;
  throw std::invalid_argument("unknown scale rule '" + name + "' (known: maxabs, pow2, hw, none)");
}

void compute_scales(const void* x, DType dtype, std::size_t n, std::size_t block, const Format& fmt,
                    ScaleRule rule, float* scales, float* zero_points, int num_threads) {
  check_shape("compute_scales", n, block);
  if (rule == ScaleRule::kHw && fmt.hw_scales.empty())
    throw std::invalid_argument("compute_scales: format '" + fmt.name + "' has no hardware scale set");
  if (n == 0) return;
  const std::size_t blocks = n / block;
  if (blocks == 1) {
    const BlockScale s = block_scale(whole_minmax(x, dtype, n, num_threads), fmt, rule);
    scales[0] = s.scale;
    zero_points[0] = s.zero_point;
    return;
  }
  const auto minmax_blocks = kernels().minmax_blocks;
  const std::size_t per_item = blocks_per_item(block);
  parallel_for((blocks + per_item - 1) / per_item, num_threads, [&](std::size_t item) {
    const std::size_t b0 = item * per_item, nb = std::min(per_item, blocks - b0);
    std::vector<detail::MinMax> mm(nb);
    minmax_blocks(offset(x, dtype, b0 * block), dtype, block, nb, mm.data());
    for (std::size_t b = 0; b < nb; ++b) {
      const BlockScale s = block_scale(mm[b], fmt, rule);
      scales[b0 + b] = s.scale;
      zero_points[b0 + b] = s.zero_point;
    }
  });
}

void fake_quantize(const void* x, void* y, DType dtype, std::size_t n, std::size_t block, const Format& fmt,
                   Span<const float> scales, Span<const float> zero_points, int num_threads) {
  check_shape("fake_quantize", n, block);
  check_alias("fake_quantize", x, y, dtype, n);
  if (n == 0) return;
  const std::size_t blocks = n / block;
  if (scales.size != 1 && scales.size != blocks)
    throw std::invalid_argument("fake_quantize: expected 1 or " + std::to_string(blocks) + " scales, got " +
                                std::to_string(scales.size));
  if (zero_points.size != 0 && zero_points.size != scales.size)
    throw std::invalid_argument("fake_quantize: zero_points must match scales in length");
  std::vector<BlockScale> bs(scales.size);
  for (std::size_t i = 0; i < scales.size; ++i) {
    if (!(scales[i] > 0.0f) || !std::isfinite(scales[i]) || !std::isfinite(1.0f / scales[i]))
      throw std::invalid_argument("fake_quantize: scale[" + std::to_string(i) + "] = " + std::to_string(scales[i]) +
                                  " must be positive and finite");
    bs[i] = {scales[i], 1.0f / scales[i], zero_points.size ? zero_points[i] : 0.0f};
  }
  const detail::Params p = detail::make_params(fmt);
  if (bs.size() == 1) {
    quantize_one_scale(x, y, dtype, n, p, bs[0], num_threads);
    return;
  }
  const auto quantize_blocks = kernels().quantize_blocks;
  const std::size_t per_item = blocks_per_item(block);
  parallel_for((blocks + per_item - 1) / per_item, num_threads, [&](std::size_t item) {
    const std::size_t b0 = item * per_item, nb = std::min(per_item, blocks - b0);
    quantize_blocks(offset(x, dtype, b0 * block), offset(y, dtype, b0 * block), dtype, block, nb, p, &bs[b0]);
  });
}

void fake_quantize_auto(const void* x, void* y, DType dtype, std::size_t n, std::size_t block, const Format& fmt,
                        ScaleRule rule, int num_threads) {
  check_shape("fake_quantize", n, block);
  check_alias("fake_quantize", x, y, dtype, n);
  if (rule == ScaleRule::kHw && fmt.hw_scales.empty())
    throw std::invalid_argument("fake_quantize: format '" + fmt.name + "' has no hardware scale set");
  if (n == 0) return;
  const detail::Params p = detail::make_params(fmt);
  const std::size_t blocks = n / block;
  if (blocks == 1) {  // one scale: a reduction pass over everything, then the quantize pass
    quantize_one_scale(x, y, dtype, n, p, block_scale(whole_minmax(x, dtype, n, num_threads), fmt, rule), num_threads);
    return;
  }
  // Many blocks: scales and quantization per work item, so the second read of a block comes from cache.
  const detail::FormatKernels& k = kernels();
  const auto minmax_blocks = k.minmax_blocks;
  const auto quantize_blocks = k.quantize_blocks;
  const std::size_t per_item = blocks_per_item(block);
  parallel_for((blocks + per_item - 1) / per_item, num_threads, [&](std::size_t item) {
    const std::size_t b0 = item * per_item, nb = std::min(per_item, blocks - b0);
    std::vector<detail::MinMax> mm(nb);
    std::vector<BlockScale> bs(nb);
    minmax_blocks(offset(x, dtype, b0 * block), dtype, block, nb, mm.data());
    for (std::size_t b = 0; b < nb; ++b) bs[b] = block_scale(mm[b], fmt, rule);
    quantize_blocks(offset(x, dtype, b0 * block), offset(y, dtype, b0 * block), dtype, block, nb, p, bs.data());
  });
}

float fake_quantize_value(float x, const Format& fmt, float scale, float zero_point) {
  const detail::Params p = detail::make_params(fmt);
  const float y = detail::scalar::quantize_one(x, p, {scale, 1.0f / scale, zero_point});
  return detail::saturates_output(p) ? detail::saturate(y, FLT_MAX) : y;
}

namespace detail {

Params make_params(const Format& f) {
  Params p;
  p.is_int = f.is_int;
  p.mbits = f.mbits;
  p.emin = f.emin;
  p.max = f.max;
  p.saturate = f.saturate;
  p.neg_zero = f.neg_zero;
  p.nan_signed = f.nan_signed;
  p.nan_bits = f.nan_bits;
  p.qmin = static_cast<float>(f.qmin);
  p.qmax = static_cast<float>(f.qmax);
  if (!f.is_int) {
    p.tiny = std::ldexp(1.0f, f.emin);
    p.magic = std::ldexp(1.0f, f.emin - f.mbits + 23);
    // the rounding add takes 1.5 * 2^(e + 23 - mbits) for |v| < 2^(e+1) <= 2 * max: it must stay finite
    p.round_add = p.saturate && std::ldexp(static_cast<double>(p.max), 25 - p.mbits) < 0.25 * FLT_MAX;
  }
  return p;
}

void block_scales_from_minmax(const MinMax* mm, std::size_t n_blocks, const Format& fmt, ScaleRule rule,
                              float* scales, float* zero_points) {
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const BlockScale s = block_scale(mm[b], fmt, rule);
    scales[b] = s.scale;
    zero_points[b] = s.zero_point;
  }
}

}  // namespace detail
}  // namespace mpq
