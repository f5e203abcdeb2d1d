// Error-free summation (Shewchuk's partials, as in Python's math.fsum): feasibility checks must be exact,
// because MIP-style tolerances are what make HiGHS and Gurobi return budget-violating "optimal" answers.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "mckp/internal.hpp"

namespace mpq::detail {

void ExactSum::add(double x) {
  std::size_t i = 0;
  for (double y : partials_) {
    if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
    const double hi = x + y;
    const double lo = y - (hi - x);
    if (lo != 0.0) partials_[i++] = lo;
    x = hi;
  }
  partials_.resize(i);
  partials_.push_back(x);
}

double ExactSum::value() const {
  // Same final rounding as CPython's fsum: add from the top until the sum becomes inexact, then fix halfway cases.
  std::size_t n = partials_.size();
  if (n == 0) return 0.0;
  double hi = partials_[--n], lo = 0.0;
  while (n > 0) {
    const double x = hi, y = partials_[--n];
    hi = x + y;
    const double yr = hi - x;
    lo = y - yr;
    if (lo != 0.0) break;
  }
  if (n > 0 && ((lo < 0 && partials_[n - 1] < 0) || (lo > 0 && partials_[n - 1] > 0))) {
    const double y = lo * 2;
    const double x = hi + y;
    if (y == x - hi) hi = x;
  }
  return hi;
}

int ExactSum::compare(double c) const {
  if (std::isinf(c)) return c > 0 ? -1 : 1;  // the sum of finite values is finite
  ExactSum d = *this;
  d.add(-c);
  for (std::size_t i = d.partials_.size(); i-- > 0;)  // largest non-zero partial carries the sign
    if (d.partials_[i] != 0.0) return d.partials_[i] > 0 ? 1 : -1;
  return 0;
}

double ExactSum::round_up() const {
  double v = value();
  if (compare(v) > 0) v = std::nextafter(v, INFINITY);
  return v;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string fmt(double x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  for (int prec = 6; prec < 17; ++prec) {  // shortest representation that reads back to x
    char b2[40];
    std::snprintf(b2, sizeof b2, "%.*g", prec, x);
    if (std::strtod(b2, nullptr) == x) return b2;
  }
  return buf;
}

}  // namespace mpq::detail
