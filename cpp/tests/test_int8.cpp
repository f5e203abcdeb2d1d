// mpq/int8.hpp: the quantizers and the int8 Linear at every SIMD level against plain loops written here
// (int64 sums, the documented rounding), odd sizes for vector tails, extreme values, and the documented errors.
#include "check.hpp"
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpq/int8.hpp"
#include "mpq/isa.hpp"

namespace {


int8_t ref_q(float v, float inv) {
  float r = std::nearbyint(v * inv);
  if (std::isnan(r)) return -127;
  return static_cast<int8_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

void check_quantize_rows(const std::string& isa, std::mt19937& rng) {
  const int sizes[][2] = {{1, 1}, {1, 7}, {3, 9}, {2, 15}, {5, 17}, {4, 31}, {3, 33}, {2, 64}, {7, 100}};
  for (auto& s : sizes) {
    const int rows = s[0], cols = s[1];
    std::normal_distribution<float> nd(0.0f, 3.0f);
    std::vector<float> x(rows * cols);
    for (auto& v : x) v = nd(rng);
    x[0] = 0.0f;
    if (cols > 3) x[cols - 1] = INFINITY;  // ignored by the scale, saturates
    std::vector<int8_t> q(x.size());
    std::vector<float> sc(rows);
    mpq::quantize_rows_int8(x.data(), rows, cols, q.data(), sc.data());
    for (int r = 0; r < rows; ++r) {
      float amax = 0.0f;
      for (int c = 0; c < cols; ++c) {
        float a = std::fabs(x[r * cols + c]);
        if (std::isfinite(a) && a > amax) amax = a;
      }
      const float want_s = amax == 0.0f ? 1.0f : std::fmax(amax / 127.0f, FLT_MIN);
      CHECK(sc[r] == want_s, "%s rows %d cols %d row %d scale %g vs %g", isa.c_str(), rows, cols, r, sc[r], want_s);
      for (int c = 0; c < cols; ++c)
        CHECK(q[r * cols + c] == ref_q(x[r * cols + c], 1.0f / want_s), "%s [%d,%d] %d vs %d", isa.c_str(), r, c,
              q[r * cols + c], ref_q(x[r * cols + c], 1.0f / want_s));
    }
  }
}

void check_linear(const std::string& isa, std::mt19937& rng) {
  // every row tail (m % 4, m % 8), column tail (n % 8, n % 16, panels of 1 to 4 blocks of 8) and input tail
  // (k % 4, k % 32) of every kernel, the packed kernels' passes over K (1024 inputs AVX2, 512 AVX-512) and blocks
  // of rows
  const int shapes[][3] = {{1, 1, 1},   {3, 33, 5},  {2, 64, 8},   {5, 100, 7},  {1, 31, 4},  {4, 96, 9},
                           {6, 576, 13}, {7, 130, 24}, {9, 67, 17}, {8, 256, 32}, {3, 2, 40}, {4, 1, 16},
                           {5, 1025, 9}, {2, 2100, 17}, {17, 513, 41}, {16, 40, 48}, {11, 4, 57},
                           {250, 2100, 9}, {30, 20000, 3}};  // the last two: AVX-512's blocks of 512 KiB of rows
  std::uniform_int_distribution<int> d(-127, 127);
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  for (auto& s : shapes) {
    const int m = s[0], k = s[1], n = s[2];
    std::vector<int8_t> x(m * k), w(n * k);
    for (auto& v : x) v = static_cast<int8_t>(d(rng));
    for (auto& v : w) v = static_cast<int8_t>(d(rng));
    for (int t = 0; t < k; ++t) x[t] = 127, w[t] = -127;  // extreme pairs
    std::vector<float> rs(m), cs(n), b(n), out(m * n);
    for (auto& v : rs) v = u(rng);
    for (auto& v : cs) v = u(rng);
    for (auto& v : b) v = u(rng) - 0.5f;
    if (m > 1) x[k] = -128;  // the packed kernel takes -128 activations (|-128| is 128 unsigned)
    std::vector<int8_t> packed(mpq::int8_packed_bytes(n, k));
    mpq::pack_int8_weights(w.data(), n, k, packed.data());
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
      const float* bp = with_bias ? b.data() : nullptr;
      for (int threads = 1; threads <= 2; ++threads) {
        std::vector<float> out_packed(m * n);
        mpq::int8_linear_packed(x.data(), rs.data(), m, k, packed.data(), cs.data(), bp, n, out_packed.data(),
                                threads);
        if (m > 1) x[k] = -127;  // the unpacked kernel's sign trick needs [-127, 127]
        mpq::int8_linear(x.data(), rs.data(), m, k, w.data(), cs.data(), bp, n, out.data(), threads);
        if (m > 1) x[k] = -128;
        for (int i = 0; i < m; ++i)
          for (int j = 0; j < n; ++j) {
            long long acc = 0, acc_unpacked = 0;
            for (int t = 0; t < k; ++t) {
              acc += static_cast<long long>(x[i * k + t]) * w[j * k + t];
              acc_unpacked += static_cast<long long>(i == 1 && t == 0 ? -127 : x[i * k + t]) * w[j * k + t];
            }
            const float bj = with_bias ? b[j] : 0.0f;
            const float want = std::fma(static_cast<float>(acc_unpacked), rs[i] * cs[j], bj);
            CHECK(out[i * n + j] == want, "%s m%d k%d n%d [%d,%d] %g vs %g", isa.c_str(), m, k, n, i, j,
                  out[i * n + j], want);
            const float want_packed = std::fma(static_cast<float>(acc), rs[i] * cs[j], bj);
            CHECK(out_packed[i * n + j] == want_packed, "%s packed m%d k%d n%d [%d,%d] %g vs %g", isa.c_str(), m,
                  k, n, i, j, out_packed[i * n + j], want_packed);
          }
      }
    }
  }
}

// The largest sums the K bound allows: K = 132104 inputs of ±127 and -128 against ±127 weights. The AVX-512 kernel
// sums (w + 128) · x, which wraps int32 on the way (255 · 127 · K > 2^31): its result must still be exact.
void check_extreme_sums(const std::string& isa) {
  const int m = 3, k = 132104, n = 9;
  std::vector<int8_t> x(m * k), w(n * k);
  for (int t = 0; t < k; ++t) {
    x[t] = 127, x[k + t] = -128, x[2 * k + t] = static_cast<int8_t>(t % 2 ? 127 : -128);
    for (int j = 0; j < n; ++j) w[j * k + t] = static_cast<int8_t>(j % 3 == 0 ? 127 : (j % 3 == 1 ? -127 : (t % 2 ? 127 : -127)));
  }
  std::vector<int8_t> packed(mpq::int8_packed_bytes(n, k));
  mpq::pack_int8_weights(w.data(), n, k, packed.data());
  std::vector<float> rs(m, 1.0f), cs(n, 1.0f), out(m * n);
  mpq::int8_linear_packed(x.data(), rs.data(), m, k, packed.data(), cs.data(), nullptr, n, out.data());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      long long acc = 0;
      for (int t = 0; t < k; ++t) acc += static_cast<long long>(x[i * k + t]) * w[j * k + t];
      CHECK(acc >= INT32_MIN && acc <= INT32_MAX, "extreme sums: the test's own sum %lld left int32", acc);
      CHECK(out[i * n + j] == static_cast<float>(acc), "%s extreme sums [%d,%d] %.1f vs %lld", isa.c_str(), i, j,
            out[i * n + j], acc);
    }
}

// the fused entry is the quantizer then the packed GEMM, bit for bit, dynamic and static
void check_from_float(const std::string& isa, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::uniform_int_distribution<int> d(-127, 127);
  const int m = 5, k = 70, n = 19;
  std::vector<float> x(m * k), cs(n, 0.5f), b(n, 0.25f), rs(m), got(m * n), want(m * n);
  for (auto& v : x) v = nd(rng);
  std::vector<int8_t> w(n * k), q(m * k), packed(mpq::int8_packed_bytes(n, k));
  for (auto& v : w) v = static_cast<int8_t>(d(rng));
  mpq::pack_int8_weights(w.data(), n, k, packed.data());
  for (float scale : {0.0f, 0.03f}) {
    mpq::int8_linear_from_float(x.data(), m, k, scale, packed.data(), cs.data(), b.data(), n, got.data());
    if (scale == 0.0f) {
      mpq::quantize_rows_int8(x.data(), m, k, q.data(), rs.data());
    } else {
      mpq::quantize_int8_static(x.data(), m * k, scale, q.data());
      std::fill(rs.begin(), rs.end(), scale);
    }
    mpq::int8_linear_packed(q.data(), rs.data(), m, k, packed.data(), cs.data(), b.data(), n, want.data());
    CHECK(got == want, "%s int8_linear_from_float scale %g differs from quantizer + int8_linear_packed", isa.c_str(),
          scale);
  }
}

void check_errors() {
  float x = 1.0f;
  int8_t q;
  bool threw = false;
  const int8_t w[2] = {3, -128};
  int8_t packed[32];
  try {
    mpq::pack_int8_weights(w, 1, 2, packed);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "a -128 weight must throw invalid_argument");
  threw = false;
  try {  // K beyond the exact int32 range: refused before any buffer is read
    mpq::int8_linear_packed(packed, &x, 1, 132105, packed, &x, nullptr, 1, &x);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "K = 132105 must throw invalid_argument");
  threw = false;
  try {
    mpq::quantize_int8_static(&x, 1, 0.0f, &q);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "scale 0 must throw invalid_argument");
  threw = false;
  try {
    mpq::quantize_rows_int8(nullptr, 2, 2, &q, &x);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "null x must throw invalid_argument");
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  for (const auto& isa : mpq::available_isas()) {
    mpq::set_isa(isa);
    check_quantize_rows(isa, rng);
    check_linear(isa, rng);
    check_from_float(isa, rng);
    check_extreme_sums(isa);
  }
  check_errors();
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
