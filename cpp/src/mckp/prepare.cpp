// Input checks and the budget-independent preprocessing: Pareto lists, concave hulls, sorted hull increments.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "mckp/internal.hpp"

namespace mpq::detail {

namespace {
[[noreturn]] void bad(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string(fn) + ": " + what);
}
}  // namespace

void validate(const char* fn, const Span<const int64_t>& offsets, const Span<const double>& gains, const Span<const double>& costs) {
  if (gains.size != costs.size)
    bad(fn, "gains has " + std::to_string(gains.size) + " values but costs has " + std::to_string(costs.size));
  if (offsets.size < 1) bad(fn, "offsets must hold n_groups + 1 values (at least [0])");
  if (offsets.size - 1 > static_cast<std::size_t>(std::numeric_limits<int32_t>::max()))
    bad(fn, "too many groups");
  if (offsets[0] != 0) bad(fn, "offsets[0] must be 0, got " + std::to_string(offsets[0]));
  const int64_t n = static_cast<int64_t>(offsets.size) - 1;
  for (int64_t g = 0; g < n; ++g) {
    const int64_t a = offsets[g], b = offsets[g + 1];
    if (b <= a) bad(fn, "group " + std::to_string(g) + " is empty (offsets " + std::to_string(a) + ", " +
                            std::to_string(b) + ")");
    if (b > static_cast<int64_t>(gains.size))
      bad(fn, "group " + std::to_string(g) + " ends at item " + std::to_string(b) + " but only " +
                  std::to_string(gains.size) + " items were given");
    if (b - a > std::numeric_limits<int32_t>::max()) bad(fn, "group " + std::to_string(g) + " is too large");
    for (int64_t i = a; i < b; ++i) {
      if (std::isfinite(gains[i]) && std::isfinite(costs[i]) && costs[i] >= 0) continue;
      const std::string where = " of item " + std::to_string(i - a) + " in group " + std::to_string(g);
      if (!std::isfinite(gains[i])) bad(fn, "gain" + where + " is " + fmt(gains[i]) + " (must be finite)");
      if (!std::isfinite(costs[i])) bad(fn, "cost" + where + " is " + fmt(costs[i]) + " (must be finite)");
      bad(fn, "cost" + where + " is negative (" + fmt(costs[i]) + ")");
    }
  }
  if (offsets[n] != static_cast<int64_t>(gains.size))
    bad(fn, "offsets end at " + std::to_string(offsets[n]) + " but " + std::to_string(gains.size) +
                " items were given");
  double total = 0;  // sums of magnitudes must stay finite, or every later sum could overflow to inf/nan
  for (std::size_t i = 0; i < gains.size; ++i) total += std::fabs(gains[i]) + costs[i];
  if (!std::isfinite(total))
    bad(fn, "values too large: the sum of all |gains| and costs overflows a double");
}

void check_options(const char* fn, const MckpOptions& o) {
  if (!(o.time_limit >= 0) || std::isinf(o.time_limit))
    bad(fn, "time_limit must be a finite number of seconds >= 0 (0 = none), got " + fmt(o.time_limit));
  if (o.max_states < 1000) bad(fn, "max_states must be >= 1000, got " + std::to_string(o.max_states));
  if (o.beam_width < 1) bad(fn, "beam_width must be >= 1, got " + std::to_string(o.beam_width));
  if (!(o.rel_gap >= 0 && o.rel_gap < 1)) bad(fn, "rel_gap must be in [0, 1), got " + fmt(o.rel_gap));
  if (o.max_nodes < 1) bad(fn, "max_nodes must be >= 1, got " + std::to_string(o.max_nodes));
}

void sort_by_efficiency(std::vector<Inc>& incs) {
  // Efficiency descending, ties in the current order, which callers build as (group, k) ascending.
  // A stable LSD radix sort on order-preserving 64-bit keys: the std::sort it replaces was a third of a solve.
  const std::size_t n = incs.size();
  if (n < 512) {
    std::stable_sort(incs.begin(), incs.end(), [](const Inc& x, const Inc& y) { return x.e > y.e; });
    return;
  }
  std::vector<uint64_t> key(n), key2(n);
  std::vector<uint32_t> idx(n), idx2(n);
  for (std::size_t i = 0; i < n; ++i) {
    uint64_t b;
    std::memcpy(&b, &incs[i].e, sizeof b);
    b = (b >> 63) ? ~b : (b | (uint64_t{1} << 63));  // ascending in e
    key[i] = ~b;                                       // descending in e
    idx[i] = static_cast<uint32_t>(i);
  }
  std::vector<uint32_t> count(1 << 11);  // 11-bit digits: the counters stay in L1
  for (int shift = 0; shift < 64; shift += 11) {
    std::fill(count.begin(), count.end(), 0);
    for (std::size_t i = 0; i < n; ++i) ++count[(key[i] >> shift) & 0x7FF];
    if (count[(key[0] >> shift) & 0x7FF] == n) continue;  // this digit is the same everywhere
    uint32_t sum = 0;
    for (auto& c : count) { const uint32_t t = c; c = sum; sum += t; }
    for (std::size_t i = 0; i < n; ++i) {
      const uint32_t d = count[(key[i] >> shift) & 0x7FF]++;
      key2[d] = key[i];
      idx2[d] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
  std::vector<Inc> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = incs[idx[i]];
  incs.swap(out);
}

Prepared prepare(const Span<const int64_t>& offsets, const Span<const double>& gains, const Span<const double>& costs) {
  Prepared pr;
  pr.n = static_cast<int64_t>(offsets.size) - 1;
  pr.offsets = offsets;
  pr.gains = gains;
  pr.costs = costs;
  pr.poff.assign(pr.n + 1, 0);
  pr.hoff.assign(pr.n + 1, 0);
  pr.pareto.reserve(gains.size);
  pr.hull.reserve(gains.size);
  pr.incs.reserve(gains.size);
  std::vector<Item> tmp;
  double sum_abs = 0;
  for (int64_t g = 0; g < pr.n; ++g) {
    const int64_t a = offsets[g], b = offsets[g + 1];
    tmp.clear();
    for (int64_t i = a; i < b; ++i) tmp.push_back({costs[i], gains[i], static_cast<int32_t>(i - a)});
    // cost ascending, gain descending, index ascending: the deterministic tie-break everywhere
    std::sort(tmp.begin(), tmp.end(), [](const Item& x, const Item& y) {
      if (x.w != y.w) return x.w < y.w;
      if (x.p != y.p) return x.p > y.p;
      return x.idx < y.idx;
    });
    const std::size_t p0 = pr.pareto.size();
    for (const Item& it : tmp)  // keep an item only if it gains strictly more than everything cheaper
      if (pr.pareto.size() == p0 || it.p > pr.pareto.back().p) pr.pareto.push_back(it);
    pr.poff[g + 1] = static_cast<int64_t>(pr.pareto.size());
    // upper concave hull by monotone chain; cross products, no divided slopes
    const std::size_t h0 = pr.hull.size();
    for (std::size_t k = p0; k < pr.pareto.size(); ++k) {
      const Item& c = pr.pareto[k];
      while (pr.hull.size() >= h0 + 2) {
        const Item& a2 = pr.pareto[p0 + pr.hull[pr.hull.size() - 2]];
        const Item& b2 = pr.pareto[p0 + pr.hull.back()];
        // pop b2 if slope(a2,b2) <= slope(b2,c)
        if ((b2.p - a2.p) * (c.w - b2.w) <= (c.p - b2.p) * (b2.w - a2.w)) pr.hull.pop_back();
        else break;
      }
      pr.hull.push_back(static_cast<int32_t>(k - p0));
    }
    pr.hoff[g + 1] = static_cast<int64_t>(pr.hull.size());
    const Item& lo = pr.pareto[p0];
    const Item& hi = pr.pareto.back();
    pr.W0 += lo.w;
    pr.W0exact.add(lo.w);
    pr.P0 += lo.p;
    pr.Pmax += hi.p;
    pr.Wmax += std::max(std::fabs(hi.w), std::fabs(lo.w));
    sum_abs += std::fabs(hi.p) + std::fabs(lo.p);
    for (int64_t k = pr.hoff[g] + 1; k < pr.hoff[g + 1]; ++k) {
      const Item& u = pr.pareto[p0 + pr.hull[k - 1]];
      const Item& v = pr.pareto[p0 + pr.hull[k]];
      const double dp = v.p - u.p, dw = v.w - u.w;
      double e = dp / dw;
      // rounding must not reorder a group's own increments: keep e non-increasing along the hull
      if (k > pr.hoff[g] + 1 && e > pr.incs.back().e) e = pr.incs.back().e;
      pr.incs.push_back({dp, dw, e, static_cast<int32_t>(g), static_cast<int32_t>(k - pr.hoff[g])});
    }
  }
  pr.scale = sum_abs > 0 ? sum_abs : 1.0;
  // Within a group efficiencies do not increase, so this order keeps every group's hull order.
  sort_by_efficiency(pr.incs);
  pr.prefW.assign(pr.incs.size() + 1, 0);
  pr.prefP.assign(pr.incs.size() + 1, 0);
  for (std::size_t t = 0; t < pr.incs.size(); ++t) {
    pr.prefW[t + 1] = pr.prefW[t] + pr.incs[t].dw;
    pr.prefP[t + 1] = pr.prefP[t] + pr.incs[t].dp;
  }
  return pr;
}

}  // namespace mpq::detail
