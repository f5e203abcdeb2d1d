// Scalar int8 kernels: the reference the AVX2 path is tested against (and the path on CPUs without AVX2).
#include <cfloat>
#include <cmath>

#include "int8_kernels.hpp"

namespace mpq::detail::scalar {
namespace {

inline int8_t q8(float v) {
  float r = std::nearbyint(v);
  r = std::fmin(std::fmax(r, -127.0f), 127.0f);  // fmax(NaN, -127) = -127
  return static_cast<int8_t>(r);
}

void quantize_rows_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, int threads) {
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

void quantize_int8_static(const float* x, int64_t n, float inv, int8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = q8(x[i] * inv);
}

void dequantize_int32(const int32_t* acc, int64_t rows, int64_t cols, const float* rs, const float* cs,
                      const float* bias, float* out, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float rsv = rs[r];
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = std::fma(static_cast<float>(acc[r * cols + c]), rsv * cs[c], bias ? bias[c] : 0.0f);
  }
}

void int8_linear(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* w, const float* cs,
                 const float* bias, int64_t n, float* out, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t j = 0; j < n; ++j) {
    const int8_t* wj = w + j * k;
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xi = xq + i * k;
      int32_t acc = 0;
      for (int64_t t = 0; t < k; ++t) acc += static_cast<int32_t>(xi[t]) * static_cast<int32_t>(wj[t]);
      out[i * n + j] = std::fma(static_cast<float>(acc), rs[i] * cs[j], bias ? bias[j] : 0.0f);
    }
  }
}

void int8_linear_packed(const int8_t* xq, const float* rs, int64_t m, int64_t k, const int8_t* packed,
                        const float* cs, const float* bias, int64_t n, float* out, int threads) {
  const int64_t k4 = (k + 3) / 4;
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xi = xq + i * k;
      int32_t acc = 0;
      for (int64_t t = 0; t < k; ++t)
        acc += static_cast<int32_t>(xi[t]) * static_cast<int32_t>(packed[packed_index(j, t, k4)]);
      out[i * n + j] = std::fma(static_cast<float>(acc), rs[i] * cs[j], bias ? bias[j] : 0.0f);
    }
  }
}

}  // namespace

const Int8Kernels kInt8{quantize_rows_int8, quantize_int8_static, dequantize_int32, int8_linear, int8_linear_packed};

}  // namespace mpq::detail::scalar
