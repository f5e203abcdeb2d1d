// MCKP solver vs exhaustive enumeration on thousands of small random instances (n <= 8, m <= 4) with exact
// ties, zero costs, equal and negative gains, budgets on the boundary and infeasible budgets.
// Values are multiples of 1/8 (sums are exact in double), except in a quarter of the instances.
#include "check.hpp"
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mpq/mckp.hpp"

namespace {


struct Instance {
  std::vector<int64_t> off{0};
  std::vector<double> gain, cost;
};

struct Brute {
  bool feasible = false;
  long double best = 0;      // max gain subject to cost <= budget
  long double mincost = 0;   // min cost subject to gain >= target (for the dual)
  bool dual_feasible = false;
};

long double sum_of(const Instance& x, const std::vector<double>& v, const std::vector<int32_t>& ch) {
  long double s = 0;
  for (std::size_t g = 0; g < ch.size(); ++g) s += v[x.off[g] + ch[g]];
  return s;
}

Brute brute(const Instance& x, double budget, double target) {
  const std::size_t n = x.off.size() - 1;
  std::vector<int32_t> ch(n, 0);
  Brute b;
  for (;;) {
    const long double c = sum_of(x, x.cost, ch), p = sum_of(x, x.gain, ch);
    if (c <= budget && (!b.feasible || p > b.best)) { b.feasible = true; b.best = p; }
    if (p >= target && (!b.dual_feasible || c < b.mincost)) { b.dual_feasible = true; b.mincost = c; }
    std::size_t g = 0;
    while (g < n && ++ch[g] == x.off[g + 1] - x.off[g]) ch[g++] = 0;
    if (g == n) break;
  }
  return b;
}

double pick(std::mt19937_64& rng, bool dyadic, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  const double v = u(rng);
  return dyadic ? std::round(v * 8) / 8 : v;
}

Instance random_instance(std::mt19937_64& rng, bool dyadic) {
  Instance x;
  const int n = 1 + static_cast<int>(rng() % 8);
  const int kind = static_cast<int>(rng() % 4);  // 0 plain, 1 few distinct values (ties), 2 zero costs, 3 correlated
  for (int g = 0; g < n; ++g) {
    const int m = 1 + static_cast<int>(rng() % 4);
    for (int j = 0; j < m; ++j) {
      double c = pick(rng, dyadic, 0, 10), p = pick(rng, dyadic, -3, 10);
      if (kind == 1) { c = static_cast<double>(rng() % 3); p = static_cast<double>(rng() % 3) - 1; }
      if (kind == 2 && rng() % 2) c = 0;
      if (kind == 3) p = c + (rng() % 2);
      x.gain.push_back(p);
      x.cost.push_back(c);
    }
    x.off.push_back(static_cast<int64_t>(x.gain.size()));
  }
  return x;
}

double relerr(long double a, long double b) {
  return static_cast<double>(std::fabs(a - b) / std::max<long double>(1, std::fabs(b)));
}

void dump(const Instance& x, double budget, double target) {
  std::printf("%zu\n", x.off.size() - 1);
  for (std::size_t g = 0; g + 1 < x.off.size(); ++g) {
    std::printf("%lld", static_cast<long long>(x.off[g + 1] - x.off[g]));
    for (int64_t i = x.off[g]; i < x.off[g + 1]; ++i) std::printf(" %.17g %.17g", x.gain[i], x.cost[i]);
    std::printf("\n");
  }
  std::printf("# budget %.17g min_gain %.17g\n", budget, target);
}

void check_one(const Instance& x, double budget, double target, const mpq::MckpOptions& opts, int id) {
  const int before = failures;
  struct Dump {  // print failing instances in the mpq-solve file format
    const Instance& x; double b, t; const int& f; int before;
    ~Dump() { if (f > before && f <= 3) dump(x, b, t); }
  } dumper{x, budget, target, failures, before};
  const Brute b = brute(x, budget, target);
  const mpq::MckpResult r = mpq::solve_mckp(x.off, x.gain, x.cost, budget, opts);
  if (!b.feasible) {
    CHECK(r.status == mpq::MckpStatus::kInfeasible, "instance %d: expected infeasible, got %s", id,
          mpq::to_string(r.status));
    CHECK(r.message.find("minimum feasible budget") != std::string::npos, "instance %d: message '%s'", id,
          r.message.c_str());
  } else {
    CHECK(r.status == mpq::MckpStatus::kOptimal, "instance %d: status %s (%s)", id, mpq::to_string(r.status),
          r.message.c_str());
    CHECK(r.choice.size() == x.off.size() - 1, "instance %d: choice size", id);
    if (r.choice.size() == x.off.size() - 1) {
      CHECK(sum_of(x, x.cost, r.choice) <= budget, "instance %d: cost %.17g > budget %.17g", id,
            static_cast<double>(sum_of(x, x.cost, r.choice)), budget);
      CHECK(relerr(sum_of(x, x.gain, r.choice), b.best) <= 1e-9, "instance %d: objective %.17g, brute %.17g", id,
            static_cast<double>(sum_of(x, x.gain, r.choice)), static_cast<double>(b.best));
      CHECK(relerr(r.objective, sum_of(x, x.gain, r.choice)) <= 1e-15, "instance %d: reported objective", id);
    }
    CHECK(r.bound >= r.objective - 1e-12, "instance %d: bound %.17g < objective %.17g", id, r.bound, r.objective);
    CHECK(r.bound + 1e-9 * std::max(1.0, std::fabs(r.bound)) >= static_cast<double>(b.best),
          "instance %d: bound %.17g below the optimum %.17g", id, r.bound, static_cast<double>(b.best));
    const double lp = mpq::mckp_lp_bound(x.off, x.gain, x.cost, budget);
    CHECK(lp + 1e-9 * std::max(1.0, std::fabs(lp)) >= static_cast<double>(b.best), "instance %d: LP below optimum",
          id);
  }
  const mpq::MckpResult d = mpq::solve_mckp_min_cost(x.off, x.gain, x.cost, target, opts);
  if (!b.dual_feasible) {
    CHECK(d.status == mpq::MckpStatus::kInfeasible, "instance %d: dual expected infeasible, got %s", id,
          mpq::to_string(d.status));
  } else {
    CHECK(d.status == mpq::MckpStatus::kOptimal, "instance %d: dual status %s", id, mpq::to_string(d.status));
    if (d.choice.size() == x.off.size() - 1) {
      CHECK(sum_of(x, x.gain, d.choice) >= target, "instance %d: dual gain below target", id);
      CHECK(relerr(sum_of(x, x.cost, d.choice), b.mincost) <= 1e-9, "instance %d: dual cost %.17g, brute %.17g",
            id, static_cast<double>(sum_of(x, x.cost, d.choice)), static_cast<double>(b.mincost));
    }
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(12345);
  int count = 0;
  for (int it = 0; it < 4000; ++it) {
    const bool dyadic = it % 4 != 0;
    const Instance x = random_instance(rng, dyadic);
    const std::size_t n = x.off.size() - 1;
    // budgets: exactly the cost of a random choice (boundary), random, below the minimum
    std::vector<int32_t> ch(n);
    for (std::size_t g = 0; g < n; ++g) ch[g] = static_cast<int32_t>(rng() % (x.off[g + 1] - x.off[g]));
    double exact_c = 0, exact_p = 0;
    for (std::size_t g = 0; g < n; ++g) { exact_c += x.cost[x.off[g] + ch[g]]; exact_p += x.gain[x.off[g] + ch[g]]; }
    // one ulp either side of a choice's exact cost probes the feasibility test (dyadic sums are exact)
    const double side = (rng() % 2) ? std::nextafter(exact_c, 1e300) : std::nextafter(exact_c, -1e300);
    const double budgets[4] = {exact_c, dyadic ? side : exact_c, pick(rng, dyadic, -5, 60), -0.125};
    mpq::MckpOptions opts;
    opts.rel_gap = (it % 2) ? 0.0 : 1e-12;
    for (double b : budgets) check_one(x, b, (rng() % 2) ? exact_p : pick(rng, dyadic, -20, 60), opts, count++);
  }
  std::printf("%d brute-force checks, %d failures\n", count, failures);
  return failures == 0 ? 0 : 1;
}
