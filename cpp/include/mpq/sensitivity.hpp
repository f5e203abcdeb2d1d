// mpq/sensitivity.hpp: the hot kernel of calibration. For a tensor T [rows, cols] and one or more gradient-like
// tensors G_k of the same shape, for every candidate quantizer Q_c at once,
//
//     out[k, b, c] = sum over rows r of row-block b, all columns j:  G_k[r, j] * (Q_c(T)[r, j] - T[r, j])
//
// reading T and every G_k once and never materialising Q_c(T). Row blocks are `sample_rows` consecutive rows (one
// calibration sample: its tokens). Two uses (design.md, "The method"):
//   activations  T = X_n stacked [B*S, in], one G = dL/dX [B*S, in], sample_rows = S      -> out [1, B, C]
//   weights      T = W [out, in], G_k = per-sample weight gradients (k = samples), sample_rows = rows -> out [k, 1, C]
//
// Q_c is exactly mpq::fake_quantize (formats.hpp) with the candidate's block layout over the flattened T:
// block == rows*cols (one scale for the tensor), block == cols (one per row: per token, or per output channel of
// a weight), or block dividing cols (groups along a row). Scales are either given (1 value, or one per block) or
// computed from T by `rule`, exactly as compute_scales does.
//
// Accumulation: products in fp32, partial sums of at most 512 products in fp32, everything above that in double.
// The scalar and SIMD paths agree within that float32 accumulation error; the active ISA is mpq::active_isa().
// Work: chunks of rows (about 32 KiB of T) over OpenMP threads; per-row / per-group scales of a chunk come from one
// min/max pass per block size (compute_scales' numbers, from cache), then, with one gradient, every spec with one
// scale per row (per tensor or per row) runs over each row while it is in L1, each in its own loop whose format
// steps are fixed at compile time (no branch on the format per value).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "mpq/formats.hpp"
#include "mpq/span.hpp"

namespace mpq {

/// One candidate quantizer of T, as fake_quantize would apply it.
struct QuantSpec {
  const Format* format = nullptr;  ///< element format (format_by_name)
  std::size_t block = 0;           ///< values per scale: rows*cols, cols, or a divisor of cols
  ScaleRule rule = ScaleRule::kMaxAbs;  ///< how scales are computed when `scales` is empty
  Span<const float> scales;        ///< explicit scales: empty (computed), 1 (broadcast) or one per block
  Span<const float> zero_points;   ///< empty (0) or as many as scales (asymmetric formats)
};

/// Computes, overwriting out[(k * n_blocks + b) * specs.size + c] (n_blocks = rows / sample_rows):
///   sum over rows r in [b*sample_rows, (b+1)*sample_rows), j < cols of g[k*rows*cols + r*cols + j] * (Q_c(t) - t)[r, j]
/// t: rows*cols fp32 (row-major); g: n_grads*rows*cols fp32; out: n_grads * (rows / sample_rows) * specs.size
/// doubles. OpenMP over rows with up to num_threads threads; thread-safe. NaN/Inf in t or g propagate to out.
/// @throws std::invalid_argument on a null format, a shape that does not divide (sample_rows into rows, block
/// into cols or equal to rows*cols), a scale count that is neither 0, 1 nor one per block, or a bad scale.
void sensitivity(const float* t, const float* g, std::size_t rows, std::size_t cols, std::size_t n_grads,
                 std::size_t sample_rows, Span<const QuantSpec> specs, double* out, int num_threads = 1);

}  // namespace mpq
