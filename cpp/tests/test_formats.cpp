// C++ tests of the formats: every SIMD path equals the scalar definition bit for bit, spec values hold, and bad
// input throws std::invalid_argument. Returns non-zero on the first failure.
#include "check.hpp"
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "mpq/formats.hpp"
#include "mpq/isa.hpp"

namespace {


template <class Fn>
bool throws_invalid(Fn fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

uint32_t bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Runs fake_quantize_auto under every ISA on the same input and checks the outputs are identical bytes.
template <class T>
void check_isas_agree(const std::vector<T>& x, mpq::DType dtype, std::size_t block, const mpq::Format& f) {
  std::vector<std::vector<T>> outs;
  for (const auto& isa : mpq::available_isas()) {
    mpq::set_isa(isa);
    std::vector<T> y(x.size());
    mpq::fake_quantize_auto(x.data(), y.data(), dtype, x.size(), block, f, f.default_rule, 2);
    outs.push_back(y);
  }
  for (std::size_t k = 1; k < outs.size(); ++k) {
    const bool same = std::memcmp(outs[0].data(), outs[k].data(), x.size() * sizeof(T)) == 0;
    if (!same) std::fprintf(stderr, "format %s dtype %d: isa %zu differs from scalar\n", f.name.c_str(),
                            static_cast<int>(dtype), k);
    CHECK(same);
  }
  mpq::set_isa(mpq::available_isas().back());
}

void test_every_16bit_pattern_all_isas() {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  for (const auto& name : mpq::format_names()) {
    const mpq::Format& f = mpq::format_by_name(name);
    std::vector<float> scale1{1.0f}, zp0{0.0f};
    for (mpq::DType d : {mpq::DType::kBF16, mpq::DType::kF16}) {
      std::vector<std::vector<uint16_t>> outs;
      for (const auto& isa : mpq::available_isas()) {
        mpq::set_isa(isa);
        std::vector<uint16_t> y(all.size());
        mpq::fake_quantize(all.data(), y.data(), d, all.size(), all.size(), f, scale1, zp0, 1);
        outs.push_back(y);
      }
      for (std::size_t k = 1; k < outs.size(); ++k) CHECK(outs[0] == outs[k]);
      check_isas_agree(all, d, 64, f);  // per-block scales by the default rule
    }
  }
  mpq::set_isa(mpq::available_isas().back());
}

void test_random_fp32_all_isas() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(4099);  // not a multiple of 8: exercises the vector tail
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
  x[5] = NAN;
  x[6] = INFINITY;
  x[7] = -0.0f;
  for (const auto& name : mpq::format_names()) {
    const mpq::Format& f = mpq::format_by_name(name);
    check_isas_agree(x, mpq::DType::kF32, x.size(), f);
    check_isas_agree(std::vector<float>(x.begin(), x.begin() + 4096), mpq::DType::kF32, 32, f);
  }
}

void test_spec_values() {
  const mpq::Format& e4m3 = mpq::format_by_name("fp8_e4m3");
  CHECK(mpq::fake_quantize_value(448.0f, e4m3, 1.0f) == 448.0f);
  CHECK(mpq::fake_quantize_value(1e9f, e4m3, 1.0f) == 448.0f);          // saturates
  CHECK(mpq::fake_quantize_value(-INFINITY, e4m3, 1.0f) == -448.0f);
  CHECK(mpq::fake_quantize_value(std::ldexp(1.0f, -9), e4m3, 1.0f) == std::ldexp(1.0f, -9));  // min subnormal
  CHECK(mpq::fake_quantize_value(std::ldexp(1.0f, -10), e4m3, 1.0f) == 0.0f);  // tie to even (zero)
  CHECK(mpq::fake_quantize_value(1.0625f, e4m3, 1.0f) == 1.0f);         // tie between 1 and 1.125 -> even
  CHECK(mpq::fake_quantize_value(1.1875f, e4m3, 1.0f) == 1.25f);        // tie between 1.125 and 1.25 -> even
  const float nan_out = mpq::fake_quantize_value(-NAN, e4m3, 1.0f);
  CHECK(std::isnan(nan_out) && bits(nan_out) == 0xFFF00000u);           // torch's e4m3fn NaN, sign kept
  const mpq::Format& fnuz = mpq::format_by_name("fp8_e4m3fnuz");
  CHECK(std::signbit(mpq::fake_quantize_value(-1e-6f, fnuz, 1.0f)) == false);  // no negative zero
  CHECK(mpq::fake_quantize_value(std::ldexp(1.0f, -10), fnuz, 1.0f) == std::ldexp(1.0f, -10));
  const mpq::Format& g2 = mpq::format_by_name("fp8_e4m3_gaudi2");
  CHECK(mpq::fake_quantize_value(300.0f, g2, 1.0f) == 240.0f);
  const mpq::Format& fp16 = mpq::format_by_name("fp16");
  CHECK(std::isinf(mpq::fake_quantize_value(65520.0f, fp16, 1.0f)));  // overflows, no saturation
  CHECK(mpq::fake_quantize_value(65519.0f, fp16, 1.0f) == 65504.0f);
  const mpq::Format& i4 = mpq::format_by_name("int4");
  CHECK(mpq::fake_quantize_value(2.5f, i4, 1.0f) == 2.0f);
  CHECK(mpq::fake_quantize_value(-9.0f, i4, 1.0f) == -7.0f);
  CHECK(g2.hw_scales.size() == 4 && g2.hw_scales.front() == std::ldexp(1.0f, -8) && g2.hw_scales.back() == 16.0f);
}

uint16_t f16_bits(float f) {  // exact for the values used below (fp16-representable)
  if (f == 65504.0f) return 0x7BFF;
  if (f == -65504.0f) return 0xFBFF;
  if (f == 1.0f) return 0x3C00;
  return 0;
}

// The ends of the fp32 and fp16 ranges: finite in, finite out, and the extremes come back near themselves.
void test_extremes() {
  const float big = 3.4e38f;
  const std::vector<float> x{big, -big, 1.0f};
  for (const char* name : {"int8_asym", "int4_asym", "int8", "int4", "fp8_e4m3", "fp8_e5m2"}) {
    const mpq::Format& f = mpq::format_by_name(name);
    for (mpq::ScaleRule rule : {mpq::ScaleRule::kMaxAbs, mpq::ScaleRule::kPow2}) {
      float s = 0, zp = 0;
      mpq::compute_scales(x.data(), mpq::DType::kF32, 3, 3, f, rule, &s, &zp);
      CHECK(std::isfinite(s) && s > 0, "%s: scale %g", name, s);
      for (const auto& isa : mpq::available_isas()) {
        mpq::set_isa(isa);
        std::vector<float> y(3);
        mpq::fake_quantize_auto(x.data(), y.data(), mpq::DType::kF32, 3, 3, f, rule, 1);
        const double tol = f.is_int ? 0.51 * s : 0.13 * double(big);  // half an int step; fp8: an eighth
        for (int i = 0; i < 2; ++i)
          CHECK(std::isfinite(y[i]) && std::fabs(double(y[i]) - double(x[i])) <= tol, "%s %s: %g -> %g (scale %g)",
                name, isa.c_str(), x[i], y[i], s);
      }
    }
  }
  // hi - lo = 6.8e38 overflows fp32: the scale is still (hi - lo) / 255
  float s = 0, zp = 0;
  mpq::compute_scales(x.data(), mpq::DType::kF32, 3, 3, mpq::format_by_name("int8_asym"), mpq::ScaleRule::kMaxAbs, &s,
                      &zp);
  CHECK(std::fabs(double(s) / (6.8e38 / 255) - 1) < 1e-6, "scale %g", s);
  // fp16 +-65504: the grid point half a step past -65504 saturates at -65504 instead of overflowing to -Inf
  const std::vector<uint16_t> h{f16_bits(65504.0f), f16_bits(-65504.0f), f16_bits(1.0f)};
  for (const char* name : {"int8_asym", "int4_asym"}) {
    for (const auto& isa : mpq::available_isas()) {
      mpq::set_isa(isa);
      std::vector<uint16_t> y(3);
      mpq::fake_quantize_auto(h.data(), y.data(), mpq::DType::kF16, 3, 3, mpq::format_by_name(name),
                              mpq::ScaleRule::kMaxAbs, 1);
      CHECK((y[0] & 0x7C00u) != 0x7C00u && y[1] == 0xFBFF, "%s %s: %04x %04x", name, isa.c_str(), y[0], y[1]);
    }
  }
  CHECK(mpq::fake_quantize_value(big, mpq::format_by_name("int8"), big / 126.6f) == FLT_MAX);  // 127 * s > FLT_MAX
  mpq::set_isa(mpq::available_isas().back());
}

void test_partial_alias_throws() {
  const mpq::Format& f = mpq::format_by_name("int8");
  std::vector<float> buf(33, 1.0f), s{1.0f}, z{0.0f};
  CHECK(throws_invalid([&] { mpq::fake_quantize(buf.data(), buf.data() + 1, mpq::DType::kF32, 32, 32, f, s, z); }));
  CHECK(throws_invalid([&] { mpq::fake_quantize(buf.data() + 1, buf.data(), mpq::DType::kF32, 32, 32, f, s, z); }));
  CHECK(throws_invalid([&] {
    mpq::fake_quantize_auto(buf.data(), buf.data() + 1, mpq::DType::kF32, 32, 32, f, mpq::ScaleRule::kMaxAbs);
  }));
  CHECK(!throws_invalid([&] { mpq::fake_quantize(buf.data(), buf.data(), mpq::DType::kF32, 32, 32, f, s, z); }));
  std::vector<uint16_t> h(64, 0x3C00);  // 16-bit: the overlap is counted in 2-byte values
  CHECK(throws_invalid([&] {
    mpq::fake_quantize_auto(h.data(), h.data() + 31, mpq::DType::kBF16, 32, 32, f, mpq::ScaleRule::kMaxAbs);
  }));
  CHECK(!throws_invalid([&] {
    mpq::fake_quantize_auto(h.data(), h.data() + 32, mpq::DType::kBF16, 32, 32, f, mpq::ScaleRule::kMaxAbs);
  }));
}

void test_bad_input_throws() {
  CHECK(throws_invalid([] { mpq::format_by_name("fp7"); }));
  CHECK(throws_invalid([] { mpq::scale_rule_by_name("mse"); }));
  const mpq::Format& f = mpq::format_by_name("int8");
  std::vector<float> x(10), y(10), s{0.0f}, z{0.0f};
  CHECK(throws_invalid([&] { mpq::fake_quantize(x.data(), y.data(), mpq::DType::kF32, 10, 3, f, s, z); }));
  CHECK(throws_invalid([&] { mpq::fake_quantize(x.data(), y.data(), mpq::DType::kF32, 10, 10, f, s, z); }));
  std::vector<float> s2{1.0f, 1.0f, 1.0f};
  CHECK(throws_invalid([&] { mpq::fake_quantize(x.data(), y.data(), mpq::DType::kF32, 10, 5, f, s2, {}); }));
  CHECK(throws_invalid([&] {
    std::vector<float> sc(1), zp(1);
    mpq::compute_scales(x.data(), mpq::DType::kF32, 10, 10, f, mpq::ScaleRule::kHw, sc.data(), zp.data());
  }));
  CHECK(throws_invalid([] { mpq::set_isa("avx9000"); }));
}

}  // namespace

int main() {
  test_every_16bit_pattern_all_isas();
  test_random_fp32_all_isas();
  test_spec_values();
  test_bad_input_throws();
  test_extremes();
  test_partial_alias_throws();
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  else std::printf("test_formats: all checks passed (isas:%zu)\n", mpq::available_isas().size());
  return failures ? 1 : 0;
}
