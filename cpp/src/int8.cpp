// The int8 driver: validation and ISA dispatch around the per-ISA kernels (int8_ref.cpp, int8_avx2.cpp,
// int8_avx512.cpp).
#include "mpq/int8.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "int8_kernels.hpp"
#include "isa_dispatch.hpp"

namespace mpq {
namespace {

void check(const char* fn, int64_t n, bool null, int threads) {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": sizes must be non-negative");
  if (n > 0 && null) throw std::invalid_argument(std::string(fn) + ": null buffer with a non-empty size");
  if (threads < 1) throw std::invalid_argument(std::string(fn) + ": threads must be >= 1");
}

// The most inputs whose int32 sums cannot overflow: |x| <= 128 (the packed kernel takes -128) times |w| <= 127.
constexpr int64_t kMaxExactK = INT32_MAX / (128 * 127);

// What every int8 Linear entry checks: sizes, the buffers a non-empty product reads (x, the weights, out and the
// scales; row_scale is null-checked by the caller where it is an input), threads, and K in the exact int32 range.
void check_linear(const char* fn, int64_t m, int64_t k, int64_t n, const void* x, const void* w, const float* out,
                  const float* col_scale, int threads) {
  const std::string f(fn);
  if (m < 0 || k < 0 || n < 0) throw std::invalid_argument(f + ": sizes must be non-negative");
  check(fn, m * n, !out || !col_scale, threads);
  if (m * k > 0 && !x) throw std::invalid_argument(f + ": null activations");
  if (n * k > 0 && !w) throw std::invalid_argument(f + ": null weights");
  if (k > kMaxExactK)
    throw std::invalid_argument(f + ": in_features " + std::to_string(k) + " exceeds " + std::to_string(kMaxExactK) +
                                ", beyond which the exact int32 sums could overflow");
}

// The kernels of the active ISA (isa_dispatch.hpp).
const detail::Int8Kernels& kernels() {
  return detail::select(detail::scalar::kInt8, MPQ_AVX2_KERNELS(detail::avx2::kInt8),
                        MPQ_AVX512_KERNELS(detail::avx512::kInt8));
}

// The static quantizer of table ks over x[0, n), in chunks of 64 Ki values across threads (one chunk per work item:
// enough to amortise the item, small enough to spread a long run).
void quantize_static_chunks(const detail::Int8Kernels& ks, const float* x, int64_t n, float inv, int8_t* q,
                            int threads) {
  const int64_t chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t lo = c * chunk;
    ks.quantize_int8_static(x + lo, std::min(chunk, n - lo), inv, q + lo);
  }
}

}  // namespace

void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("quantize_rows_int8: sizes must be non-negative");
  check("quantize_rows_int8", rows * cols, !x || !q, threads);
  if (rows > 0 && !scales) throw std::invalid_argument("quantize_rows_int8: null scales");
  kernels().quantize_rows_int8(x, rows, cols, q, scales, threads);
}

void quantize_int8_static(const float* x, int64_t n, float scale, int8_t* q, int threads) {
  check("quantize_int8_static", n, !x || !q, threads);
  if (!(scale > 0.0f) || !std::isfinite(scale) || !std::isfinite(1.0f / scale))
    throw std::invalid_argument("quantize_int8_static: scale must be positive and finite, got " +
                                std::to_string(scale));
  quantize_static_chunks(kernels(), x, n, 1.0f / scale, q, threads);
}

void dequantize_int32(const int32_t* acc, int64_t rows, int64_t cols, const float* row_scale,
                      const float* col_scale, const float* bias, float* out, int threads) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("dequantize_int32: sizes must be non-negative");
  check("dequantize_int32", rows * cols, !acc || !out || !row_scale || !col_scale, threads);
  kernels().dequantize_int32(acc, rows, cols, row_scale, col_scale, bias, out, threads);
}

void int8_linear(const int8_t* xq, const float* row_scale, int64_t m, int64_t k, const int8_t* w,
                 const float* col_scale, const float* bias, int64_t n, float* out, int threads) {
  check_linear("int8_linear", m, k, n, xq, w, out, col_scale, threads);
  if (m * n > 0 && !row_scale) throw std::invalid_argument("int8_linear: null row_scale");
  kernels().int8_linear(xq, row_scale, m, k, w, col_scale, bias, n, out, threads);
}

int64_t int8_packed_bytes(int64_t n, int64_t k) {
  if (n < 0 || k < 0) throw std::invalid_argument("int8_packed_bytes: sizes must be non-negative");
  return (n + 7) / 8 * ((k + 3) / 4) * 32;
}

void pack_int8_weights(const int8_t* w, int64_t n, int64_t k, int8_t* packed) {
  const int64_t bytes = int8_packed_bytes(n, k);
  if (n * k > 0 && !w) throw std::invalid_argument("pack_int8_weights: null w");
  if (bytes > 0 && !packed) throw std::invalid_argument("pack_int8_weights: null packed");
  const int64_t k4 = (k + 3) / 4;
  std::fill(packed, packed + bytes, int8_t{0});
  for (int64_t j = 0; j < n; ++j)
    for (int64_t t = 0; t < k; ++t) {
      const int8_t v = w[j * k + t];
      if (v == -128)
        throw std::invalid_argument("pack_int8_weights: w[" + std::to_string(j) + ", " + std::to_string(t) +
                                    "] is -128; int8 weights must lie in [-127, 127]");
      packed[detail::packed_index(j, t, k4)] = v;
    }
}

void int8_linear_packed(const int8_t* xq, const float* row_scale, int64_t m, int64_t k, const int8_t* packed,
                        const float* col_scale, const float* bias, int64_t n, float* out, int threads) {
  check_linear("int8_linear_packed", m, k, n, xq, packed, out, col_scale, threads);
  if (m * n > 0 && !row_scale) throw std::invalid_argument("int8_linear_packed: null row_scale");
  kernels().int8_linear_packed(xq, row_scale, m, k, packed, col_scale, bias, n, out, threads);
}

void int8_linear_from_float(const float* x, int64_t m, int64_t k, float static_scale, const int8_t* packed,
                            const float* col_scale, const float* bias, int64_t n, float* out, int threads) {
  check_linear("int8_linear_from_float", m, k, n, x, packed, out, col_scale, threads);
  if (!(static_scale >= 0.0f) || !std::isfinite(static_scale) ||
      (static_scale > 0.0f && !std::isfinite(1.0f / static_scale)))
    throw std::invalid_argument("int8_linear_from_float: static_scale must be positive and finite (0: per row), got " +
                                std::to_string(static_scale));
  const detail::Int8Kernels& ks = kernels();  // one table for the whole call
  std::vector<int8_t> q(static_cast<size_t>(m * k));
  std::vector<float> rs(static_cast<size_t>(m), static_scale);
  if (static_scale == 0.0f)
    ks.quantize_rows_int8(x, m, k, q.data(), rs.data(), threads);
  else
    quantize_static_chunks(ks, x, m * k, 1.0f / static_scale, q.data(), threads);
  ks.int8_linear_packed(q.data(), rs.data(), m, k, packed, col_scale, bias, n, out, threads);
}

}  // namespace mpq
