// Memory-constrained MCKP (two rows) vs exhaustive enumeration on small random instances, including
// instances where the memory row binds, is slack, or makes the problem infeasible.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mpq/mckp.hpp"

int main() {
  std::mt19937_64 rng(777);
  int failures = 0, checks = 0, binding = 0;
  auto q = [&](double lo, double hi) {  // multiples of 1/8: exact sums
    return std::round(std::uniform_real_distribution<double>(lo, hi)(rng) * 8) / 8;
  };
  for (int it = 0; it < 3000; ++it) {
    const int n = 1 + static_cast<int>(rng() % 7);
    std::vector<int64_t> off{0};
    std::vector<double> p, w, m;
    for (int g = 0; g < n; ++g) {
      const int k = 1 + static_cast<int>(rng() % 4);
      for (int j = 0; j < k; ++j) {
        p.push_back(q(-2, 10));
        w.push_back(rng() % 5 ? q(0, 10) : 0.0);
        m.push_back(rng() % 3 ? q(0, 10) : w.back());  // sometimes memory == cost (correlated rows)
      }
      off.push_back(static_cast<int64_t>(p.size()));
    }
    const double B = q(0, 8.0 * n), M = q(0, 8.0 * n);
    // brute force
    std::vector<int> ch(n, 0);
    bool feas = false, plain_fits = true;
    double best = 0, best_plain = -1e300;
    for (;;) {
      double sp = 0, sw = 0, sm = 0;
      for (int g = 0; g < n; ++g) { sp += p[off[g] + ch[g]]; sw += w[off[g] + ch[g]]; sm += m[off[g] + ch[g]]; }
      if (sw <= B && sm <= M && (!feas || sp > best)) { feas = true; best = sp; }
      if (sw <= B) best_plain = std::max(best_plain, sp);
      int g = 0;
      while (g < n && ++ch[g] == off[g + 1] - off[g]) ch[g++] = 0;
      if (g == n) break;
    }
    if (feas && best_plain > best) { plain_fits = false; ++binding; }
    mpq::MckpOptions o;
    o.rel_gap = 0;
    const mpq::MckpResult r = mpq::solve_mckp_memory(off, p, w, m, B, M, o);
    ++checks;
    bool ok;
    if (!feas) {
      ok = r.status == mpq::MckpStatus::kInfeasible;
    } else {
      double sp = 0, sw = 0, sm = 0;
      for (int g = 0; g < n && r.choice.size() == static_cast<size_t>(n); ++g) {
        sp += p[off[g] + r.choice[g]]; sw += w[off[g] + r.choice[g]]; sm += m[off[g] + r.choice[g]];
      }
      ok = r.status == mpq::MckpStatus::kOptimal && r.choice.size() == static_cast<size_t>(n) && sw <= B &&
           sm <= M && std::fabs(sp - best) <= 1e-9 * std::max(1.0, std::fabs(best)) && r.bound >= best - 1e-9 &&
           r.memory == sm && r.cost == sw;
    }
    if (!ok && ++failures <= 10)
      std::printf("FAIL instance %d: feasible %d best %.17g got status %s objective %.17g bound %.17g (%s)%s\n", it,
                  feas, best, mpq::to_string(r.status), r.objective, r.bound, r.message.c_str(),
                  plain_fits ? "" : " [memory binds]");
  }
  std::printf("%d memory checks (%d with a binding memory row), %d failures\n", checks, binding, failures);
  return failures == 0 && binding > 100 ? 0 : 1;
}
