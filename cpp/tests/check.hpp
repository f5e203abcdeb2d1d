// The C++ tests' one assertion: CHECK(cond) or CHECK(cond, "printf format", args...) counts a failure in
// `failures`, prints the first 20, and lets the test go on; main returns non-zero when failures > 0.
#pragma once
#include <cstdio>

inline int failures = 0;  // each test program is its own executable

namespace mpq_test {
inline void detail() {}
template <class... A>
void detail(const char* fmt, A... args) {
  std::printf(": ");
  std::printf(fmt, args...);
}
}  // namespace mpq_test

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond) && ++failures <= 20) {                           \
      std::printf("FAIL %s:%d: %s", __FILE__, __LINE__, #cond);  \
      mpq_test::detail(__VA_ARGS__);                             \
      std::printf("\n");                                         \
    }                                                            \
  } while (0)
