// Internal pieces of the MCKP solver shared by the cpp/src/mckp/*.cpp files. Not installed, not public.
// The algorithm, step by step: docs/cpp-core.md, "The MCKP solver".
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "mpq/mckp.hpp"

namespace mpq::detail {

/// Allocator of the per-solve arrays that grow with the instance (10^6 groups: hundreds of MB). Two costs it
/// removes, measured as over half of a 10^6 x 8 solve: zero-filling (resize default-initialises trivial types:
/// every element is written before it is read) and first-touch page faults (blocks of 4 MiB and more are asked
/// for transparent huge pages on Linux: one fault per 2 MiB instead of per 4 KiB).
template <class T>
struct ScratchAlloc {
  using value_type = T;
  static constexpr std::size_t kHuge = std::size_t{4} << 20, kPage = std::size_t{2} << 20;
  ScratchAlloc() = default;
  template <class U>
  ScratchAlloc(const ScratchAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHuge) return static_cast<T*>(::operator new(bytes));
    const std::size_t rounded = (bytes + kPage - 1) / kPage * kPage;
    void* p = std::aligned_alloc(kPage, rounded);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP it is ignored
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n * sizeof(T) < kHuge) ::operator delete(p);
    else std::free(p);
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    if constexpr (sizeof...(A) == 0 && std::is_trivially_default_constructible_v<U>) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const ScratchAlloc<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const ScratchAlloc<U>&) const noexcept { return false; }
};
/// A vector whose resize leaves new trivial elements uninitialised (ScratchAlloc).
template <class T>
using Buf = std::vector<T, ScratchAlloc<T>>;

/// Error-free running sum (Shewchuk/Python fsum partials): exact comparisons and a correctly rounded value.
class ExactSum {
 public:
  void add(double x);
  double value() const;              ///< the exact sum rounded to nearest double
  int compare(double c) const;       ///< sign of (exact sum - c): -1, 0, +1
  double round_up() const;           ///< smallest double >= the exact sum
 private:
  std::vector<double> partials_;     // non-overlapping, increasing magnitude
};

struct Item {
  double w, p;   // cost, gain
  int32_t idx;   // index within the original group
};

/// One hull increment: moving group g from hull vertex k-1 to k.
struct Inc {
  double dp, dw, e;  // gain step, cost step (> 0), efficiency dp/dw
  int32_t g, k;
};

/// Fenwick tree over hull increments in efficiency order. Zeroing a group's increments (add with negated
/// values) leaves the others; one descent then gives the LP of the remaining groups at any capacity in O(log M).
class Fenwick {
 public:
  template <class Incs>
  void build(const Incs& incs) {
    n_ = static_cast<int>(incs.size());
    tw_.assign(n_ + 1, 0);
    tp_.assign(n_ + 1, 0);
    for (int i = 1; i <= n_; ++i) {
      tw_[i] += incs[i - 1].dw;
      tp_[i] += incs[i - 1].dp;
      const int j = i + (i & -i);
      if (j <= n_) { tw_[j] += tw_[i]; tp_[j] += tp_[i]; }
    }
    top_ = 1;
    while (top_ * 2 <= n_) top_ *= 2;
  }
  void add(int i, double dw, double dp) {
    for (++i; i <= n_; i += i & -i) { tw_[i] += dw; tp_[i] += dp; }
  }
  /// Number of leading increments whose costs fit in cap, with their summed cost and gain.
  int descend(double cap, double& sw, double& sp) const {
    int pos = 0;
    sw = sp = 0;
    if (n_ == 0) return 0;
    for (int step = top_; step > 0; step >>= 1) {
      const int nx = pos + step;
      if (nx <= n_ && sw + tw_[nx] <= cap) { pos = nx; sw += tw_[nx]; sp += tp_[nx]; }
    }
    return pos;
  }
 private:
  int n_ = 0, top_ = 1;
  std::vector<double> tw_, tp_;
};

/// A bracketed preprocessing's record of one group, written while its hull is at hand: the vertex the increments
/// above reach, which is the group's best at the LP multiplier when it has no stored increment, and the steps into
/// and out of it (none: dp = +inf / -inf, dw = 0). The LP's reduced profits are then read sequentially, not
/// gathered from the caller's arrays.
struct AtBracket {
  double w, p;            // the vertex's cost and gain
  double in_dp, in_dw;    // the step from the previous hull vertex
  double out_dp, out_dw;  // the step to the next one
  int32_t idx;            // its index within the group
};

/// Per-instance preprocessing that does not depend on the budget (reused by sweeps).
struct Prepared {
  int64_t n = 0;
  Span<const int64_t> offsets;
  Span<const double> gains, costs;
  Buf<int64_t> poff;             // CSR over pareto: group g's Pareto list is pareto[poff[g], poff[g+1])
  Buf<int32_t> pareto;           // per group: item indices (within the group), cost and gain strictly increasing
  Buf<int64_t> hoff;             // CSR over hull
  Buf<int32_t> hull;             // per group: item indices (within the group) of the concave hull vertices
  /// Cost, gain and index of item `idx` of group g.
  Item item(int64_t g, int32_t idx) const { const int64_t i = offsets[g] + idx; return {costs[i], gains[i], idx}; }
  Buf<Inc> incs;                 // all hull increments, efficiency descending, ties by (g, k); for a single
                                 // budget only incs[sorted_lo, sorted_hi) are in that order, every one before
                                 // them ranks higher and every one after lower (order_for_budget)
  std::size_t sorted_lo = 0, sorted_hi = 0;
  // A single budget's bracketed preprocessing (prepare, from kBracketGroups groups) stores only the increments
  // whose efficiency lies in a bracket around that budget's LP multiplier: n_above increments rank before every
  // stored one and the LP takes them all, n_below rank after. Zero for the full preprocessing.
  std::size_t n_above = 0, n_below = 0;
  Buf<int32_t> base_pos;         // bracketed: per group, the hull position the increments above reach (else empty)
  Buf<int32_t> end_pos;          // bracketed: per group, the hull position the stored increments reach (else empty)
  Buf<AtBracket> at_bracket;     // bracketed: per group, its vertex at base_pos (else empty)
  Buf<double> prefW, prefP;      // prefix sums over incs, size incs.size() + 1; bracketed: prefW[0] and prefP[0]
                                 // hold the summed steps of the increments above
  double W0 = 0, P0 = 0;         // cheapest item of every group: total cost and gain
  /// W0 exactly (summed on first use: most solves settle the comparison with W0 from its error bound).
  const ExactSum& W0exact() const {
    if (!w0_ready_) {
      for (int64_t g = 0; g < n; ++g) w0_exact_.add(costs[offsets[g] + pareto[poff[g]]]);
      w0_ready_ = true;
    }
    return w0_exact_;
  }
  /// Sign of (the exact W0 - c). W0, a float sum of n terms, is within n eps Wmax of it: beyond twice that the
  /// float value decides.
  int compare_W0(double c) const {
    const double d = W0 - c;
    if (std::fabs(d) > 2.0 * static_cast<double>(n + 1) * std::numeric_limits<double>::epsilon() * Wmax + 1e-300)
      return d > 0 ? 1 : -1;
    return W0exact().compare(c);
  }
  double Pmax = 0;               // sum of every group's largest gain
  double Wmax = 0;               // sum of every group's largest |cost| (a magnitude for rounding slack)
  double scale = 1;              // sum of |largest gain| + |smallest gain|: the unit of the pruning tolerance
  double unit = 0;               // every gain is an integer multiple of it (a power of two; 0 if all gains are 0)
 private:
  mutable ExactSum w0_exact_;    // a Prepared belongs to one call: the lazy cache is not shared between threads
  mutable bool w0_ready_ = false;
};

/// From this many groups a single solve stores only the increments near its LP split (prepare).
constexpr int64_t kBracketGroups = 8192;

/// The largest power of two of which every value is an integer multiple (0 when all are 0). Gains that are all
/// integers give at least 1: then any better solution gains at least `unit` more, an exact pruning step.
/// Returns 0 as soon as the unit is known to be <= floor (it could not prune beyond the tolerance).
double gain_unit(const Span<const double>& values, double floor = 0);

/// The bound a solution must exceed to beat the incumbent z: the requested gap, or, when the gains are multiples
/// of `unit`, the next multiple (less the rounding tolerance, so no state that can reach it is cut).
inline double improve_threshold(double z, double rel_gap, double tol, double unit) {
  return std::max(z + std::max(rel_gap * std::fabs(z), tol), z + unit - tol);
}

/// Throws std::invalid_argument (prefixed by `fn`) naming the group on bad input.
void validate(const char* fn, const Span<const int64_t>& offsets, const Span<const double>& gains, const Span<const double>& costs);
void check_options(const char* fn, const MckpOptions& opts);
/// Stable sort by efficiency, descending (callers build incs in (group, k) order, so ties stay in that order).
void sort_by_efficiency(Inc* incs, std::size_t n);
template <class Incs>
void sort_by_efficiency(Incs& incs) { sort_by_efficiency(incs.data(), incs.size()); }
/// The budget-independent preprocessing. With `budget` (a single solve), the increments are only ordered around
/// that budget's LP split (order_for_budget) instead of sorted, and from `bracket_groups` groups on (0: never)
/// only those near the split are stored at all (bracketed, below); sweeps, bounds and the memory variant sort
/// them all.
Prepared prepare(const Span<const int64_t>& offsets, const Span<const double>& gains, const Span<const double>& costs,
                 const double* budget = nullptr, int64_t bracket_groups = kBracketGroups);
/// Places the increments the LP at `budget` takes first (any order), then sorts `window` increments on each side
/// of its split; sets sorted_lo/sorted_hi. Expected O(M) instead of the full sort's O(M log M).
void order_for_budget(Prepared& pr, double budget, std::size_t window = 2048);
/// Whether the LP split at `budget` falls inside the sorted window (always true once fully sorted). k counts the
/// stored increments the LP takes (after the n_above of a bracketed preprocessing); incs.size() means all of them.
bool split_in_window(const Prepared& pr, std::size_t k);

using Clock = std::chrono::steady_clock;

/// A known solution offered as the first incumbent: a sweep's answer for a smaller budget. `choice` holds
/// original item indices (empty: none), `objective` its exact gain, and it is known to fit every budget >= `fits`.
struct Incumbent {
  std::vector<int32_t> choice;
  double objective = 0;
  double fits = std::numeric_limits<double>::infinity();
};

/// One budget on a prepared instance, `hint` used as the first incumbent where it fits and beats the greedy one.
/// The result's choice is not yet verified against the budget, unless `*summed` comes back true: then its
/// objective and cost were summed by evaluate_fits and it fits the budget (solve_verified need not sum again).
MckpResult solve_prepared(const Prepared& pr, double budget, const MckpOptions& opts, const Incumbent& hint,
                          Clock::time_point start, bool* summed = nullptr);

/// Group g's best and second-best reduced profit p - lambda w (second: +inf when some Pareto item is off the
/// hull, so that pegging reads its items) and the index of the best item; lambda in a bracketed preprocessing's
/// bracket (core.cpp).
struct BestTwo {
  double best, second;
  int32_t at;
};
BestTwo best_two(const Prepared& pr, int64_t g, double lambda);

/// The groups Lagrangian pegging left with several items (core.cpp), and what the others were fixed to.
struct CoreGroups {
  std::vector<int64_t> group;     ///< original group of each core group
  std::vector<int64_t> off{0};    ///< CSR: core group c's survivors are items[off[c], off[c+1])
  std::vector<Item> items;        ///< survivors, by increasing cost
  std::vector<double> ambiguity;  ///< best minus second-best reduced profit among the survivors
  std::vector<int32_t> fixed;     ///< per original group: the original index of its only survivor, or -1
  double Wfix = 0, Pfix = 0;      ///< summed cost and gain of the fixed groups
};

/// The Pareto-state DP over the core groups (core_dp.cpp). Improves the incumbent (r's choice, objective
/// and cost; z, its objective as the search saw it), counts r.nodes, raises pruned_max to the best bound it
/// discards. Returns true when a state or time limit cut the search short (r.message says which). When it
/// replaces r's choice, `summed` says whether the new one was summed by evaluate_fits and fits the budget.
bool core_dp(const Prepared& pr, double budget, const MckpOptions& opts, Clock::time_point start,
             const CoreGroups& core, double tol, MckpResult& r, double& z, double& pruned_max, bool& summed);

/// Exact sums of the chosen gains/costs; fills objective and cost.
void evaluate_choice(const Prepared& pr, MckpResult& r);
/// evaluate_choice and, in the same pass, whether the chosen costs fit `limit` exactly (compare_sum <= 0).
bool evaluate_fits(const Prepared& pr, MckpResult& r, double limit);
/// Sign of (exact sum of chosen values - limit).
int compare_sum(const Span<const int64_t>& offsets, const Span<const double>& values, const std::vector<int32_t>& choice,
                double limit);
double exact_sum(const Span<const int64_t>& offsets, const Span<const double>& values, const std::vector<int32_t>& choice);

/// solve_prepared, then verify the cost exactly; if rounding inside the search let it exceed the budget,
/// re-solve with a budget tightened by the excess (rare) while keeping the first, still valid, bound.
MckpResult solve_verified(const Prepared& pr, double budget, const MckpOptions& opts, const Incumbent& hint,
                          Clock::time_point start);

/// The memory-constrained problem as solve_mckp_memory received it, plus magnitudes for tolerances.
struct TwoRowInput {
  const Span<const int64_t>& offsets;
  const Span<const double>&gains, &costs, &memory;
  double budget, max_memory;
  const MckpOptions& opts;
  Clock::time_point start;  // of the whole call: opts.time_limit counts from here
  double scale, wmax;       // Prepared::scale and Prepared::Wmax of the plain problem
};
/// Exact search once the multipliers are known: surrogate mu (cost + mu*memory), its LP slope lambda, a proven
/// upper bound and the incumbent (z, best; z = -inf if none). memory_core.cpp.
MckpResult solve_two_row_core(const TwoRowInput& in, double mu, double lambda, double upper, double z,
                              std::vector<int32_t> best);

double seconds_since(Clock::time_point t0);
std::string fmt(double x);  // shortest round-trip decimal

/// Beam truncation of a search level: keeps the `width` states with the highest bounds (ties: lower index),
/// in their original (cost) order, and raises `pruned_max` to the best bound it drops.
template <class S>
void keep_best(std::vector<S>& states, const std::vector<double>& bound, std::int64_t width, double& pruned_max) {
  std::vector<int32_t> idx(states.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::nth_element(idx.begin(), idx.begin() + width, idx.end(), [&](int32_t a, int32_t b) {
    return bound[a] != bound[b] ? bound[a] > bound[b] : a < b;
  });
  for (std::size_t t = static_cast<std::size_t>(width); t < idx.size(); ++t)
    pruned_max = std::max(pruned_max, bound[idx[t]]);
  idx.resize(static_cast<std::size_t>(width));
  std::sort(idx.begin(), idx.end());
  std::vector<S> kept;
  kept.reserve(idx.size());
  for (int32_t t : idx) kept.push_back(states[t]);
  states.swap(kept);
}

}  // namespace mpq::detail
