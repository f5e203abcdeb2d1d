// Orders the hull increments for one budget without sorting them all (a single solve's replacement for the full
// efficiency sort): a weighted quickselect finds the LP's split increment, then only a window around it is
// sorted. Everything before the window is more efficient than it, everything after less, so the prefix sums,
// the split and every group's hull order are those of the full sort (docs/cpp-core.md, "The MCKP solver").
#include <algorithm>
#include <vector>

#include "mckp/internal.hpp"

namespace mpq::detail {
namespace {

// The full sort's order: efficiency descending, ties by (group, k) ascending (the order prepare builds them in).
bool before(const Inc& x, const Inc& y) {
  if (x.e != y.e) return x.e > y.e;
  return x.g != y.g ? x.g < y.g : x.k < y.k;
}

// The number of leading increments (in sorted order) whose costs fit in cap. On return, incs[0, k) hold exactly
// those increments (any order) and incs[k, n) the others. Partitions in place: no copy of the increments.
std::size_t select_split(Inc* x, std::size_t n, double cap) {
  std::size_t a = 0, b = n;
  double before_cost = 0;  // cost of x[0, a)
  bool sample = true;
  while (b - a > 48) {
    // On a large range (Floyd and Rivest's idea, weighted): a sorted sample of every s-th increment estimates
    // where the split falls, two sample elements a few places either side of it bracket it, and one three-way
    // partition leaves the split, almost always, in the small middle part. Median of three sweeps the range about
    // three times in all; this about once.
    if (sample && b - a > (std::size_t{1} << 14)) {
      constexpr std::size_t kSample = 1024, kReach = 24;
      const std::size_t stride = (b - a) / kSample;
      std::vector<Inc> smp(kSample);
      double total = 0, sw = 0;
      for (std::size_t i = a; i < b; ++i) total += x[i].dw;
      for (std::size_t t = 0; t < kSample; ++t) smp[t] = x[a + t * stride];
      std::sort(smp.begin(), smp.end(), before);
      for (const Inc& q : smp) sw += q.dw;
      const double want = (cap - before_cost) / total * sw;  // the target's share of the sample's weight
      std::size_t at = 0;
      for (double run = 0; at + 1 < kSample && run + smp[at].dw <= want; ++at) run += smp[at].dw;
      const Inc lo = smp[at >= kReach ? at - kReach : 0], hi = smp[std::min(kSample - 1, at + kReach)];
      // x[a, lt) before lo, x[lt, gt) from lo to hi, x[gt, b) after hi
      std::size_t lt = a, i = a, gt = b;
      double wl = 0, wm = 0;
      while (i < gt) {
        if (before(x[i], lo)) { wl += x[i].dw; std::swap(x[lt++], x[i++]); }
        else if (before(hi, x[i])) std::swap(x[i], x[--gt]);
        else { wm += x[i].dw; ++i; }
      }
      std::size_t na = a, nb = b;
      double nbefore = before_cost;
      if (before_cost + wl > cap) nb = lt;
      else if (before_cost + wl + wm > cap) { na = lt; nb = gt; nbefore += wl; }
      else { na = gt; nbefore += wl + wm; }
      if (nb - na == b - a) { sample = false; continue; }  // no progress (a sample of equal keys): plain steps
      a = na; b = nb; before_cost = nbefore;
      continue;
    }
    // median of three as the pivot, moved to the end of the range
    const std::size_t mid = a + (b - a) / 2;
    if (before(x[mid], x[a])) std::swap(x[mid], x[a]);
    if (before(x[b - 1], x[a])) std::swap(x[b - 1], x[a]);
    if (before(x[mid], x[b - 1])) std::swap(x[mid], x[b - 1]);
    const Inc pivot = x[b - 1];
    std::size_t s = a;
    double left = 0;
    for (std::size_t i = a; i + 1 < b; ++i)
      if (before(x[i], pivot)) { left += x[i].dw; std::swap(x[i], x[s++]); }
    std::swap(x[s], x[b - 1]);  // the pivot sits at s, the increments before it in order before it
    if (before_cost + left > cap) b = s;
    else if (before_cost + left + pivot.dw > cap) return s;
    else { before_cost += left + pivot.dw; a = s + 1; }
  }
  std::sort(x + a, x + b, before);
  for (std::size_t i = a; i < b; ++i) {
    if (before_cost + x[i].dw > cap) return i;
    before_cost += x[i].dw;
  }
  return b;
}

}  // namespace

void order_for_budget(Prepared& pr, double budget, std::size_t window) {
  const std::size_t n = pr.incs.size();
  Inc* x = pr.incs.data();
  const double cap = std::max(0.0, budget - pr.W0);
  const std::size_t k = select_split(x, n, cap);
  // The window starts at the split: the taken increments stay unordered (only the rare step-back of a rounding
  // that does not fit exactly reads them, and it then sorts everything). After the split, the `window` best
  // increments in order feed the greedy incumbent.
  const std::size_t lo = k, hi = std::min(n, k + window);
  std::nth_element(x + k, x + hi, x + n, before);
  std::sort(x + k, x + hi, before);
  pr.sorted_lo = lo;
  pr.sorted_hi = hi;
}

}  // namespace mpq::detail
