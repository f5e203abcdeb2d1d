// Scalar sensitivity kernel: the reference the AVX2 path is tested against (and the path on CPUs without AVX2).
// Q(t) comes from scalar::quantize_one, the definition of every format; products are fp32, sums double.
#include <cstddef>
#include <limits>

#include "kernels.hpp"

namespace mpq::detail::scalar {
namespace {

/// acc[k] += sum_{i<n} g[k*g_stride + i] * (Q(t[i]) - t[i]) for k < n_grads.
void delta_dot(const float* t, const float* g, std::size_t g_stride, std::size_t n_grads, std::size_t n,
               const Params& p, BlockScale s, double* acc) {
  // Q(t) saturates at FLT_MAX as fake_quantize's does (formats.hpp), for the formats that saturate
  const float lim = saturates_output(p) ? finite_max(DType::kF32) : std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) {
    const float d = saturate(quantize_one(t[i], p, s), lim) - t[i];
    for (std::size_t k = 0; k < n_grads; ++k) acc[k] += static_cast<double>(g[k * g_stride + i] * d);
  }
}

/// acc[c] += sum_{i<n} g[i] * (Q_c(t[i]) - t[i]) for c < n_q (one gradient, several quantizers).
void delta_dot_multi(const float* t, const float* g, std::size_t n, const Params* p, const BlockScale* s,
                     std::size_t n_q, double* acc) {
  for (std::size_t c = 0; c < n_q; ++c) delta_dot(t, g, 0, 1, n, p[c], s[c], acc + c);
}

}  // namespace

const SensitivityKernels kSensitivity{delta_dot, delta_dot_multi};

}  // namespace mpq::detail::scalar
