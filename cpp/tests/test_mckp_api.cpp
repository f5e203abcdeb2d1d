// MCKP C++ API contract: errors name the group, infeasible budgets report the minimum, sweeps are monotone and
// match single solves, limits end early with a valid bound, results are deterministic.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpq/mckp.hpp"

namespace {
int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) { ++failures; std::printf("FAIL: %s\n", what); }
}
template <class F>
void expect_invalid(F f, const std::string& needle) {
  try {
    f();
    check(false, ("no exception, expected: " + needle).c_str());
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("FAIL: message '%s' lacks '%s'\n", e.what(), needle.c_str());
      ++failures;
    }
  }
}
}  // namespace

int main() {
  using V = std::vector<double>;
  using O = std::vector<int64_t>;
  check(std::string(mpq::to_string(mpq::MckpStatus::kOptimal)) == "optimal", "to_string optimal");
  check(std::string(mpq::to_string(mpq::MckpStatus::kInfeasible)) == "infeasible", "to_string infeasible");
  check(std::string(mpq::to_string(mpq::MckpStatus::kLimit)) == "limit", "to_string limit");
  check(static_cast<int>(mpq::MckpStatus::kLimit) == 3, "status values are the CLI exit codes");

  // (mpq::Span binds to named containers only, so every argument gets a name)
  const O off{0, 2, 3}, off_empty{0, 2, 2};
  const V p3{1, 1, 2}, p_nan{1, NAN, 2}, c3{0, 1, 1}, c_inf{0, 1, INFINITY}, c_neg{0, 1, -1}, c2{0, 1};
  expect_invalid([&] { mpq::solve_mckp(off, p_nan, c3, 5); }, "gain of item 1 in group 0 is nan");
  expect_invalid([&] { mpq::solve_mckp(off, p3, c_inf, 5); }, "cost of item 0 in group 1 is inf");
  expect_invalid([&] { mpq::solve_mckp(off, p3, c_neg, 5); }, "in group 1 is negative");
  expect_invalid([&] { mpq::solve_mckp(off_empty, c2, c2, 5); }, "group 1 is empty");
  expect_invalid([&] { mpq::solve_mckp(off, p3, c2, 5); }, "gains has 3 values but costs has 2");
  expect_invalid([&] { mpq::solve_mckp(off, p3, c3, NAN); }, "budget is nan");
  mpq::MckpOptions bad;
  bad.rel_gap = -1;
  expect_invalid([&] { mpq::solve_mckp(off, p3, c3, 5, bad); }, "rel_gap must be in [0, 1)");

  const V pi{1, 2, 3}, ci{0.5, 1, 2.25};
  const mpq::MckpResult inf = mpq::solve_mckp(off, pi, ci, 1.0);
  check(inf.status == mpq::MckpStatus::kInfeasible && inf.choice.empty(), "infeasible status");
  check(inf.message.find("minimum feasible budget 2.75") != std::string::npos, "infeasible message names 2.75");

  // a random llm-like instance: sweep == single solves, monotone, below the LP bound
  std::mt19937_64 rng(5);
  std::lognormal_distribution<double> ln(0, 1.5);
  O o{0};
  V g, c;
  for (int i = 0; i < 300; ++i) {
    const double s = ln(rng), size = 1 + (rng() % 7);
    for (int j = 0; j < 6; ++j) {
      g.push_back(j == 0 ? 0 : size * (1 - 0.15 * j) * (0.9 + 0.2 * (rng() % 1000) / 1000.0));
      c.push_back(j == 0 ? 0 : s * std::pow(4.0, j) * (0.9 + 0.2 * (rng() % 1000) / 1000.0));
    }
    o.push_back(static_cast<int64_t>(g.size()));
  }
  double cmax = 0;
  for (int i = 0; i < 300; ++i) cmax += c[o[i + 1] - 1];
  V budgets;
  for (int k = 0; k < 40; ++k) budgets.push_back(cmax * (39 - k) / 39.0 * 0.5);  // descending on purpose
  const auto sw = mpq::sweep_mckp(o, g, c, budgets);
  double prev = INFINITY;
  for (std::size_t k = 0; k < budgets.size(); ++k) {
    const mpq::MckpResult one = mpq::solve_mckp(o, g, c, budgets[k]);
    check(sw[k].status == mpq::MckpStatus::kOptimal && one.status == mpq::MckpStatus::kOptimal, "sweep optimal");
    check(std::fabs(sw[k].objective - one.objective) <= 1e-9 * std::fabs(one.objective), "sweep == single");
    check(sw[k].objective <= prev, "sweep objective non-increasing as budgets shrink");
    check(sw[k].cost <= budgets[k], "sweep cost within budget");
    check(sw[k].objective <= mpq::mckp_lp_bound(o, g, c, budgets[k]) * (1 + 1e-12) + 1e-12, "below LP bound");
    check(one.choice == mpq::solve_mckp(o, g, c, budgets[k]).choice, "deterministic");
    prev = sw[k].objective;
  }

  // subset-sum-like (gain == cost): a time limit ends the search early with incumbent and valid bound
  O ho{0};
  V hg, hc;
  std::uniform_real_distribution<double> u(1, 1000);
  for (int i = 0; i < 400; ++i) {
    for (int j = 0; j < 6; ++j) { const double w = j == 0 ? 0 : u(rng); hg.push_back(w); hc.push_back(w); }
    ho.push_back(static_cast<int64_t>(hg.size()));
  }
  mpq::MckpOptions lim;
  lim.time_limit = 0.2;
  lim.rel_gap = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const mpq::MckpResult h = mpq::solve_mckp(ho, hg, hc, 400 * 300.0, lim);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  check(secs < 3.0, "time limit respected");
  check(!h.choice.empty() && h.cost <= 400 * 300.0 && h.bound >= h.objective, "limit keeps incumbent and bound");
  check(h.bound <= mpq::mckp_lp_bound(ho, hg, hc, 400 * 300.0) * (1 + 1e-12), "limit bound <= LP bound");

  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
