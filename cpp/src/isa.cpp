// mpq/isa.hpp: detection and selection of the level; isa_dispatch.hpp picks the kernels for it.
#include "mpq/isa.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "isa_dispatch.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace mpq {
namespace {

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  throw std::invalid_argument("isa: unknown level '" + name + "' (known: scalar, avx2, avx512)");
}

Isa initial_isa() noexcept {
  Isa best = detect_isa();
  if (const char* env = std::getenv("MPQ_ISA")) {
    try {
      Isa wanted = isa_from_name(env);
      if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
    } catch (const std::invalid_argument&) {
      // an unknown MPQ_ISA keeps the detected level; set_isa() reports names properly
    }
  }
  return best;
}

std::atomic<int>& active() {
  static std::atomic<int> level{static_cast<int>(initial_isa())};
  return level;
}

}  // namespace

const char* to_string(Isa isa) noexcept {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "scalar";
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace {
// F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know the name "f16c"
bool has_f16c() noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
}  // namespace
#endif

Isa detect_isa() noexcept {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (detail::kBuiltIsa >= Isa::kAvx2) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())) return Isa::kScalar;
    // AVX-512 means F, BW, DQ, VL and VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and later): the int8
    // kernel needs vpdpbusd. The checks include the OS's saving of the zmm state (libgcc reads XCR0).
    if constexpr (detail::kBuiltIsa >= Isa::kAvx512) {
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512vnni"))
        return Isa::kAvx512;
    }
    return Isa::kAvx2;
  }
#endif
  return Isa::kScalar;
}

Isa active_isa() noexcept { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= static_cast<int>(detect_isa()); ++i) names.emplace_back(to_string(static_cast<Isa>(i)));
  return names;
}

void set_isa(const std::string& name) {
  Isa wanted = isa_from_name(name);
  if (static_cast<int>(wanted) > static_cast<int>(detect_isa()))
    throw std::invalid_argument(std::string("isa: '") + name + "' is not supported on this CPU/build (best: " +
                                to_string(detect_isa()) + ")");
  active().store(static_cast<int>(wanted), std::memory_order_relaxed);
}

}  // namespace mpq
