// MCKP with a second row (memory); docs/cpp-core.md, "The memory-constrained variant".
// 1. Solve without the memory row; if its optimum fits the memory too, it is optimal for both rows.
// 2. Surrogate relaxation: cost + mu*memory <= budget + mu*max_memory holds for every feasible choice, so every
//    mu >= 0 gives an MCKP whose optimum bounds ours. Pick mu minimising the surrogate LP (a bound).
// 3. Lagrangian relaxation of the memory row: exact MCKP solves with gains p - nu*memory, nu found by bisection,
//    give incumbents (when they fit both rows) and further bounds.
// 4. Close the gap by a Pareto-state DP with 3-D dominance over the groups that survive surrogate pegging,
//    bounded by the surrogate residual LP and both rows' cheapest completions (memory_core.cpp).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "mckp/internal.hpp"

namespace mpq {
namespace {

using detail::Clock;
using detail::ExactSum;
using detail::fmt;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();


struct SurrogateLp {
  double value = kNegInf, lambda = 0;
};

SurrogateLp surrogate_lp(const detail::Prepared& ps, double cap_total) {
  SurrogateLp out;
  if (ps.compare_W0(cap_total) > 0) return out;
  const double cap = std::max(0.0, cap_total - ps.W0);
  const std::size_t k = static_cast<std::size_t>(
      std::upper_bound(ps.prefW.begin(), ps.prefW.end(), cap) - ps.prefW.begin() - 1);
  if (k == ps.incs.size()) { out.value = ps.P0 + ps.prefP[k]; return out; }
  out.lambda = ps.incs[k].e;
  out.value = ps.P0 + ps.prefP[k] + (cap - ps.prefW[k]) * out.lambda;
  return out;
}

}  // namespace

MckpResult solve_mckp_memory(Span<const int64_t> offsets, Span<const double> gains, Span<const double> costs,
                             Span<const double> memory, double budget, double max_memory, const MckpOptions& opts) {
  const auto start = Clock::now();
  const char* fn = "solve_mckp_memory";
  detail::validate(fn, offsets, gains, costs);
  detail::check_options(fn, opts);
  if (std::isnan(budget)) throw std::invalid_argument(std::string(fn) + ": budget is nan");
  if (std::isnan(max_memory)) throw std::invalid_argument(std::string(fn) + ": max_memory is nan");
  if (memory.size != gains.size)
    throw std::invalid_argument(std::string(fn) + ": memory has " + std::to_string(memory.size) +
                                " values but gains has " + std::to_string(gains.size));
  const int64_t n = static_cast<int64_t>(offsets.size) - 1;
  ExactSum min_mem;
  for (int64_t g = 0; g < n; ++g) {
    double lo = memory[offsets[g]];
    for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) {
      if (!std::isfinite(memory[i]) || memory[i] < 0)
        throw std::invalid_argument(std::string(fn) + ": memory of item " + std::to_string(i - offsets[g]) +
                                    " in group " + std::to_string(g) + " is " + fmt(memory[i]) +
                                    " (must be finite and >= 0)");
      lo = std::min(lo, memory[i]);
    }
    min_mem.add(lo);
  }
  double mtotal = 0;
  for (std::size_t i = 0; i < memory.size; ++i) mtotal += memory[i];
  if (!std::isfinite(mtotal))
    throw std::invalid_argument(std::string(fn) + ": values too large: the sum of all memory values overflows");
  MckpResult r;
  auto done = [&](MckpResult& x) -> MckpResult {
    if (!x.choice.empty()) x.memory = detail::exact_sum(offsets, memory, x.choice);
    x.seconds = detail::seconds_since(start);
    return x;
  };
  if (min_mem.compare(max_memory) > 0) {
    r.status = MckpStatus::kInfeasible;
    r.bound = kNegInf;
    r.message = "max_memory " + fmt(max_memory) + " is below the minimum feasible memory " +
                fmt(min_mem.round_up()) + " (the least-memory item of every group)";
    return done(r);
  }
  // 1. the memory row is often slack at the plain optimum
  const detail::Prepared pr = detail::prepare(offsets, gains, costs);
  MckpResult plain = detail::solve_verified(pr, budget, opts, detail::Incumbent{}, start);
  if (plain.status == MckpStatus::kInfeasible || plain.choice.empty()) return done(plain);
  if (detail::compare_sum(offsets, memory, plain.choice, max_memory) <= 0) return done(plain);
  double upper = plain.bound;

  // 2. surrogate multiplier: minimise the surrogate LP over mu (coarse grid in log space, then golden section)
  double cmax = 0, mmax = 0;
  for (std::size_t i = 0; i < costs.size; ++i) { cmax = std::max(cmax, costs[i]); mmax = std::max(mmax, memory[i]); }
  const double mu0 = (cmax > 0 && mmax > 0) ? cmax / mmax : 1.0;
  std::vector<double> comb(costs.size);
  auto prep_mu = [&](double mu) {
    for (std::size_t i = 0; i < costs.size; ++i) comb[i] = costs[i] + mu * memory[i];
    return detail::prepare(offsets, gains, Span<const double>(comb.data(), comb.size()));
  };
  auto lp_at = [&](double lmu) {
    const double mu = mu0 * std::exp2(lmu);
    return surrogate_lp(prep_mu(mu), budget + mu * max_memory).value;
  };
  double best_l = -40, best_v = lp_at(best_l);
  for (double l = -38; l <= 40; l += 2) {
    const double v = lp_at(l);
    if (v < best_v) { best_v = v; best_l = l; }
  }
  {
    double a = best_l - 2, b = best_l + 2;
    const double phi = 0.6180339887498949;
    double x1 = b - phi * (b - a), x2 = a + phi * (b - a), f1 = lp_at(x1), f2 = lp_at(x2);
    for (int it = 0; it < 30; ++it) {
      if (f1 < f2) { b = x2; x2 = x1; f2 = f1; x1 = b - phi * (b - a); f1 = lp_at(x1); }
      else { a = x1; x1 = x2; f1 = f2; x2 = a + phi * (b - a); f2 = lp_at(x2); }
    }
    if (std::min(f1, f2) < best_v) { best_v = std::min(f1, f2); best_l = f1 < f2 ? x1 : x2; }
  }
  const double mu = mu0 * std::exp2(best_l);
  const double scap = budget + mu * max_memory;
  upper = std::min(upper, best_v);

  if (best_v == kNegInf) {  // some surrogate row cannot be met by any choice: neither can both rows
    r.status = MckpStatus::kInfeasible;
    r.bound = kNegInf;
    r.message = "no choice satisfies both the budget and max_memory (a surrogate of the two rows is infeasible)";
    return done(r);
  }

  // 3. incumbents and bounds: Lagrangian relaxation of the memory row. For nu >= 0 the exact MCKP with gains
  // p - nu*mem bounds the optimum by its bound + nu*max_memory; larger nu uses less memory, so a bisection
  // on nu finds memory-feasible solutions close to the boundary.
  double z = kNegInf;
  std::vector<int32_t> best;
  MckpOptions sub = opts;
  sub.time_limit = opts.time_limit > 0 ? std::max(1e-3, opts.time_limit / 50) : 0;
  sub.max_states = std::max<int64_t>(1000, opts.max_states / 8);
  std::vector<double> pg(gains.size);
  auto lagrange = [&](double nu) {  // true if the solution fits the memory row
    for (std::size_t i = 0; i < gains.size; ++i) pg[i] = gains[i] - nu * memory[i];
    const detail::Prepared pl = detail::prepare(offsets, Span<const double>(pg.data(), pg.size()), costs);
    const MckpResult s = detail::solve_prepared(pl, budget, sub, detail::Incumbent{}, Clock::now());
    r.nodes += s.nodes;
    if (s.choice.empty()) return false;
    upper = std::min(upper, s.bound + nu * max_memory);
    if (detail::compare_sum(offsets, costs, s.choice, budget) > 0) return false;
    if (detail::compare_sum(offsets, memory, s.choice, max_memory) > 0) return false;
    const double v = detail::exact_sum(offsets, gains, s.choice);
    if (v > z) { z = v; best = s.choice; }
    return true;
  };
  {
    double gsum = 0, msum0 = 0;
    for (int64_t g = 0; g < n; ++g)
      for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) { gsum += std::fabs(gains[i]); msum0 += memory[i]; }
    double lo = 0, hi = msum0 > 0 ? gsum / msum0 : 1.0;
    bool found = false;
    for (int it = 0; it < 60 && !found; ++it, hi *= 4) found = lagrange(hi);
    for (int it = 0; found && it < 30 && hi - lo > 1e-12 * hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      (lagrange(mid) ? hi : lo) = mid;
    }
  }

  // 4. exact search over the surrogate core
  const detail::Prepared ps = prep_mu(mu);
  const detail::TwoRowInput in{offsets, gains, costs, memory, budget, max_memory, opts, start, pr.scale, pr.Wmax};
  MckpResult core = detail::solve_two_row_core(in, mu, surrogate_lp(ps, scap).lambda, upper, z, best);
  core.nodes += r.nodes;
  return done(core);
}

}  // namespace mpq
