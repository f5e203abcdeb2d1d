// The single solve's increments ordered only around one budget's LP split (order_for_budget): solving other
// budgets on that order must fall back to the full sort and give the fully sorted preprocessing's answers, and
// the order itself must hold the LP prefix exactly (same split, same lambda, same LP value).
#include "check.hpp"
#include <cmath>
#include <random>
#include <vector>

#include "mckp/internal.hpp"

using namespace mpq;

int main() {
  std::mt19937_64 rng(20);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 200 + 150 * trial, m = 2 + trial % 7;
    std::vector<int64_t> off(n + 1);
    std::vector<double> g(static_cast<std::size_t>(n) * m), c(g.size());
    double lo = 0, hi = 0;
    for (int i = 0; i < n; ++i) {
      off[i + 1] = off[i] + m;
      const double s = std::exp(3 * u(rng));
      for (int j = 0; j < m; ++j) {
        c[i * m + j] = j == 0 ? 0.0 : s * std::pow(4.0, j) * (0.8 + 0.4 * u(rng));
        // a third of the trials integer gains (unit pruning), the rest real, some negative
        const double p = 100 * j * (0.5 + u(rng)) - (j ? 5 * u(rng) : 0);
        g[i * m + j] = trial % 3 == 0 ? std::round(p) : p;
      }
      lo += c[i * m];
      hi += c[i * m + m - 1];
    }
    const Span<const int64_t> O(off.data(), off.size());
    const Span<const double> G(g.data(), g.size()), Cs(c.data(), c.size());
    const detail::Prepared full = detail::prepare(O, G, Cs);
    const double b1 = lo + (0.05 + 0.9 * u(rng)) * (hi - lo);
    const detail::Prepared part = detail::prepare(O, G, Cs, &b1);
    CHECK(part.incs.size() == full.incs.size());
    // the LP at b1 from the partial order equals the fully sorted one
    const double cap = b1 - full.W0;
    const auto kf = std::upper_bound(full.prefW.begin(), full.prefW.end(), cap) - full.prefW.begin() - 1;
    const auto kp = std::upper_bound(part.prefW.begin(), part.prefW.end(), cap) - part.prefW.begin() - 1;
    CHECK(kf == kp, "trial %d: split %ld vs %ld", trial, static_cast<long>(kf), static_cast<long>(kp));
    if (kf == kp && static_cast<std::size_t>(kf) < full.incs.size()) {
      CHECK(full.incs[kf].g == part.incs[kp].g && full.incs[kf].k == part.incs[kp].k, "trial %d", trial);
      CHECK(std::fabs(full.prefP[kf] - part.prefP[kp]) <= 1e-12 * full.scale, "trial %d", trial);
    }
    // every budget, near and far from b1, on the partial order: the full sort's optimum
    MckpOptions opts;
    for (double f : {0.0, 0.01, 0.3, 0.6, 0.97, 1.0, 2.0}) {
      const double b = lo + f * (hi - lo);
      const MckpResult a = detail::solve_verified(full, b, opts, {}, detail::Clock::now());
      const MckpResult p = detail::solve_verified(part, b, opts, {}, detail::Clock::now());
      CHECK(a.status == MckpStatus::kOptimal && p.status == MckpStatus::kOptimal, "trial %d f %g", trial, f);
      CHECK(std::fabs(a.objective - p.objective) <= 1e-9 * std::fabs(a.objective) + 1e-12 * full.scale,
            "trial %d f %g: %.17g vs %.17g", trial, f, a.objective, p.objective);
      CHECK(detail::compare_sum(O, Cs, p.choice, b) <= 0, "trial %d f %g: over budget", trial, f);
    }
  }
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
