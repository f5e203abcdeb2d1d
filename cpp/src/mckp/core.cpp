// One budget on a prepared instance: LP by sorted increments, greedy incumbent, Lagrangian pegging, then the
// Pareto-state DP over the core groups (core_dp.cpp) pruned by the exact residual-LP bound
// (docs/cpp-core.md, "The MCKP solver", steps 2-5).
#include <algorithm>
#include <cmath>

#include "mckp/internal.hpp"

namespace mpq::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// r.choice from each group's hull position.
void choose_hull(const Prepared& pr, const Buf<int32_t>& pos, MckpResult& r) {
  for (int64_t g = 0; g < pr.n; ++g) r.choice[g] = pr.hull[pr.hoff[g] + pos[g]];
}

// Hull positions of the LP rounding that takes the first k increments (an integral solution), and its choice.
void take_prefix(const Prepared& pr, std::size_t k, Buf<int32_t>& pos, MckpResult& r) {
  if (pr.base_pos.empty()) std::fill(pos.begin(), pos.end(), 0);
  else std::copy(pr.base_pos.begin(), pr.base_pos.end(), pos.begin());  // the increments above the bracket
  // the first k may be in any order (order_for_budget), but they hold a prefix of every group's hull
  for (std::size_t t = 0; t < k; ++t) pos[pr.incs[t].g] = std::max(pos[pr.incs[t].g], pr.incs[t].k);
  choose_hull(pr, pos, r);
}

// The number of whole increments the LP takes at budget C; r.choice is their rounding. The float prefix sums may
// put the count one past the exact boundary, so it steps back until the rounding fits exactly (0 always does:
// the caller checked the cheapest items). Returns SIZE_MAX when the split leaves the sorted window.
std::size_t lp_prefix(const Prepared& pr, double C, Buf<int32_t>& pos, MckpResult& r) {
  constexpr std::size_t kOutside = static_cast<std::size_t>(-1);
  const double cap = std::max(0.0, C - pr.W0);
  if (cap < pr.prefW[0]) return kOutside;  // a bracketed preprocessing's split lies above its stored increments
  std::size_t k = static_cast<std::size_t>(
      std::upper_bound(pr.prefW.begin(), pr.prefW.end(), cap) - pr.prefW.begin() - 1);
  if (!split_in_window(pr, k)) return kOutside;
  take_prefix(pr, k, pos, r);
  // The float estimate W0 + prefW[k] of the rounding's cost errs by less than (n + k + 2) eps (Wmax + |C|): each
  // cost step dw and each running sum is rounded once (the increments above a bracket: once per group).
  const double taken = static_cast<double>(pr.n_above) + static_cast<double>(k);
  const double err = 8.0 * (static_cast<double>(pr.n) + taken + 2.0) * std::numeric_limits<double>::epsilon() *
                     (pr.Wmax + std::fabs(C));
  if (cap - pr.prefW[k] > err) return k;
  while (k > 0 && compare_sum(pr.offsets, pr.costs, r.choice, C) > 0) {
    if (!split_in_window(pr, k - 1)) return kOutside;
    take_prefix(pr, --k, pos, r);
  }
  // with none of the stored ones taken, only a bracketed rounding (the increments above) can still be over
  if (k == 0 && pr.n_above > 0 && compare_sum(pr.offsets, pr.costs, r.choice, C) > 0) return kOutside;
  return k;
}

// First incumbent: the LP rounding continued greedily (a group freezes at its first increment that does not
// fit), or `hint` when that is feasible and better. Fills r's choice, objective and cost; true when the greedy
// choice, summed by evaluate_fits, is the one kept.
bool greedy_incumbent(const Prepared& pr, double C, std::size_t k, Buf<int32_t>& pos,
                      const Incumbent& hint, MckpResult& r) {
  double used = pr.W0 + pr.prefW[k];
  std::vector<char> frozen(pr.n, 0);
  for (std::size_t t = k; t < pr.incs.size(); ++t) {
    const Inc& in = pr.incs[t];
    // past the sorted window a group's increments may come out of hull order: take only the next one
    if (frozen[in.g] || pos[in.g] != in.k - 1) continue;
    if (used + in.dw <= C) { used += in.dw; pos[in.g] = in.k; }
    else frozen[in.g] = 1;
  }
  if (!pr.at_bracket.empty()) {
    // A bracketed preprocessing stores no increment below its bracket, yet small ones there often fill what the
    // budget has left, and without them the incumbent is weaker and pegging fixes far fewer groups (weakly
    // correlated instances: the whole instance in the core). Each group with no stored increment recorded its
    // first one below: those that fit, most efficient first.
    std::vector<std::pair<double, int64_t>> fit;  // (efficiency, group)
    const double left = C - used;
    for (int64_t g = 0; g < pr.n; ++g) {
      const AtBracket& a = pr.at_bracket[g];
      if (a.out_dw > 0 && a.out_dw <= left && pr.end_pos[g] == pr.base_pos[g] && pos[g] == pr.base_pos[g])
        fit.push_back({a.out_dp / a.out_dw, g});
    }
    std::sort(fit.begin(), fit.end(), [](const auto& x, const auto& y) {
      return x.first != y.first ? x.first > y.first : x.second < y.second;
    });
    for (const auto& [e, g] : fit) {
      const double dw = pr.at_bracket[g].out_dw;
      if (used + dw <= C) { used += dw; pos[g] += 1; }
    }
  }
  choose_hull(pr, pos, r);
  bool summed = evaluate_fits(pr, r, C);
  if (!summed) {  // rounding in `used`
    take_prefix(pr, k, pos, r);
    evaluate_choice(pr, r);
  }
  if (static_cast<int64_t>(hint.choice.size()) == pr.n && hint.fits <= C && hint.objective > r.objective) {
    r.choice = hint.choice;
    r.objective = hint.objective;
    summed = false;  // its cost is not summed here
  }
  return summed;
}

// Lagrangian pegging with multiplier lambda: forcing item j of group g costs (rmax_g - r_gj) of the bound U_L, so
// an item whose forced bound is below the threshold `th` cannot be in a better solution. Groups left with one
// item are fixed, the others form the core. `proven` when some group lost every item: the incumbent is optimal.
// `second` is each group's second-best reduced profit when every Pareto item of the group is a hull vertex (+inf
// otherwise) and `best_at` the index of its best item: a group whose second-best item is already pegged away is
// fixed without reading its items again (most groups, on every budget of a sweep).
CoreGroups peg(const Prepared& pr, double lambda, double U_L, const Buf<double>& rmax, const Buf<double>& second,
               const Buf<int32_t>& best_at, double th, double& pruned_max, bool& proven) {
  CoreGroups core;
  core.fixed.assign(pr.n, -1);
  proven = false;
  std::vector<Item> surv;
  double pmax = pruned_max;  // a local: through the reference it was a store and a load per group
  struct Out {               // ... and written back on every return
    double& to; const double& from;
    ~Out() { to = from; }
  } out{pruned_max, pmax};
  const bool records = !pr.at_bracket.empty();
  for (int64_t g = 0; g < pr.n; ++g) {
    const double U2 = U_L - (rmax[g] - second[g]);  // the forced bound of the second-best item
    if (U2 < th) {
      if (second[g] > kNegInf) pmax = std::max(pmax, U2);
      // a bracketed group's best is usually its recorded vertex: read sequentially, not gathered
      const Item it = records && pr.at_bracket[g].idx == best_at[g]
                          ? Item{pr.at_bracket[g].w, pr.at_bracket[g].p, best_at[g]}
                          : pr.item(g, best_at[g]);
      core.fixed[g] = it.idx;
      core.Wfix += it.w;
      core.Pfix += it.p;
      continue;
    }
    surv.clear();
    double b1 = kNegInf, b2 = kNegInf;  // two best reduced profits among survivors
    for (int64_t i = pr.poff[g]; i < pr.poff[g + 1]; ++i) {
      const Item it = pr.item(g, pr.pareto[i]);
      const double rr = it.p - lambda * it.w;
      const double Ug = U_L - (rmax[g] - rr);
      if (Ug < th) { pmax = std::max(pmax, Ug); continue; }
      surv.push_back(it);
      if (rr > b1) { b2 = b1; b1 = rr; }
      else if (rr > b2) b2 = rr;
    }
    if (surv.empty()) { proven = true; return core; }
    if (surv.size() == 1) {
      core.fixed[g] = surv[0].idx;
      core.Wfix += surv[0].w;
      core.Pfix += surv[0].p;
      continue;
    }
    core.group.push_back(g);
    core.ambiguity.push_back(b1 - b2);
    core.items.insert(core.items.end(), surv.begin(), surv.end());
    core.off.push_back(static_cast<int64_t>(core.items.size()));
  }
  return core;
}

}  // namespace

BestTwo best_two(const Prepared& pr, int64_t g, double lambda) {
  // lambda > 0 (Pareto steps gain), so the best reduced profit sits on a hull vertex: fewer items to read;
  // an item the hull dropped as collinear can differ only by rounding, which the tolerance covers
  const bool all_on_hull = pr.poff[g + 1] - pr.poff[g] == pr.hoff[g + 1] - pr.hoff[g];
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (!pr.base_pos.empty() && pr.end_pos[g] == pr.base_pos[g]) {
    // bracketed, and no increment of the group near lambda: its best vertex is the one the increments above
    // reach, the second best a neighbour, each lower by its step's reduced gain
    const AtBracket& a = pr.at_bracket[g];
    const double best = a.p - lambda * a.w;
    const double gap = std::min(a.in_dp - lambda * a.in_dw, lambda * a.out_dw - a.out_dp);
    return {best, all_on_hull ? best - gap : kInf, a.idx};
  }
  double best = kNegInf, next = kNegInf;
  int64_t h0 = pr.hoff[g], h1 = pr.hoff[g + 1];
  if (!pr.base_pos.empty()) {
    // bracketed: lambda lies in the bracket, so the best vertex is between the positions the increments above
    // and the stored ones reach, and on a concave hull the second best is next to it
    h1 = std::min(h1, h0 + pr.end_pos[g] + 2);
    h0 += std::max(0, pr.base_pos[g] - 1);
  }
  int32_t at = pr.hull[h0];
  const double* W = pr.costs.data + pr.offsets[g];
  const double* G = pr.gains.data + pr.offsets[g];
  for (int64_t h = h0; h < h1; ++h) {
    const double rr = G[pr.hull[h]] - lambda * W[pr.hull[h]];
    if (rr > best) { next = best; best = rr; at = pr.hull[h]; }
    else if (rr > next) next = rr;
  }
  return {best, all_on_hull ? next : kInf, at};
}

MckpResult solve_prepared(const Prepared& pr, double C, const MckpOptions& opts, const Incumbent& hint,
                          Clock::time_point start, bool* summed) {
  MckpResult r;
  bool sum_ok = false;  // r's choice summed by evaluate_fits and within C
  struct Report {       // hands sum_ok to the caller on every return
    bool* out; const bool& v;
    ~Report() { if (out) *out = v; }
  } report{summed, sum_ok};
  const int64_t n = pr.n;
  if (pr.compare_W0(C) > 0) {
    r.status = MckpStatus::kInfeasible;
    r.bound = kNegInf;
    r.message = "budget " + fmt(C) + " is below the minimum feasible budget " + fmt(pr.W0exact().round_up()) +
                " (the cheapest item of every group)";
    return r;
  }
  r.choice.resize(n);
  Buf<int32_t> pos(n);  // filled by take_prefix
  const std::size_t k = lp_prefix(pr, C, pos, r);
  if (k == static_cast<std::size_t>(-1)) {  // the split is outside the window ordered for another budget: sort all
    report.out = nullptr;  // the inner solve reports its own
    return solve_prepared(prepare(pr.offsets, pr.gains, pr.costs), C, opts, hint, start, summed);
  }
  if (k == pr.incs.size()) {  // everything fits (split_in_window): every group takes its best item, the LP is integral
    evaluate_choice(pr, r);
    r.status = MckpStatus::kOptimal;
    r.bound = r.objective;
    return r;
  }
  const double lambda = pr.incs[k].e;  // the split increment's efficiency: the LP's multiplier
  const double U_lp = pr.P0 + pr.prefP[k] + (std::max(0.0, C - pr.W0) - pr.prefW[k]) * lambda;
  sum_ok = greedy_incumbent(pr, C, k, pos, hint, r);

  double z = r.objective;
  const double tol = 1e-12 * pr.scale;
  auto threshold = [&] { return improve_threshold(z, opts.rel_gap, tol, pr.unit); };
  Buf<double> rmax(n), second(n);  // each group's best and second-best reduced profit at lambda (for peg)
  Buf<int32_t> best_at(n);
  double U_L = lambda * C;
  for (int64_t g = 0; g < n; ++g) {
    const BestTwo b = best_two(pr, g, lambda);
    rmax[g] = b.best;
    best_at[g] = b.at;
    second[g] = b.second;
    U_L += b.best;
  }
  const double U_root = std::min(U_lp, U_L);
  double pruned_max = kNegInf;  // largest bound of anything discarded by a bound test
  auto finish_optimal = [&] {
    r.status = MckpStatus::kOptimal;
    r.bound = std::max(r.objective, std::min(U_root, pruned_max));
    // gains in multiples of `unit`: nothing reaches the next multiple, so the optimum is the incumbent itself
    if (r.bound < improve_threshold(r.objective, 0.0, tol, pr.unit) && pr.unit > tol) r.bound = r.objective;
    r.seconds = seconds_since(start);
    return r;
  };
  if (U_root <= threshold()) { pruned_max = U_root; return finish_optimal(); }

  bool proven = false;
  const CoreGroups core = peg(pr, lambda, U_L, rmax, second, best_at, threshold(), pruned_max, proven);
  if (proven) return finish_optimal();
  r.core_groups = static_cast<int>(core.group.size());
  const bool limited = core_dp(pr, C, opts, start, core, tol, r, z, pruned_max, sum_ok);
  // A limit that only cut states which cannot beat the final incumbent still proves optimality.
  if (!limited || pruned_max < threshold()) {
    r.message.clear();
    return finish_optimal();
  }
  r.status = MckpStatus::kLimit;
  r.bound = std::max(r.objective, std::min(U_root, pruned_max));
  r.seconds = seconds_since(start);
  return r;
}

}  // namespace mpq::detail
