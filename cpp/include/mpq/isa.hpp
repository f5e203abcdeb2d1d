// mpq/isa.hpp: which SIMD code path the kernels use. Detected once with cpuid; MPQ_ISA=scalar|avx2|avx512 in the
// environment, or set_isa(), may lower it (never raise it above what the CPU supports).
#pragma once
#include <string>
#include <vector>

namespace mpq {

/// kAvx512: AVX-512 F/BW/DQ/VL with VNNI. Kernel families without an AVX-512 variant run their AVX2 one there.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* to_string(Isa isa) noexcept;
/// The best level this CPU and this build support.
Isa detect_isa() noexcept;
/// The level the kernels use now.
Isa active_isa() noexcept;
/// Every level this CPU supports, lowest first, by name.
std::vector<std::string> available_isas();
/// Selects a level by name. @throws std::invalid_argument if unknown or not supported here.
void set_isa(const std::string& name);

}  // namespace mpq
