// ctest: the fused sensitivity kernel against a naive sum over mpq::fake_quantize output, at every ISA level,
// for odd sizes (vector tails), several grads, all granularities, explicit scales; and its documented errors.
#include "check.hpp"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpq/formats.hpp"
#include "mpq/isa.hpp"
#include "mpq/sensitivity.hpp"

namespace {

struct Case {
  const char* fmt;
  int gran;  // 0 tensor, 1 row, 2 group
  std::size_t group;
  float scale;  // > 0: explicit per-tensor scale
};

void run(std::size_t rows, std::size_t cols, std::size_t k, std::size_t sample_rows, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const std::size_t n = rows * cols;
  std::vector<float> t(n), g(k * n);
  for (auto& v : t) v = nd(rng) * (rng() % 17 == 0 ? 30.f : 1.f);  // a few outliers
  for (auto& v : g) v = nd(rng);
  std::vector<Case> cases = {{"fp8_e4m3", 1, 0, 0}, {"int8", 0, 0, 0}, {"int8", 1, 0, 0},
                             {"fp8_e5m2", 0, 0, 0.05f}, {"bf16", 0, 0, 0}, {"fp8_e4m3_gaudi2", 0, 0, 0},
                             {"int8_asym", 1, 0, 0}};
  if (cols % 4 == 0) cases.push_back({"int4", 2, 4, 0});
  std::vector<mpq::QuantSpec> specs;
  std::vector<float> one_scale(1), zero(1, 0.f);
  for (const auto& c : cases) {
    mpq::QuantSpec s;
    s.format = &mpq::format_by_name(c.fmt);
    s.block = c.gran == 0 ? n : c.gran == 1 ? cols : c.group;
    s.rule = s.format->default_rule;
    if (c.scale > 0) {
      one_scale[0] = c.scale;
      s.scales = {one_scale.data(), 1};
      s.zero_points = {zero.data(), 1};
    }
    specs.push_back(s);
  }
  const std::size_t nb = rows / sample_rows, C = specs.size();
  // naive expectation, double, from fake_quantize
  std::vector<double> want(k * nb * C, 0.0), mag(k * nb * C, 0.0);
  std::vector<float> q(n);
  for (std::size_t c = 0; c < C; ++c) {
    const auto& s = specs[c];
    if (s.scales.size)
      mpq::fake_quantize(t.data(), q.data(), mpq::DType::kF32, n, s.block, *s.format, s.scales, s.zero_points, 1);
    else
      mpq::fake_quantize_auto(t.data(), q.data(), mpq::DType::kF32, n, s.block, *s.format, s.rule, 1);
    for (std::size_t kk = 0; kk < k; ++kk)
      for (std::size_t i = 0; i < n; ++i) {
        const double p = static_cast<double>(g[kk * n + i]) * (static_cast<double>(q[i]) - t[i]);
        want[(kk * nb + i / cols / sample_rows) * C + c] += p;
        mag[(kk * nb + i / cols / sample_rows) * C + c] += std::fabs(p);
      }
  }
  for (const auto& isa : mpq::available_isas()) {
    mpq::set_isa(isa);
    for (int threads : {1, 3}) {
      std::vector<double> got(k * nb * C, -1.0);
      mpq::sensitivity(t.data(), g.data(), rows, cols, k, sample_rows, {specs.data(), specs.size()}, got.data(), threads);
      for (std::size_t i = 0; i < got.size(); ++i) {
        const bool ok = std::fabs(got[i] - want[i]) <= 1e-5 * mag[i] + 1e-30;
        if (!ok)
          std::fprintf(stderr, "isa=%s rows=%zu cols=%zu k=%zu i=%zu got=%.9g want=%.9g\n", isa.c_str(), rows, cols,
                       k, i, got[i], want[i]);
        CHECK(ok);
      }
    }
  }
  mpq::set_isa(mpq::available_isas().back());
}

// Every value's own difference, exactly: one value per row, each row a sample, gradient 1, so out[r] is the fp32
// Q(t[r]) - t[r] the kernel formed, as a double. It must equal fake_quantize's y - t bit for bit (a NaN t: some NaN),
// for every bf16 bit pattern as t (ties of every fp8 grid, subnormals, +-0, +-inf, NaN) at several scales, at every
// ISA: the SIMD kernels run their own compile-time variants of each format, not fake_quantize's code.
void exact_per_value(const mpq::Format& fmt, float scale, float zero_point) {
  const std::size_t n = 65536;
  std::vector<float> t(n), g(n, 1.0f), q(n);
  for (std::size_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(i) << 16;
    std::memcpy(&t[i], &bits, 4);
    t[i] *= 1.0f;  // a signalling NaN pattern becomes quiet: the kernel only promises some NaN
  }
  mpq::QuantSpec s;
  s.format = &fmt;
  s.block = n;
  s.scales = {&scale, 1};
  s.zero_points = {&zero_point, 1};
  mpq::fake_quantize(t.data(), q.data(), mpq::DType::kF32, n, n, fmt, s.scales, s.zero_points, 1);
  for (const auto& isa : mpq::available_isas()) {
    mpq::set_isa(isa);
    std::vector<double> out(n);
    mpq::sensitivity(t.data(), g.data(), n, 1, 1, 1, {&s, 1}, out.data(), 1);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float want = q[i] - t[i];
      const bool ok = std::isnan(t[i]) || std::isnan(want) ? std::isnan(out[i])
                                                           : static_cast<double>(want) == out[i];
      if (!ok && bad++ < 3)
        std::fprintf(stderr, "isa=%s fmt=%s scale=%g zp=%g t=%.9g got=%.9g want=%.9g\n", isa.c_str(), fmt.name.c_str(),
                     scale, zero_point, t[i], out[i], want);
    }
    CHECK(bad == 0);
  }
  mpq::set_isa(mpq::available_isas().back());
}

template <class F>
void expect_invalid(F f, const char* needle) {
  try {
    f();
    std::fprintf(stderr, "expected invalid_argument containing '%s'\n", needle);
    ++failures;
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::fprintf(stderr, "message '%s' lacks '%s'\n", e.what(), needle);
      ++failures;
    }
  }
}
}  // namespace

int main() {
  std::mt19937 rng(42);
  for (std::size_t cols : {1, 7, 16, 17, 33, 1000})
    for (std::size_t k : {1, 3, 9}) run(6, cols, k, 2, rng);
  run(64, 576, 2, 16, rng);

  // every value of every format, exactly, at scales that keep and that need the +-FLT_MAX clamp
  for (const auto& name : mpq::format_names())
    for (float scale : {1.0f, 0.37f, 1e-3f, 3e37f}) exact_per_value(mpq::format_by_name(name), scale, 0.0f);
  exact_per_value(mpq::format_by_name("int8_asym"), 0.05f, 3.0f);
  exact_per_value(mpq::format_by_name("int4_asym"), 2e37f, -5.0f);
  {  // saturating formats too wide for the rounding add take quantize_one's bit steps (with and without -0)
    mpq::Format wide = mpq::format_by_name("bf16");
    wide.saturate = true;
    exact_per_value(wide, 1.0f, 0.0f);
    exact_per_value(wide, 3e37f, 0.0f);
    wide.neg_zero = false;
    exact_per_value(wide, 0.37f, 0.0f);
  }
  // NaN propagates
  {
    std::vector<float> t(8, 1.f), g(8, 1.f);
    t[3] = std::nanf("");
    mpq::QuantSpec s;
    s.format = &mpq::format_by_name("int8");
    s.block = 8;
    double out = 0;
    mpq::sensitivity(t.data(), g.data(), 1, 8, 1, 1, {&s, 1}, &out, 1);
    CHECK(std::isnan(out));
  }
  // errors
  std::vector<float> t(12, 1.f), g(12, 1.f);
  double out[12];
  mpq::QuantSpec s;
  s.format = &mpq::format_by_name("int8");
  s.block = 5;
  expect_invalid([&] { mpq::sensitivity(t.data(), g.data(), 3, 4, 1, 1, {&s, 1}, out, 1); }, "block");
  s.block = 4;
  expect_invalid([&] { mpq::sensitivity(t.data(), g.data(), 3, 4, 1, 2, {&s, 1}, out, 1); }, "sample_rows");
  float bad = -1.f;
  s.scales = {&bad, 1};
  expect_invalid([&] { mpq::sensitivity(t.data(), g.data(), 3, 4, 1, 1, {&s, 1}, out, 1); }, "positive");
  s.scales = {};
  s.format = nullptr;
  expect_invalid([&] { mpq::sensitivity(t.data(), g.data(), 3, 4, 1, 1, {&s, 1}, out, 1); }, "null");
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("test_sensitivity: ok\n");
  return 0;
}
