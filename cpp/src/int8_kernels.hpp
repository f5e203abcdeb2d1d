// Internal: the per-ISA kernel tables behind int8.cpp (int8_ref.cpp, int8_avx2.cpp, int8_avx512.cpp; see
// isa_dispatch.hpp). The kernels take checked arguments: the public functions of mpq/int8.hpp validate them, then
// pick a table.
#pragma once
#include <cstdint>

namespace mpq::detail {

/// The kernels of int8.cpp, with the same results bit for bit in every table; the formulas are those of
/// mpq/int8.hpp (rs, cs: row and column scales).
struct Int8Kernels {
  void (*quantize_rows_int8)(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads);
  /// inv: the inverse of the static scale. One thread: int8.cpp splits a long run into chunks across threads.
  void (*quantize_int8_static)(const float* x, int64_t n, float inv, int8_t* q);
  void (*dequantize_int32)(const int32_t* acc, int64_t rows, int64_t cols, const float* rs, const float* cs,
                           const float* bias, float* out, int threads);
  void (*int8_linear)(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* w, const float* cs,
                      const float* bias, int64_t n, float* out, int threads);
  /// packed: the layout of mpq::pack_int8_weights.
  void (*int8_linear_packed)(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* packed,
                             const float* cs, const float* bias, int64_t n, float* out, int threads);
};

/// Index of w[j, t] in the packed layout (mpq/int8.hpp); k4 = ceil(K / 4).
inline int64_t packed_index(int64_t j, int64_t t, int64_t k4) { return ((j / 8 * k4 + t / 4) * 8 + j % 8) * 4 + t % 4; }

namespace scalar {
extern const Int8Kernels kInt8;
}  // namespace scalar

namespace avx2 {
extern const Int8Kernels kInt8;
/// The unpacked int8 Linear (kInt8.int8_linear), which the AVX-512 table shares.
void int8_linear(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* w, const float* cs,
                 const float* bias, int64_t n, float* out, int threads);
}  // namespace avx2

namespace avx512 {
extern const Int8Kernels kInt8;
}  // namespace avx512

}  // namespace mpq::detail
