// Public MCKP entry points: input checks, exact verification of the answer, the dual direction and sweeps.
#include "mpq/mckp.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "mckp/internal.hpp"

namespace mpq {

const char* to_string(MckpStatus status) noexcept {
  switch (status) {
    case MckpStatus::kOptimal: return "optimal";
    case MckpStatus::kInfeasible: return "infeasible";
    case MckpStatus::kLimit: return "limit";
  }
  return "unknown";
}

namespace detail {

double exact_sum(const Span<const int64_t>& offsets, const Span<const double>& values,
                 const std::vector<int32_t>& choice) {
  ExactSum s;
  for (std::size_t g = 0; g < choice.size(); ++g) s.add(values[offsets[g] + choice[g]]);
  return s.value();
}

namespace {
// Compensated sum (each addition's rounding error recovered exactly by TwoSum, as in Neumaier's method, but
// without its branch: sweeps call this several times per budget) and the sum of magnitudes; its error is far
// below 1e-15 * (sum of magnitudes).
double fast_sum(const Span<const int64_t>& offsets, const Span<const double>& values,
                const std::vector<int32_t>& choice, double* abs_sum = nullptr) {
  double s = 0, comp = 0, a = 0;
  for (std::size_t g = 0; g < choice.size(); ++g) {
    const double x = values[offsets[g] + choice[g]];
    const double t = s + x;
    const double bp = t - s;
    comp += (s - (t - bp)) + (x - bp);
    s = t;
    a += std::fabs(x);
  }
  if (abs_sum) *abs_sum = a;
  return s + comp;
}
}  // namespace

int compare_sum(const Span<const int64_t>& offsets, const Span<const double>& values,
                const std::vector<int32_t>& choice, double limit) {
  if (std::isinf(limit)) return limit > 0 ? -1 : 1;
  double a = 0;
  const double d = fast_sum(offsets, values, choice, &a) - limit;
  if (std::fabs(d) > 1e-14 * (a + std::fabs(limit))) return d > 0 ? 1 : -1;  // clear either way
  ExactSum s;  // too close to call in floating point: decide exactly
  for (std::size_t g = 0; g < choice.size(); ++g) s.add(values[offsets[g] + choice[g]]);
  return s.compare(limit);
}

void evaluate_choice(const Prepared& pr, MckpResult& r) {  // search-time values; the final ones are exact
  r.objective = fast_sum(pr.offsets, pr.gains, r.choice);
  r.cost = fast_sum(pr.offsets, pr.costs, r.choice);
}

bool evaluate_fits(const Prepared& pr, MckpResult& r, double limit) {
  // both compensated sums in one pass over the choice (each was a pass of its own, several per budget in a sweep)
  double sg = 0, cg = 0, sc = 0, cc = 0, a = 0;
  const int64_t* off = pr.offsets.data;
  const int32_t* ch = r.choice.data();
  for (std::size_t g = 0; g < r.choice.size(); ++g) {
    const int64_t i = off[g] + ch[g];
    const double x = pr.gains[i], y = pr.costs[i];
    const double t = sg + x, bp = t - sg;
    cg += (sg - (t - bp)) + (x - bp);
    sg = t;
    const double u = sc + y, bq = u - sc;
    cc += (sc - (u - bq)) + (y - bq);
    sc = u;
    a += std::fabs(y);
  }
  r.objective = sg + cg;
  r.cost = sc + cc;
  if (std::isinf(limit)) return limit > 0;
  const double d = r.cost - limit;
  if (std::fabs(d) > 1e-14 * (a + std::fabs(limit))) return d < 0;  // clear either way
  return compare_sum(pr.offsets, pr.costs, r.choice, limit) <= 0;     // too close to call: exactly
}

MckpResult solve_verified(const Prepared& pr, double budget, const MckpOptions& opts, const Incumbent& hint,
                          Clock::time_point start) {
  bool summed = false;
  MckpResult r = solve_prepared(pr, budget, opts, hint, start, &summed);
  if (r.choice.empty() || summed || evaluate_fits(pr, r, budget)) {
    if (!r.choice.empty()) {  // compensated sums; a cost that rounds over the budget is re-summed exactly
      if (r.cost > budget) r.cost = exact_sum(pr.offsets, pr.costs, r.choice);
      if (r.status == MckpStatus::kOptimal) r.bound = std::max(r.bound, r.objective);
    }
    r.seconds = seconds_since(start);
    return r;
  }
  // Rounding inside the search accepted a cost a few ulps over the budget: tighten and re-solve. The first
  // bound stays valid for the original budget; the repaired answer is optimal only if it reaches it.
  const double first_bound = r.bound;
  int64_t nodes = r.nodes;
  double excess = std::max(r.cost - budget, std::fabs(budget) * 1e-16 + 1e-300);
  for (int attempt = 0; attempt < 8; ++attempt, excess *= 4) {
    MckpResult r2 = solve_prepared(pr, budget - 2 * excess, opts, hint, start);
    nodes += r2.nodes;
    if (r2.status == MckpStatus::kInfeasible) break;
    if (compare_sum(pr.offsets, pr.costs, r2.choice, budget) > 0) continue;
    r2.objective = exact_sum(pr.offsets, pr.gains, r2.choice);
    r2.cost = exact_sum(pr.offsets, pr.costs, r2.choice);
    r2.nodes = nodes;
    r2.bound = std::max(r2.objective, first_bound);
    const double gap = std::max(opts.rel_gap * std::fabs(r2.objective), 1e-12 * pr.scale);
    if (r2.status == MckpStatus::kOptimal && r2.bound > r2.objective + gap) {
      r2.status = MckpStatus::kLimit;
      r2.message = "an answer at the budget boundary was lost to rounding; the bound is not closed";
    }
    r2.seconds = seconds_since(start);
    return r2;
  }
  MckpResult none;  // cannot happen with a finite budget above the minimum; never return a violating answer
  none.status = MckpStatus::kLimit;
  none.bound = first_bound;
  none.nodes = nodes;
  none.message = "no exactly feasible answer could be certified near the budget";
  none.seconds = seconds_since(start);
  return none;
}

}  // namespace detail

using detail::Clock;

namespace {
void check_number(const char* fn, const char* name, double x) {
  if (std::isnan(x)) throw std::invalid_argument(std::string(fn) + ": " + name + " is nan");
}

// The checks of a one-budget entry point: the arrays, the options and its limit (`name`, the budget or min_gain).
void check_inputs(const char* fn, const Span<const int64_t>& offsets, const Span<const double>& gains,
                  const Span<const double>& costs, const MckpOptions& opts, const char* name, double limit) {
  detail::validate(fn, offsets, gains, costs);
  detail::check_options(fn, opts);
  check_number(fn, name, limit);
}
}  // namespace

MckpResult solve_mckp(Span<const int64_t> offsets, Span<const double> gains, Span<const double> costs,
                      double budget, const MckpOptions& opts) {
  const auto start = Clock::now();
  check_inputs("solve_mckp", offsets, gains, costs, opts, "budget", budget);
  const detail::Prepared pr = detail::prepare(offsets, gains, costs, &budget);
  return detail::solve_verified(pr, budget, opts, detail::Incumbent{}, start);
}

std::vector<MckpResult> sweep_mckp(Span<const int64_t> offsets, Span<const double> gains, Span<const double> costs,
                                   Span<const double> budgets, const MckpOptions& opts) {
  detail::validate("sweep_mckp", offsets, gains, costs);
  detail::check_options("sweep_mckp", opts);
  for (std::size_t b = 0; b < budgets.size; ++b)
    if (std::isnan(budgets[b]))
      throw std::invalid_argument("sweep_mckp: budgets[" + std::to_string(b) + "] is nan");
  const detail::Prepared pr = detail::prepare(offsets, gains, costs);
  std::vector<std::size_t> order(budgets.size);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return budgets[a] < budgets[b]; });
  std::vector<MckpResult> out(budgets.size);
  detail::Incumbent hint;  // a solution for a smaller budget is feasible for every larger one
  for (std::size_t b : order) {
    out[b] = detail::solve_verified(pr, budgets[b], opts, hint, Clock::now());
    if (!out[b].choice.empty()) hint = {out[b].choice, out[b].objective, budgets[b]};
  }
  return out;
}

MckpResult solve_mckp_min_cost(Span<const int64_t> offsets, Span<const double> gains, Span<const double> costs,
                               double min_gain, const MckpOptions& opts) {
  const auto start = Clock::now();
  check_inputs("solve_mckp_min_cost", offsets, gains, costs, opts, "min_gain", min_gain);
  // min cost s.t. gain >= G  <=>  max (-cost) s.t. (-gain) <= -G. Negation is exact, so the feasibility check
  // of the transformed problem is exactly the original one; the solver accepts negative "costs" internally.
  std::vector<double> neg_cost(costs.size), neg_gain(gains.size);
  for (std::size_t i = 0; i < costs.size; ++i) { neg_cost[i] = -costs[i]; neg_gain[i] = -gains[i]; }
  const Span<const double> nc(neg_cost.data(), neg_cost.size()), ng(neg_gain.data(), neg_gain.size());
  const detail::Prepared pr = detail::prepare(offsets, nc, ng);
  MckpResult r = detail::solve_verified(pr, -min_gain, opts, detail::Incumbent{}, start);
  if (r.status == MckpStatus::kInfeasible) {
    r.bound = std::numeric_limits<double>::infinity();
    r.message = "min_gain " + detail::fmt(min_gain) + " exceeds the largest reachable total gain " +
                detail::fmt(-pr.W0exact().value()) + " (the best item of every group)";
    return r;
  }
  r.bound = -r.bound;
  if (!r.choice.empty()) {
    r.objective = detail::exact_sum(offsets, gains, r.choice);
    r.cost = detail::exact_sum(offsets, costs, r.choice);
    r.bound = std::min(r.bound, r.cost);
  }
  return r;
}

double mckp_lp_bound(Span<const int64_t> offsets, Span<const double> gains, Span<const double> costs,
                     double budget) {
  detail::validate("mckp_lp_bound", offsets, gains, costs);
  check_number("mckp_lp_bound", "budget", budget);
  const detail::Prepared pr = detail::prepare(offsets, gains, costs);
  if (pr.compare_W0(budget) > 0) return -std::numeric_limits<double>::infinity();
  const double cap = std::max(0.0, budget - pr.W0);
  const std::size_t k = static_cast<std::size_t>(
      std::upper_bound(pr.prefW.begin(), pr.prefW.end(), cap) - pr.prefW.begin() - 1);
  if (k == pr.incs.size()) return pr.P0 + pr.prefP[k];
  return pr.P0 + pr.prefP[k] + (cap - pr.prefW[k]) * pr.incs[k].e;
}

}  // namespace mpq
