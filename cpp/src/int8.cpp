// Scalar reference of mpq/int8.hpp and the ISA dispatch.
#include "mpq/int8.hpp"

#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>

#include "mpq/isa.hpp"

namespace mpq {
namespace {

void check(const char* fn, int64_t n, bool null, int threads) {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": sizes must be non-negative");
  if (n > 0 && null) throw std::invalid_argument(std::string(fn) + ": null buffer with a non-empty size");
  if (threads < 1) throw std::invalid_argument(std::string(fn) + ": threads must be >= 1");
}

inline int8_t q8(float v) {
  float r = std::nearbyint(v);
  r = std::fmin(std::fmax(r, -127.0f), 127.0f);  // fmax(NaN, -127) = -127
  return static_cast<int8_t>(r);
}

[[maybe_unused]] bool use_avx2() {
#ifdef MPQ_HAVE_AVX2
  return active_isa() != Isa::kScalar;
#else
  return false;
#endif
}

}  // namespace

void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("quantize_rows_int8: sizes must be non-negative");
  check("quantize_rows_int8", rows * cols, !x || !q, threads);
  if (rows > 0 && !scales) throw std::invalid_argument("quantize_rows_int8: null scales");
#ifdef MPQ_HAVE_AVX2
  if (use_avx2()) return detail::quantize_rows_int8_avx2(x, rows, cols, q, scales, threads);
#endif
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float a = std::fabs(xr[c]);
      if (a < INFINITY && a > amax) amax = a;
    }
    const float s = amax == 0.0f ? 1.0f : std::fmax(amax / 127.0f, FLT_MIN);
    const float inv = 1.0f / s;
    scales[r] = s;
    int8_t* qr = q + r * cols;
    for (int64_t c = 0; c < cols; ++c) qr[c] = q8(xr[c] * inv);
  }
}

void quantize_int8_static(const float* x, int64_t n, float scale, int8_t* q, int threads) {
  check("quantize_int8_static", n, !x || !q, threads);
  if (!(scale > 0.0f) || !std::isfinite(scale) || !std::isfinite(1.0f / scale))
    throw std::invalid_argument("quantize_int8_static: scale must be positive and finite, got " +
                                std::to_string(scale));
  const float inv = 1.0f / scale;
#ifdef MPQ_HAVE_AVX2
  if (use_avx2()) return detail::quantize_int8_static_avx2(x, n, inv, q, threads);
#endif
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) q[i] = q8(x[i] * inv);
}

void dequantize_int32(const int32_t* acc, int64_t rows, int64_t cols, const float* row_scale,
                      const float* col_scale, const float* bias, float* out, int threads) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("dequantize_int32: sizes must be non-negative");
  check("dequantize_int32", rows * cols, !acc || !out || !row_scale || !col_scale, threads);
#ifdef MPQ_HAVE_AVX2
  if (use_avx2()) return detail::dequantize_int32_avx2(acc, rows, cols, row_scale, col_scale, bias, out, threads);
#endif
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float rs = row_scale[r];
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = std::fma(static_cast<float>(acc[r * cols + c]), rs * col_scale[c], bias ? bias[c] : 0.0f);
  }
}

void int8_linear(const int8_t* xq, const float* row_scale, int64_t m, int64_t k, const int8_t* w,
                 const float* col_scale, const float* bias, int64_t n, float* out, int threads) {
  if (m < 0 || k < 0 || n < 0) throw std::invalid_argument("int8_linear: sizes must be non-negative");
  check("int8_linear", m * n, !out || !row_scale || !col_scale, threads);
  if (m * k > 0 && !xq) throw std::invalid_argument("int8_linear: null xq");
  if (n * k > 0 && !w) throw std::invalid_argument("int8_linear: null w");
#ifdef MPQ_HAVE_AVX2
  if (use_avx2()) return detail::int8_linear_avx2(xq, row_scale, m, k, w, col_scale, bias, n, out, threads);
#endif
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t j = 0; j < n; ++j) {
    const int8_t* wj = w + j * k;
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xi = xq + i * k;
      int32_t acc = 0;
      for (int64_t t = 0; t < k; ++t) acc += static_cast<int32_t>(xi[t]) * static_cast<int32_t>(wj[t]);
      out[i * n + j] = std::fma(static_cast<float>(acc), row_scale[i] * col_scale[j], bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace mpq
