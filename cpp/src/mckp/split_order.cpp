// Orders the hull increments for one budget without sorting them all (a single solve's replacement for the full
// efficiency sort): a weighted quickselect finds the LP's split increment, then only a window around it is
// sorted. Everything before the window is more efficient than it, everything after less, so the prefix sums,
// the split and every group's hull order are those of the full sort (docs/cpp-core.md, "The MCKP solver").
#include <algorithm>
#include <cstring>

#include "mckp/internal.hpp"

namespace mpq::detail {
namespace {

struct Key {
  uint64_t key;  // ascending key = descending efficiency
  uint32_t pos;  // position in (group, k) order: the tie-break of the full sort
  double dw;
  bool operator<(const Key& o) const { return key != o.key ? key < o.key : pos < o.pos; }
};

uint64_t descending_key(double e) {
  uint64_t b;
  std::memcpy(&b, &e, sizeof b);
  b = (b >> 63) ? ~b : (b | (uint64_t{1} << 63));  // ascending in e
  return ~b;
}

// The number of leading increments (in sorted order) whose costs fit in cap. On return, keys[0, k) hold exactly
// those increments (any order) and keys[k, n) the others.
std::size_t select_split(std::vector<Key>& keys, double cap) {
  std::size_t a = 0, b = keys.size();
  double before = 0;  // cost of keys[0, a)
  while (b - a > 48) {
    Key* x = keys.data();
    // median of three as the pivot, moved to the end of the range
    const std::size_t mid = a + (b - a) / 2;
    if (x[mid] < x[a]) std::swap(x[mid], x[a]);
    if (x[b - 1] < x[a]) std::swap(x[b - 1], x[a]);
    if (x[mid] < x[b - 1]) std::swap(x[mid], x[b - 1]);
    const Key pivot = x[b - 1];
    std::size_t s = a;
    double left = 0;
    for (std::size_t i = a; i + 1 < b; ++i)
      if (x[i] < pivot) { left += x[i].dw; std::swap(x[i], x[s++]); }
    std::swap(x[s], x[b - 1]);  // the pivot sits at s, the smaller keys before it
    if (before + left > cap) b = s;
    else if (before + left + pivot.dw > cap) return s;
    else { before += left + pivot.dw; a = s + 1; }
  }
  std::sort(keys.begin() + a, keys.begin() + b);
  for (std::size_t i = a; i < b; ++i) {
    if (before + keys[i].dw > cap) return i;
    before += keys[i].dw;
  }
  return b;
}

}  // namespace

void order_for_budget(Prepared& pr, double budget, std::size_t window) {
  const std::size_t n = pr.incs.size();
  std::vector<Key> keys(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = {descending_key(pr.incs[i].e), static_cast<uint32_t>(i), pr.incs[i].dw};
  const double cap = std::max(0.0, budget - pr.W0);
  const std::size_t k = select_split(keys, cap);
  // The window starts at the split: the taken increments stay unordered (only the rare step-back of a rounding
  // that does not fit exactly reads them, and it then sorts everything). After the split, the `window` best
  // increments in order feed the greedy incumbent.
  const std::size_t lo = k, hi = std::min(n, k + window);
  std::nth_element(keys.begin() + k, keys.begin() + hi, keys.end());
  std::sort(keys.begin() + k, keys.begin() + hi);
  std::vector<Inc> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = pr.incs[keys[i].pos];
  pr.incs.swap(out);
  pr.sorted_lo = lo;
  pr.sorted_hi = hi;
}

}  // namespace mpq::detail
