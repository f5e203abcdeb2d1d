// Exact search of the memory-constrained MCKP once multipliers are known: surrogate pegging, then a Pareto-state
// DP over the core with 3-D dominance (cost <=, memory <=, gain >=), pruned by the surrogate residual LP. Called by
// solve_mckp_memory (memory.cpp); docs/cpp-core.md, "The memory-constrained variant", step 4.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <numeric>

#include "mckp/internal.hpp"

namespace mpq::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Row {  // one item of the 2-row problem
  double p, w, m, s;  // gain, cost, memory, surrogate weight w + mu*m
  int32_t idx;        // original index in the group
};

}  // namespace

MckpResult solve_two_row_core(const TwoRowInput& in, double mu, double lambda, double upper, double z,
                              std::vector<int32_t> best) {
  const Span<const int64_t>& offsets = in.offsets;
  const Span<const double>&gains = in.gains, &costs = in.costs, &memory = in.memory;
  const double budget = in.budget, max_memory = in.max_memory;
  const MckpOptions& opts = in.opts;
  const auto start = in.start;
  const int64_t n = static_cast<int64_t>(offsets.size) - 1;
  const double scap = budget + mu * max_memory;
  MckpResult r;
  auto done = [](MckpResult& x) -> MckpResult { return x; };  // the caller adds memory and seconds
  const double tol = 1e-12 * in.scale;
  auto threshold = [&] { return z == kNegInf ? kNegInf : z + std::max(opts.rel_gap * std::fabs(z), tol); };
  std::vector<std::vector<Row>> grp(n);
  std::vector<double> rmax(n);
  double U_L = lambda * scap;
  for (int64_t g = 0; g < n; ++g) {
    std::vector<Row>& rows = grp[g];
    for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i)
      rows.push_back({gains[i], costs[i], memory[i], costs[i] + mu * memory[i],
                      static_cast<int32_t>(i - offsets[g])});
    // 3-D dominance (gain >=, cost <=, memory <=); ties keep the lower index
    std::vector<Row> keep;
    if (rows.size() <= 512) {
      for (std::size_t a = 0; a < rows.size(); ++a) {
        bool dominated = false;
        for (std::size_t b = 0; b < rows.size() && !dominated; ++b) {
          if (a == b) continue;
          const Row &x = rows[a], &y = rows[b];
          const bool ge = y.p >= x.p && y.w <= x.w && y.m <= x.m;
          const bool strict = y.p > x.p || y.w < x.w || y.m < x.m;
          dominated = ge && (strict || b < a);
        }
        if (!dominated) keep.push_back(rows[a]);
      }
      rows.swap(keep);
    }
    double best_r = kNegInf;
    for (const Row& x : rows) best_r = std::max(best_r, x.p - lambda * x.s);
    rmax[g] = best_r;
    U_L += best_r;
  }
  upper = std::min(upper, U_L);
  double pruned_max = kNegInf;
  std::vector<int64_t> core;
  std::vector<double> amb(n, 0);
  std::vector<int32_t> fixed(n, -1);
  double Pf = 0, Wf = 0, Mf = 0;
  for (int64_t g = 0; g < n; ++g) {
    std::vector<Row> surv;
    const double th = threshold();
    double b1 = kNegInf, b2 = kNegInf;
    for (const Row& x : grp[g]) {
      const double rr = x.p - lambda * x.s, Ug = U_L - (rmax[g] - rr);
      if (Ug < th) { pruned_max = std::max(pruned_max, Ug); continue; }
      surv.push_back(x);
      if (rr > b1) { b2 = b1; b1 = rr; } else if (rr > b2) b2 = rr;
    }
    if (surv.empty()) {  // every item of g is pegged out: the incumbent is proven
      r.choice = best;
      r.objective = z;
      r.cost = detail::exact_sum(offsets, costs, best);
      r.status = MckpStatus::kOptimal;
      r.bound = std::max(z, std::min(upper, pruned_max));
      return done(r);
    }
    std::sort(surv.begin(), surv.end(), [&](const Row& a, const Row& b) {  // most promising first
      const double ra = a.p - lambda * a.s, rb = b.p - lambda * b.s;
      return ra != rb ? ra > rb : a.idx < b.idx;
    });
    grp[g].swap(surv);
    if (grp[g].size() == 1) {
      fixed[g] = grp[g][0].idx;
      Pf += grp[g][0].p; Wf += grp[g][0].w; Mf += grp[g][0].m;
    } else {
      core.push_back(g);
      amb[g] = b1 - b2;
    }
  }
  std::stable_sort(core.begin(), core.end(), [&](int64_t a, int64_t b) { return amb[a] < amb[b]; });
  const int L = static_cast<int>(core.size());
  r.core_groups = L;
  // surrogate hull increments of the core survivors, sorted once
  std::vector<detail::Inc> incs;
  std::vector<double> baseS(L + 1, 0), baseP(L + 1, 0), minW(L + 1, 0), minM(L + 1, 0);
  for (int l = L - 1; l >= 0; --l) {
    std::vector<Row> h(grp[core[l]]);
    std::sort(h.begin(), h.end(), [](const Row& a, const Row& b) { return a.s != b.s ? a.s < b.s : a.p > b.p; });
    std::vector<Row> par, hull;
    for (const Row& x : h) if (par.empty() || x.p > par.back().p) par.push_back(x);
    for (const Row& c : par) {
      while (hull.size() >= 2) {
        const Row &a = hull[hull.size() - 2], &b = hull.back();
        if ((b.p - a.p) * (c.s - b.s) <= (c.p - b.p) * (b.s - a.s)) hull.pop_back(); else break;
      }
      hull.push_back(c);
    }
    for (std::size_t k = 1; k < hull.size(); ++k) {
      const double dp = hull[k].p - hull[k - 1].p, dw = hull[k].s - hull[k - 1].s;
      double e = dp / dw;
      if (k > 1 && e > incs.back().e) e = incs.back().e;  // rounding must not reorder a hull
      incs.push_back({dp, dw, e, l, static_cast<int32_t>(k)});
    }
    double mw = grp[core[l]][0].w, mm = grp[core[l]][0].m;
    for (const Row& x : grp[core[l]]) { mw = std::min(mw, x.w); mm = std::min(mm, x.m); }
    baseS[l] = baseS[l + 1] + hull[0].s;
    baseP[l] = baseP[l + 1] + hull[0].p;
    minW[l] = minW[l + 1] + mw;
    minM[l] = minM[l + 1] + mm;
  }
  std::sort(incs.begin(), incs.end(), [](const detail::Inc& a, const detail::Inc& b) {
    return a.e != b.e ? a.e > b.e : (a.g != b.g ? a.g < b.g : a.k < b.k);
  });
  std::vector<std::vector<int32_t>> lpos(L);
  detail::Fenwick fw;
  fw.build(incs);
  for (std::size_t t = 0; t < incs.size(); ++t) {
    lpos[incs[t].g].push_back(static_cast<int32_t>(t));
  }
  auto toggle = [&](int l, double sign) {
    for (int32_t t : lpos[l]) fw.add(t, sign * incs[t].dw, sign * incs[t].dp);
  };
  // float slack for the row checks: leaves are verified exactly, so inner tests must not cut the boundary
  double msum = 0;
  for (int64_t g = 0; g < n; ++g) {
    double hi = 0;
    for (const Row& x : grp[g]) hi = std::max(hi, x.m);
    msum += hi;
  }
  const double eps_w = 1e-12 * (std::fabs(budget) + in.wmax), eps_m = 1e-12 * (std::fabs(max_memory) + msum);
  auto node_bound = [&](int d, double p, double w, double m) {
    if (w + minW[d] > budget - Wf + eps_w || m + minM[d] > max_memory - Mf + eps_m) return kNegInf;
    const double cap = std::max(0.0, scap - Wf - mu * Mf - (w + mu * m) - baseS[d] + eps_w + mu * eps_m);
    double sw, sp;
    const int at = fw.descend(cap, sw, sp);
    double v = Pf + p + baseP[d] + sp;
    if (at < static_cast<int>(incs.size())) v += std::max(0.0, cap - sw) * incs[at].e;
    return v;
  };
  // Pareto-state DP over the core levels with 3-D dominance (cost <=, memory <=, gain >=), pruned by the
  // surrogate residual LP: the scheme of the MCKP core DP (core_dp.cpp) with one more coordinate. The tree
  // holds exactly the levels not merged yet.
  struct St {
    double c, m, g;  // cost, memory, gain of the core levels merged so far
    int32_t parent, item;
  };
  std::vector<std::vector<std::pair<int32_t, int32_t>>> bp(L + 1);
  std::vector<St> cur{{0, 0, 0, -1, -1}}, buf;
  std::vector<double> bnd;
  bool limited = false;
  int64_t nodes = 0, kept_total = 0;
  const int64_t level_cap = std::max<int64_t>(1000, opts.max_states / 4);
  for (int l = 0; l <= L; ++l) {
    bnd.clear();
    std::size_t keep = 0;
    for (std::size_t s = 0; s < cur.size(); ++s) {
      const St& x = cur[s];
      const double b = node_bound(l, x.g, x.c, x.m);
      if (b == kNegInf) continue;  // cannot meet a row
      if (l == L && Pf + x.g > z) {  // complete: check both rows exactly
        std::vector<int32_t> ch(fixed);
        if (L > 0) {
          ch[core[L - 1]] = grp[core[L - 1]][x.item].idx;
          int32_t q = x.parent;
          for (int lev = L - 1; lev >= 1; --lev) {
            ch[core[lev - 1]] = grp[core[lev - 1]][bp[lev][q].second].idx;
            q = bp[lev][q].first;
          }
        }
        if (detail::compare_sum(offsets, costs, ch, budget) <= 0 &&
            detail::compare_sum(offsets, memory, ch, max_memory) <= 0) {
          const double v = detail::exact_sum(offsets, gains, ch);
          if (v > z) { z = v; best = ch; }
        }
        continue;
      }
      if (b < threshold()) { pruned_max = std::max(pruned_max, b); continue; }
      cur[keep++] = x;
      bnd.push_back(b);
    }
    cur.resize(keep);
    if (l == L || cur.empty()) break;
    const auto& rows = grp[core[l]];
    const int64_t m_l = static_cast<int64_t>(rows.size());
    if (opts.time_limit > 0 && detail::seconds_since(start) > opts.time_limit) {
      for (double b : bnd) pruned_max = std::max(pruned_max, b);
      limited = true;
      break;
    }
    if (!limited && (kept_total + static_cast<int64_t>(cur.size()) * m_l > opts.max_states ||
                     static_cast<int64_t>(cur.size()) * m_l > level_cap || nodes > opts.max_nodes))
      limited = true;
    if (limited && static_cast<int64_t>(cur.size()) > opts.beam_width) {  // keep the best bounds
      keep_best(cur, bnd, opts.beam_width, pruned_max);
    }
    if (l > 0) {
      bp[l].resize(cur.size());
      for (std::size_t s = 0; s < cur.size(); ++s) bp[l][s] = {cur[s].parent, cur[s].item};
      kept_total += static_cast<int64_t>(cur.size());
    }
    buf.clear();
    for (std::size_t s = 0; s < cur.size(); ++s)
      for (int64_t j = 0; j < m_l; ++j) {
        const St& x = cur[s];
        const Row& it = rows[j];
        if (x.c + it.w + minW[l + 1] > budget - Wf + eps_w || x.m + it.m + minM[l + 1] > max_memory - Mf + eps_m)
          continue;
        buf.push_back({x.c + it.w, x.m + it.m, x.g + it.p, static_cast<int32_t>(s), static_cast<int32_t>(j)});
      }
    nodes += static_cast<int64_t>(buf.size());
    std::sort(buf.begin(), buf.end(), [](const St& a, const St& b) {
      if (a.c != b.c) return a.c < b.c;
      if (a.m != b.m) return a.m < b.m;
      if (a.g != b.g) return a.g > b.g;
      return a.parent != b.parent ? a.parent < b.parent : a.item < b.item;
    });
    // 3-D dominance: in cost order, drop a state if a kept one has memory <= and gain >= (staircase mem -> gain)
    std::map<double, double> stair;
    cur.clear();
    for (const St& x : buf) {
      auto it = stair.upper_bound(x.m);
      if (it != stair.begin() && std::prev(it)->second >= x.g) continue;
      while (it != stair.end() && it->second <= x.g) it = stair.erase(it);
      stair[x.m] = x.g;
      cur.push_back(x);
    }
    toggle(l, -1);
  }
  r.nodes += nodes;
  // a limit that only cut states which cannot beat the incumbent still proves optimality
  const bool proven = !limited || pruned_max < threshold();
  const char* why = "state, node or time limit reached";
  if (best.empty()) {
    r.status = proven ? MckpStatus::kInfeasible : MckpStatus::kLimit;
    r.bound = proven ? kNegInf : std::min(upper, pruned_max);
    r.message = proven ? "no choice satisfies both the budget and max_memory"
                       : std::string(why) + " before a solution fitting both rows was found";
    return done(r);
  }
  r.choice = best;
  r.objective = z;
  r.cost = detail::exact_sum(offsets, costs, best);
  r.status = proven ? MckpStatus::kOptimal : MckpStatus::kLimit;
  r.bound = std::max(z, std::min(upper, pruned_max));
  if (!proven) r.message = why;
  return done(r);
}

}  // namespace mpq::detail
