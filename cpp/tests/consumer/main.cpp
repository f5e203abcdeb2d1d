// Solves a three-layer precision choice with the installed mpq C++ library; exit 0 iff the known optimum is found.
#include <cstdio>
#include <vector>

#include "mpq/mckp.hpp"

int main() {
  // group g owns items [offsets[g], offsets[g+1]): (gain, cost) of each precision of one layer
  const std::vector<int64_t> offsets{0, 3, 5, 8};
  const std::vector<double> gains{0, 2, 3, /**/ 0, 4, /**/ 0, 1, 5};
  const std::vector<double> costs{0, 1, 4, /**/ 0, 3, /**/ 0, 1, 6};
  mpq::MckpOptions opts;
  opts.time_limit = 10;
  const mpq::MckpResult r = mpq::solve_mckp(offsets, gains, costs, 5.0, opts);
  std::printf("status %s objective %g cost %g bound %g choice %d %d %d\n", mpq::to_string(r.status), r.objective,
              r.cost, r.bound, r.choice[0], r.choice[1], r.choice[2]);
  // best with cost <= 5: items (1, 1, 1) -> gain 2 + 4 + 1 = 7, cost 1 + 3 + 1 = 5
  return r.status == mpq::MckpStatus::kOptimal && r.objective == 7 && r.cost == 5 ? 0 : 1;
}
