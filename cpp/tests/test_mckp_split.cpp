// The single solve's increments ordered only around one budget's LP split (order_for_budget), and the bracketed
// preprocessing that stores only the increments near it: solving other budgets on either must fall back to the
// full sort and give the fully sorted preprocessing's answers, and each must hold the LP prefix exactly (same
// split, same lambda, same LP value). Also gain_unit's integer path against a bit scan of every value.
#include "check.hpp"
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mckp/internal.hpp"

using namespace mpq;

namespace {

// The largest power of two dividing every value, by the definition: the lowest set bit of each value's
// significand at its exponent (0 when every value is 0).
double unit_by_bits(const std::vector<double>& v) {
  int lowest = 1 << 20;
  for (double x : v) {
    if (x == 0) continue;
    int e;
    double f = std::frexp(std::fabs(x), &e);  // x = f 2^e, f in [0.5, 1)
    int bit = e;
    while (f != std::floor(f)) { f *= 2; --bit; }  // f 2^bit = |x| with f an odd-or-even integer
    while (std::fmod(f, 2.0) == 0) { f /= 2; ++bit; }
    lowest = std::min(lowest, bit);
  }
  return lowest == (1 << 20) ? 0.0 : std::ldexp(1.0, std::min(lowest, 1000));
}

int gain_unit_checks(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int checks = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t n = 1 + trial * 37 % 3001;  // odd and even lengths, across the 1024-value blocks
    std::vector<double> v(n);
    const int shift = trial % 9 - 2;  // multiples of 2^-2 .. 2^6
    for (auto& x : v) x = std::ldexp(std::round((u(rng) - 0.3) * 1e6), shift);
    if (trial % 5 == 1) v[n - 1] = 0x1p60 * 3;        // beyond 2^52: the bit scan decides
    if (trial % 5 == 2) v[(trial * 7) % n] = 0.375;   // one real value anywhere
    if (trial % 5 == 3) for (auto& x : v) x = 0;      // all zero
    if (trial % 7 == 4) v[0] = -std::ldexp(1.0, -30);
    const double got = detail::gain_unit(Span<const double>(v.data(), v.size()));
    CHECK(got == unit_by_bits(v), "gain_unit trial %d: %g vs %g", trial, got, unit_by_bits(v));
    ++checks;
  }
  return checks;
}

}  // namespace

int main() {
  std::mt19937_64 rng(20);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int bracketed = 0, fell_back = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int n = 200 + 100 * (trial % 40), m = 2 + trial % 7;
    // trials from 40 on: one group in a hundred a thousand times the others' costs, so the sampled bracket
    // misses the split now and then (the fallback)
    const bool skewed = trial >= 40;
    std::vector<int64_t> off(n + 1);
    std::vector<double> g(static_cast<std::size_t>(n) * m), c(g.size());
    double lo = 0, hi = 0;
    for (int i = 0; i < n; ++i) {
      off[i + 1] = off[i] + m;
      const double s = std::exp(3 * u(rng)) * (skewed && i % 100 == 7 ? 1000.0 : 1.0);
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
    const detail::Prepared part = detail::prepare(O, G, Cs, &b1, 0);    // ordered around b1's split
    const detail::Prepared brk = detail::prepare(O, G, Cs, &b1, 1);     // bracketed (or its fallback)
    CHECK(part.incs.size() == full.incs.size());
    CHECK(brk.n_above + brk.incs.size() + brk.n_below == full.incs.size(), "trial %d: increments lost", trial);
    (brk.base_pos.empty() ? fell_back : bracketed)++;
    // the LP at b1 from the partial order and from the bracket equals the fully sorted one
    const double cap = b1 - full.W0;
    const auto kf = std::upper_bound(full.prefW.begin(), full.prefW.end(), cap) - full.prefW.begin() - 1;
    for (const detail::Prepared* q : {&part, &brk}) {
      const auto kq = std::upper_bound(q->prefW.begin(), q->prefW.end(), cap) - q->prefW.begin() - 1;
      const auto ks = kq + static_cast<long>(q->n_above);  // in the full order
      CHECK(kf == ks, "trial %d: split %ld vs %ld", trial, static_cast<long>(kf), static_cast<long>(ks));
      if (kf == ks && static_cast<std::size_t>(kq) < q->incs.size()) {
        CHECK(full.incs[kf].g == q->incs[kq].g && full.incs[kf].k == q->incs[kq].k, "trial %d", trial);
        CHECK(std::fabs(full.prefP[kf] - q->prefP[kq]) <= 1e-12 * full.scale, "trial %d", trial);
      }
    }
    // what pegging reads, against the group's whole hull: at the LP multiplier, each group's best reduced profit,
    // its item and the second best (on the bracket's records where the group has no stored increment)
    if (static_cast<std::size_t>(kf) < full.incs.size()) {
      const double lambda = full.incs[kf].e;
      for (const detail::Prepared* q : {&full, &part, &brk}) {
        for (int64_t grp = 0; grp < n; ++grp) {
          double best = -INFINITY, next = -INFINITY;
          int32_t at = -1;
          for (int64_t h = q->hoff[grp]; h < q->hoff[grp + 1]; ++h) {
            const int64_t i = off[grp] + q->hull[h];
            const double rr = g[i] - lambda * c[i];
            if (rr > best) { next = best; best = rr; at = q->hull[h]; }
            else if (rr > next) next = rr;
          }
          if (q->poff[grp + 1] - q->poff[grp] != q->hoff[grp + 1] - q->hoff[grp]) next = INFINITY;
          const detail::BestTwo b = detail::best_two(*q, grp, lambda);
          const double tol = 1e-12 * (std::fabs(best) + lambda * (std::fabs(c[off[grp]]) + c[off[grp + 1] - 1]) + 1);
          CHECK(b.at == at && std::fabs(b.best - best) <= tol, "trial %d group %ld: best %d %.17g, hull's %d %.17g",
                trial, static_cast<long>(grp), b.at, b.best, at, best);
          CHECK(std::isinf(next) ? b.second == next : std::fabs(b.second - next) <= tol,
                "trial %d group %ld: second best %.17g vs %.17g", trial, static_cast<long>(grp), b.second, next);
        }
      }
    }
    // b1 itself and budgets near it (inside the bracket), and far from it (the fallback to a full sort), on the
    // partial order and the bracket: the full sort's optimum
    MckpOptions opts;
    const double f1 = (b1 - lo) / (hi - lo);
    for (double f : {f1, f1 * 0.999, f1 * 1.001, f1 * 0.98, 0.0, 0.01, 0.3, 0.6, 0.97, 1.0, 2.0}) {
      const double b = f == f1 ? b1 : lo + f * (hi - lo);
      const MckpResult a = detail::solve_verified(full, b, opts, {}, detail::Clock::now());
      for (const detail::Prepared* q : {&part, &brk}) {
        const MckpResult p = detail::solve_verified(*q, b, opts, {}, detail::Clock::now());
        CHECK(a.status == MckpStatus::kOptimal && p.status == MckpStatus::kOptimal, "trial %d f %g", trial, f);
        CHECK(std::fabs(a.objective - p.objective) <= 1e-9 * std::fabs(a.objective) + 1e-12 * full.scale,
              "trial %d f %g: %.17g vs %.17g", trial, f, a.objective, p.objective);
        CHECK(detail::compare_sum(O, Cs, p.choice, b) <= 0, "trial %d f %g: over budget", trial, f);
      }
    }
  }
  // both of the bracketed preprocessing's outcomes were exercised
  CHECK(bracketed > 20 && fell_back > 0, "bracketed %d, fell back %d", bracketed, fell_back);
  const int units = gain_unit_checks(rng);
  std::printf("%s (%d bracketed, %d fallbacks, %d gain_unit checks; %d failures)\n", failures ? "FAILED" : "ok",
              bracketed, fell_back, units, failures);
  return failures ? 1 : 0;
}
