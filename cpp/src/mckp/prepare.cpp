// Input checks and the budget-independent preprocessing: Pareto lists, concave hulls, sorted hull increments.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdexcept>

#include "mckp/internal.hpp"

namespace mpq::detail {

namespace {
[[noreturn]] void bad(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string(fn) + ": " + what);
}
}  // namespace

namespace {
void validate_slow(const char* fn, const Span<const int64_t>& offsets, const Span<const double>& gains,
                   const Span<const double>& costs) {
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
}  // namespace

void validate(const char* fn, const Span<const int64_t>& offsets, const Span<const double>& gains,
              const Span<const double>& costs) {
  // One branch-free pass settles the common case: a finite sum of |gains| + costs means every value is finite
  // (an inf or nan would make it so), and the smallest cost shows the sign. Anything else, and the group
  // structure, goes through the checks that name the culprit.
  bool fast = gains.size == costs.size && offsets.size >= 1 && offsets[0] == 0 &&
              offsets[offsets.size - 1] == static_cast<int64_t>(gains.size) &&
              offsets.size - 1 <= static_cast<std::size_t>(std::numeric_limits<int32_t>::max());
  if (fast) {
    // four independent sums: a single running sum is latency-bound (the order is irrelevant to a finiteness test)
    double t0 = 0, t1 = 0, t2 = 0, t3 = 0, minc = 0;
    const std::size_t n4 = gains.size / 4 * 4;
    for (std::size_t i = 0; i < n4; i += 4) {
      t0 += std::fabs(gains[i]) + costs[i];
      t1 += std::fabs(gains[i + 1]) + costs[i + 1];
      t2 += std::fabs(gains[i + 2]) + costs[i + 2];
      t3 += std::fabs(gains[i + 3]) + costs[i + 3];
      minc = std::min(minc, std::min(std::min(costs[i], costs[i + 1]), std::min(costs[i + 2], costs[i + 3])));
    }
    for (std::size_t i = n4; i < gains.size; ++i) {
      t0 += std::fabs(gains[i]) + costs[i];
      minc = std::min(minc, costs[i]);
    }
    fast = std::isfinite(t0 + t1 + t2 + t3) && minc >= 0;
    for (std::size_t g = 0; fast && g + 1 < offsets.size; ++g)
      fast = offsets[g + 1] > offsets[g] && offsets[g + 1] - offsets[g] <= std::numeric_limits<int32_t>::max();
  }
  if (!fast) validate_slow(fn, offsets, gains, costs);
}

void check_options(const char* fn, const MckpOptions& o) {
  if (!(o.time_limit >= 0) || std::isinf(o.time_limit))
    bad(fn, "time_limit must be a finite number of seconds >= 0 (0 = none), got " + fmt(o.time_limit));
  if (o.max_states < 1000) bad(fn, "max_states must be >= 1000, got " + std::to_string(o.max_states));
  if (o.beam_width < 1) bad(fn, "beam_width must be >= 1, got " + std::to_string(o.beam_width));
  if (!(o.rel_gap >= 0 && o.rel_gap < 1)) bad(fn, "rel_gap must be in [0, 1), got " + fmt(o.rel_gap));
  if (o.max_nodes < 1) bad(fn, "max_nodes must be >= 1, got " + std::to_string(o.max_nodes));
}

void sort_by_efficiency(Inc* incs, std::size_t n) {
  // Efficiency descending, ties in the current order, which callers build as (group, k) ascending.
  // A stable LSD radix sort on order-preserving 64-bit keys: the std::sort it replaces was a third of a solve.
  if (n < 512) {
    std::stable_sort(incs, incs + n, [](const Inc& x, const Inc& y) { return x.e > y.e; });
    return;
  }
  Buf<uint64_t> key(n), key2(n);
  Buf<uint32_t> idx(n), idx2(n);
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
  Buf<Inc> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = incs[idx[i]];
  std::copy(out.begin(), out.end(), incs);
}

double gain_unit(const Span<const double>& values, double floor) {
  // A finite double is M * 2^x with an integer M (x = E - 1075, or -1074 for subnormals); its trailing zero
  // bits raise x. The smallest such exponent over all values is the unit.
  int lowest = std::numeric_limits<int>::max();
  const int stop = floor > 0 && std::isfinite(floor) ? std::ilogb(floor) : std::numeric_limits<int>::min();
  // Integer values first (integer instances are common, and the bit scan below reads every one of them): for an
  // integer the exponent is its count of trailing zero bits, and the fewest over all values is that of their
  // bitwise OR. An |x| below 2^52 is an integer exactly when adding and subtracting 2^52 gives it back, and then
  // the low 52 bits of x + 2^52 are |x| itself: add, subtract, compare and OR, no branch per value. Blocks of
  // 1024 give up early on real values, which then take the bit scan.
  uint64_t bad = 0, any = 0;
  std::size_t i = 0;
#if defined(__SSE2__)
  // GCC does not vectorise the scalar loop below (the bit casts), so two lanes by hand: SSE2 is x86-64's base
  const __m128d big = _mm_set1_pd(0x1p52), sign = _mm_set1_pd(-0.0);
  for (std::size_t i0 = 0; i0 + 2 <= values.size && !bad; i0 = i) {
    const std::size_t i1 = std::min(values.size & ~std::size_t{1}, i0 + 1024);
    __m128d vbad = _mm_setzero_pd(), vany = _mm_setzero_pd();
    for (i = i0; i < i1; i += 2) {
      const __m128d a = _mm_andnot_pd(sign, _mm_loadu_pd(values.data + i));
      const __m128d t = _mm_add_pd(a, big);
      vbad = _mm_or_pd(vbad, _mm_or_pd(_mm_cmpneq_pd(_mm_sub_pd(t, big), a), _mm_cmpnlt_pd(a, big)));
      vany = _mm_or_pd(vany, t);
    }
    alignas(16) uint64_t lanes[4];
    _mm_store_pd(reinterpret_cast<double*>(lanes), vbad);
    _mm_store_pd(reinterpret_cast<double*>(lanes + 2), vany);
    bad |= lanes[0] | lanes[1];
    any |= lanes[2] | lanes[3];
  }
#endif
  for (; i < values.size && !bad; ++i) {
    const double a = std::fabs(values[i]);
    const double t = a + 0x1p52;
    uint64_t bits;
    std::memcpy(&bits, &t, sizeof bits);
    bad |= static_cast<uint64_t>(!(a < 0x1p52) || t - 0x1p52 != a);
    any |= bits;
  }
  any &= (uint64_t{1} << 52) - 1;
  if (!bad) {
    if (any == 0) return 0.0;
#if defined(__GNUC__) || defined(__clang__)
    lowest = __builtin_ctzll(any);
#else
    for (lowest = 0; ((any >> lowest) & 1) == 0; ++lowest) {}
#endif
    return lowest <= stop ? 0.0 : std::ldexp(1.0, lowest);
  }
  for (std::size_t i = 0; i < values.size; ++i) {
    uint64_t b;
    std::memcpy(&b, &values[i], sizeof b);
    const int E = static_cast<int>((b >> 52) & 0x7FF);
    uint64_t M = b & ((uint64_t{1} << 52) - 1);
    if (E != 0) M |= uint64_t{1} << 52;
    if (M == 0) continue;
    int x = E == 0 ? -1074 : E - 1075;
#if defined(__GNUC__) || defined(__clang__)
    x += __builtin_ctzll(M);
#else
    for (; (M & 1) == 0; M >>= 1) ++x;
#endif
    lowest = std::min(lowest, x);
    if (lowest <= stop) return 0.0;  // 2^lowest <= floor: real-valued gains, no unit worth pruning with
  }
  return lowest == std::numeric_limits<int>::max() ? 0.0 : std::ldexp(1.0, std::min(lowest, 1000));
}

bool split_in_window(const Prepared& pr, std::size_t k) {
  // the split and the step-backs of lp_prefix read sorted positions; k == size means every stored increment
  // fits, which is everything unless a bracketed preprocessing left some out below
  return (k >= pr.sorted_lo || pr.sorted_lo == 0) && (k < pr.sorted_hi || (k == pr.incs.size() && pr.n_below == 0));
}

namespace {

// One group's Pareto list, written to loc (cost and gain strictly increasing), and the positions in loc of its
// upper concave hull's vertices, written to hl. Returns (Pareto items, hull vertices).
// Inlined in both callers: it runs once per group, inside the pass over every item.
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
inline std::pair<std::size_t, std::size_t> pareto_hull(const double* G, const double* W, int64_t m, Item* loc,
                                                       int32_t* hl) {
  // cost ascending, gain descending, index ascending: the deterministic tie-break everywhere. Groups often come
  // in that order already (menus listed from the cheapest choice up): those skip the sort, filtered in the same
  // pass that checks the order.
  bool in_order = true;
  loc[0] = Item{W[0], G[0], 0};
  std::size_t nl = 1;
  for (int64_t i = 1; i < m; ++i) {  // keep an item only if it gains strictly more than everything cheaper
    if (W[i] < W[i - 1]) { in_order = false; break; }
    const Item it{W[i], G[i], static_cast<int32_t>(i)};
    if (it.w == loc[nl - 1].w) { if (it.p > loc[nl - 1].p) loc[nl - 1] = it; }  // equal cost: best gain
    else if (it.p > loc[nl - 1].p) loc[nl++] = it;
  }
  if (!in_order) {
    nl = 0;
    // insertion sort, stable (items arrive in index order), on (cost ascending, gain descending): groups are
    // small, and this beats std::sort with a three-key comparator by half
    for (int64_t i = 0; i < m; ++i) {
      const Item it{W[i], G[i], static_cast<int32_t>(i)};
      std::size_t j = nl++;
      for (; j > 0 && (it.w < loc[j - 1].w || (it.w == loc[j - 1].w && it.p > loc[j - 1].p)); --j) loc[j] = loc[j - 1];
      loc[j] = it;
    }
    std::size_t kept = 0;
    for (std::size_t t = 0; t < nl; ++t)
      if (kept == 0 || loc[t].p > loc[kept - 1].p) loc[kept++] = loc[t];
    nl = kept;
  }
  // upper concave hull by monotone chain; cross products, no divided slopes
  std::size_t nh = 0;
  for (std::size_t k = 0; k < nl; ++k) {
    const Item& c = loc[k];
    while (nh >= 2) {
      const Item& a = loc[hl[nh - 2]];
      const Item& b = loc[hl[nh - 1]];
      // pop b if slope(a,b) <= slope(b,c)
      if ((b.p - a.p) * (c.w - b.w) <= (c.p - b.p) * (b.w - a.w)) --nh;
      else break;
    }
    hl[nh++] = static_cast<int32_t>(k);
  }
  return {nl, nh};
}

// The efficiency of hull step k (from vertex k-1 to k) given the previous step's: rounding must not reorder a
// group's own increments, so e stays non-increasing along the hull.
inline double step_efficiency(double dp, double dw, std::size_t k, double prev_e) {
  const double e = dp / dw;
  return k > 1 && e > prev_e ? prev_e : e;
}

// Where a single budget's LP split lies, estimated from a random sample of groups: increments more efficient
// than `top` are taken by the LP, those less efficient than `bot` are not, with a margin of kMargin of the
// sample's cost steps on either side of the estimate (its own error is about 1.3 sqrt(f (1 - f) / kSample) for
// heavy-tailed steps). A wrong guess costs time only: prepare then falls back to ordering every increment.
struct Bracket {
  double top = std::numeric_limits<double>::infinity();    // e > top: above the bracket (none when +inf)
  double bot = -std::numeric_limits<double>::infinity();   // e < bot: below the bracket (none when -inf)
};

Bracket estimate_bracket(const Span<const int64_t>& offsets, const Span<const double>& gains,
                         const Span<const double>& costs, int64_t n, double budget, Item* loc, int32_t* hl) {
  constexpr int kSample = 1024;
  constexpr double kMargin = 0.08;
  std::mt19937_64 rng(0x6d7071);  // fixed: the same instance always gets the same bracket
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  std::vector<std::pair<double, double>> steps;  // (e, dw)
  double w0 = 0;  // the sample's cheapest items
  for (int s = 0; s < kSample; ++s) {
    const int64_t g = pick(rng), a = offsets[g];
    const auto [nl, nh] = pareto_hull(gains.data + a, costs.data + a, offsets[g + 1] - a, loc, hl);
    w0 += loc[0].w;
    double prev_e = 0;
    for (std::size_t k = 1; k < nh; ++k) {
      const Item& u = loc[hl[k - 1]];
      const Item& v = loc[hl[k]];
      prev_e = step_efficiency(v.p - u.p, v.w - u.w, k, prev_e);
      steps.push_back({prev_e, v.w - u.w});
    }
  }
  std::sort(steps.begin(), steps.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  double total = 0;
  for (const auto& st : steps) total += st.second;
  // the sample's expected share of the LP's whole increments: its part of the budget above the cheapest items
  const double want = budget * kSample / static_cast<double>(n) - w0;
  const double from = want - kMargin * total, to = want + kMargin * total;
  Bracket b;
  double run = 0;
  for (const auto& st : steps) {
    if (run + st.second > from && b.top == std::numeric_limits<double>::infinity() && from > 0) b.top = st.first;
    run += st.second;
    if (run >= to) { b.bot = st.first; break; }
  }
  return b;
}

}  // namespace

Prepared prepare(const Span<const int64_t>& offsets, const Span<const double>& gains, const Span<const double>& costs,
                 const double* budget, int64_t bracket_groups) {
  Prepared pr;
  pr.n = static_cast<int64_t>(offsets.size) - 1;
  pr.offsets = offsets;
  pr.gains = gains;
  pr.costs = costs;
  pr.poff.resize(pr.n + 1);
  pr.hoff.resize(pr.n + 1);
  pr.poff[0] = pr.hoff[0] = 0;
  // Written through raw pointers into arrays sized for the worst case, trimmed at the end: this loop touches
  // every item, and vector growth checks were a large part of its cost. Each group's Pareto list and hull are
  // built in a small local buffer; only item indices are stored (the values stay in the caller's arrays), which
  // keeps what a 10^6-group solve writes to a few bytes per item.
  pr.pareto.resize(gains.size);
  pr.hull.resize(gains.size);
  int32_t* P = pr.pareto.data();
  int32_t* H = pr.hull.data();
  std::size_t np = 0, nh = 0, ni = 0;
  int64_t widest = 0;
  for (int64_t g = 0; g < pr.n; ++g) widest = std::max(widest, offsets[g + 1] - offsets[g]);
  std::vector<Item> locbuf(static_cast<std::size_t>(widest));
  std::vector<int32_t> hl(static_cast<std::size_t>(widest));  // positions in loc of the group's hull vertices
  Item* loc = locbuf.data();  // the group's Pareto items
  // A single large solve stores only the increments near its LP split: the LP takes every one above the bracket
  // whole (their steps are summed per group, their count kept), and none below it. Storing, partitioning and
  // summing all increments had been most of such a solve.
  const bool bracketed = budget && bracket_groups > 0 && pr.n >= bracket_groups;
  Bracket br;
  if (bracketed) {
    br = estimate_bracket(offsets, gains, costs, pr.n, *budget, loc, hl.data());
    pr.base_pos.resize(pr.n);
    pr.end_pos.resize(pr.n);
    pr.at_bracket.resize(pr.n);
  }
  pr.incs.resize(gains.size);
  Inc* I = pr.incs.data();
  double sum_abs = 0, w_above = 0, p_above = 0;
  std::size_t n_above = 0, n_below = 0;
  for (int64_t g = 0; g < pr.n; ++g) {
    const int64_t a = offsets[g];
    const auto [nl, nhl] = pareto_hull(gains.data + a, costs.data + a, offsets[g + 1] - a, loc, hl.data());
    for (std::size_t t = 0; t < nl; ++t) P[np++] = loc[t].idx;
    pr.poff[g + 1] = static_cast<int64_t>(np);
    for (std::size_t t = 0; t < nhl; ++t) H[nh++] = loc[hl[t]].idx;
    pr.hoff[g + 1] = static_cast<int64_t>(nh);
    const Item& lo = loc[0];
    const Item& hi = loc[nl - 1];
    pr.W0 += lo.w;
    pr.P0 += lo.p;
    pr.Pmax += hi.p;
    pr.Wmax += std::max(std::fabs(hi.w), std::fabs(lo.w));
    sum_abs += std::fabs(hi.p) + std::fabs(lo.p);
    double prev_e = 0;
    std::size_t above = 0, stored_to = 0;  // this group's increments above the bracket (a prefix of its hull), and
                                           // the last stored one
    for (std::size_t k = 1; k < nhl; ++k) {
      const Item& u = loc[hl[k - 1]];
      const Item& v = loc[hl[k]];
      const double dp = v.p - u.p, dw = v.w - u.w;
      const double e = prev_e = step_efficiency(dp, dw, k, prev_e);
      if (e > br.top) { above = k; continue; }
      if (e < br.bot) { n_below += nhl - k; break; }  // the rest of the hull is less efficient still
      I[ni++] = {dp, dw, e, static_cast<int32_t>(g), static_cast<int32_t>(k)};
      stored_to = k;
    }
    if (bracketed) {
      pr.base_pos[g] = static_cast<int32_t>(above);
      pr.end_pos[g] = static_cast<int32_t>(std::max(above, stored_to));
      const Item& b = loc[hl[above]];
      AtBracket& rec = pr.at_bracket[g];
      rec.w = b.w;
      rec.p = b.p;
      rec.idx = b.idx;
      if (above > 0) { rec.in_dp = b.p - loc[hl[above - 1]].p; rec.in_dw = b.w - loc[hl[above - 1]].w; }
      else { rec.in_dp = std::numeric_limits<double>::infinity(); rec.in_dw = 0; }
      if (above + 1 < nhl) { rec.out_dp = loc[hl[above + 1]].p - b.p; rec.out_dw = loc[hl[above + 1]].w - b.w; }
      else { rec.out_dp = -std::numeric_limits<double>::infinity(); rec.out_dw = 0; }
      if (above) {  // the steps summed telescoped: one rounding per group
        n_above += above;
        w_above += b.w - lo.w;
        p_above += b.p - lo.p;
      }
    }
  }
  pr.pareto.resize(np);
  pr.hull.resize(nh);
  pr.incs.resize(ni);
  pr.scale = sum_abs > 0 ? sum_abs : 1.0;
  pr.unit = gain_unit(gains, 1e-12 * pr.scale);
  pr.n_above = n_above;
  pr.n_below = n_below;
  // Within a group efficiencies do not increase, so this order keeps every group's hull order.
  if (budget) {
    const double cap_left = std::max(0.0, *budget - pr.W0) - w_above;  // for the stored increments
    if (bracketed && cap_left < 0) return prepare(offsets, gains, costs, budget, 0);  // the split lies above
    order_for_budget(pr, pr.W0 + std::max(0.0, cap_left));
    if (bracketed && pr.sorted_lo == pr.incs.size() && n_below > 0)  // every stored one fits: the split lies below
      return prepare(offsets, gains, costs, budget, 0);
  } else {
    sort_by_efficiency(pr.incs);
    pr.sorted_lo = 0;
    pr.sorted_hi = pr.incs.size();
  }
  pr.prefW.resize(pr.incs.size() + 1);
  pr.prefP.resize(pr.incs.size() + 1);
  pr.prefW[0] = w_above;
  pr.prefP[0] = p_above;
  for (std::size_t t = 0; t < pr.incs.size(); ++t) {
    pr.prefW[t + 1] = pr.prefW[t] + pr.incs[t].dw;
    pr.prefP[t + 1] = pr.prefP[t] + pr.incs[t].dp;
  }
  return pr;
}

}  // namespace mpq::detail
