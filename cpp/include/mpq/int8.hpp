// mpq/int8.hpp: the fused pieces of an int8 W8A8 matmul on the CPU (the int8 x int8 -> int32 product itself is
// torch._int_mm / oneDNN). One pass each, scalar reference plus AVX2 (selected by mpq::active_isa()).
#pragma once
#include <cstdint>

namespace mpq {

/// Dynamic per-row (per-token) symmetric int8 quantization of x [rows, cols], row-major.
/// scale[r] = max(amax_r / 127, FLT_MIN), amax_r over the finite values of row r (1 when none is finite and
/// nonzero); q = clamp(nearbyint(x * (1 / scale)), -127, 127), NaN -> -127. Identical to
/// mpq.fake_quantize(x, "int8", axis=0) before dequantization: q[r, c] * scale[r] is its result.
/// @throws std::invalid_argument on negative sizes, null pointers with a non-empty size or threads < 1.
void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads = 1);

/// Static (given) per-tensor scale: q = clamp(nearbyint(x * (1 / scale)), -127, 127).
/// @throws std::invalid_argument if scale is not positive and finite.
void quantize_int8_static(const float* x, int64_t n, float scale, int8_t* q, int threads = 1);

/// out[r, c] = fma(float(acc[r, c]), row_scale[r] * col_scale[c], bias ? bias[c] : 0): the dequantization of
/// an int32 product, with the bias, in one pass. bias may be null.
void dequantize_int32(const int32_t* acc, int64_t rows, int64_t cols, const float* row_scale,
                      const float* col_scale, const float* bias, float* out, int threads = 1);

/// The int8 Linear: out[m, n] = fma(float(Σ_k xq[m, k] · w[n, k]), row_scale[m] · col_scale[n], bias[n]),
/// xq [M, K] and w [N, K] row-major int8 in [-127, 127] (the quantizers above produce that range; -128 is
/// refused by the AVX2 sign trick's precondition and gives an unspecified result), exact int32 accumulation.
/// The same dequantization formula as dequantize_int32, so both paths agree bit for bit.
/// AVX2: |x| · sign(w, x) through vpmaddubsw (no int16 saturation for |values| <= 127), 2 rows x 4 columns.
void int8_linear(const int8_t* xq, const float* row_scale, int64_t m, int64_t k, const int8_t* w,
                 const float* col_scale, const float* bias, int64_t n, float* out, int threads = 1);

/// The packed weight layout of int8_linear_packed: blocks of 8 output columns, and within a block, for each group
/// of 4 consecutive inputs, the 8 columns' 4 bytes: packed[((j / 8 · K4 + t / 4) · 8 + j % 8) · 4 + t % 4] =
/// w[j, t], K4 = ceil(K / 4), zero where j >= N or t >= K. One 32-byte load then holds 8 columns × 4 inputs,
/// the operand of an outer-product GEMM that needs no horizontal sums. Bytes: ceil(N / 8) · K4 · 32.
int64_t int8_packed_bytes(int64_t n, int64_t k);

/// Packs w [N, K] (row-major int8 in [-127, 127]) into int8_packed_bytes(n, k) bytes at packed.
/// @throws std::invalid_argument on negative sizes, null pointers with a non-empty size, or a weight of -128
/// (the AVX2 kernel's sign trick cannot represent its negation).
void pack_int8_weights(const int8_t* w, int64_t n, int64_t k, int8_t* packed);

/// int8_linear with packed weights (pack_int8_weights): the same result bit for bit. xq may hold -128.
/// @throws std::invalid_argument as int8_linear does; every int8 Linear refuses K > 132104 (INT32_MAX / (128·127)),
/// where its int32 sums could overflow.
/// AVX2: per 4 rows × 16 columns, vpmaddubsw(|x| broadcast, sign(w, x)) then vpmaddwd into int32 lanes that are
/// whole outputs, in passes of 1024 inputs (16 KiB of a column pair's weights, held in L1 while every row passes),
/// then the dequantization. threads > 1 splits the columns.
void int8_linear_packed(const int8_t* xq, const float* row_scale, int64_t m, int64_t k, const int8_t* packed,
                        const float* col_scale, const float* bias, int64_t n, float* out, int threads = 1);

/// The whole W8A8 Linear from float32 activations x [M, K]: quantize_rows_int8 (static_scale == 0: per row) or
/// quantize_int8_static (static_scale > 0), then int8_linear_packed, in one call; the same result bit for bit.
/// @throws std::invalid_argument as those do, or for a static_scale that is negative, infinite or NaN.
void int8_linear_from_float(const float* x, int64_t m, int64_t k, float static_scale, const int8_t* packed,
                            const float* col_scale, const float* bias, int64_t n, float* out, int threads = 1);

}  // namespace mpq
