// Internal: the one ISA dispatch of the library. Each kernel family is a table of function pointers: FormatKernels
// and SensitivityKernels (kernels.hpp), Int8Kernels (int8_kernels.hpp). Each ISA defines its own table of a family
// in namespace mpq::detail::<isa>: the scalar reference in kernels_ref.cpp, sensitivity_ref.cpp and int8_ref.cpp,
// the AVX2 variant in the *_avx2.cpp files and the AVX-512 one in the *_avx512.cpp files, the only ones compiled
// with ISA flags. A family without an AVX-512 table runs its AVX2 one on AVX-512 machines. A driver (formats.cpp,
// sensitivity.cpp, int8.cpp) picks the table of mpq::active_isa() with select(), and nothing else looks at the ISA:
//
//   const Int8Kernels& kernels = select(scalar::kInt8, MPQ_AVX2_KERNELS(avx2::kInt8),
//                                       MPQ_AVX512_KERNELS(avx512::kInt8));
//   kernels.int8_linear(...);
//
// CMake defines MPQ_HAVE_AVX2 and MPQ_HAVE_AVX512 where it compiles those files (x86-64); only this header reads
// them. MPQ_AVX2_KERNELS(table) is &table there and nullptr elsewhere (MPQ_AVX512_KERNELS alike), so no other
// target refers to an ISA symbol. Include this header from drivers only, never from a file compiled with ISA flags.
#pragma once
#include "mpq/isa.hpp"

#if defined(MPQ_HAVE_AVX2)
#define MPQ_AVX2_KERNELS(table) (&(table))
#else
#define MPQ_AVX2_KERNELS(table) nullptr
#endif

#if defined(MPQ_HAVE_AVX512)
#define MPQ_AVX512_KERNELS(table) (&(table))
#else
#define MPQ_AVX512_KERNELS(table) nullptr
#endif

namespace mpq::detail {

/// The highest level this build has kernels for; detect_isa() never reports more.
#if defined(MPQ_HAVE_AVX512)
inline constexpr Isa kBuiltIsa = Isa::kAvx512;
#elif defined(MPQ_HAVE_AVX2)
inline constexpr Isa kBuiltIsa = Isa::kAvx2;
#else
inline constexpr Isa kBuiltIsa = Isa::kScalar;
#endif

template <class T>
struct SameType {
  using type = T;
};

/// The table the active level runs: `*avx512` from Isa::kAvx512 up, `*avx2` from Isa::kAvx2 up (each when this
/// build and family have it), else `scalar`. Drivers call it once per public call, so set_isa() never switches
/// kernels within a call.
template <class Kernels>
const Kernels& select(const Kernels& scalar, const typename SameType<Kernels>::type* avx2,
                      const typename SameType<Kernels>::type* avx512 = nullptr) noexcept {
  const Isa level = active_isa();
  if (avx512 != nullptr && level >= Isa::kAvx512) return *avx512;
  if (avx2 != nullptr && level >= Isa::kAvx2) return *avx2;
  return scalar;
}

}  // namespace mpq::detail
