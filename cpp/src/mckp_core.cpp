// One budget on a prepared instance: LP by sorted increments, greedy incumbent, Lagrangian pegging, then a
// Pareto-state DP over the core groups pruned by the exact residual-LP bound (research/solver.md §5.1, steps 2-5).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "mckp_internal.hpp"

namespace mpq::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct State {
  double c, g;     // core cost, total gain so far (fixed groups included)
  int32_t parent;  // index in the previous level's kept list
  int32_t item;    // survivor index within the merged group
};

struct Record {    // where the best rounding solution came from, rebuilt only once at the end
  int level = -1;
  int32_t parent = -1, item = -1;
  double cap = 0;
};

// Upper concave hull of items sorted by cost (strictly increasing cost and gain); appends positions to `h`.
void hull_of(const Item* items, int32_t m, std::vector<int32_t>& h) {
  const std::size_t h0 = h.size();
  for (int32_t k = 0; k < m; ++k) {
    const Item& c = items[k];
    while (h.size() >= h0 + 2) {
      const Item& a = items[h[h.size() - 2]];
      const Item& b = items[h.back()];
      if ((b.p - a.p) * (c.w - b.w) <= (c.p - b.p) * (b.w - a.w)) h.pop_back();
      else break;
    }
    h.push_back(k);
  }
}

}  // namespace

MckpResult solve_prepared(const Prepared& pr, double C, const MckpOptions& opts,
                          const std::vector<int32_t>& hint, Clock::time_point start) {
  MckpResult r;
  const int64_t n = pr.n;
  if (pr.W0exact.compare(C) > 0) {
    r.status = MckpStatus::kInfeasible;
    r.bound = kNegInf;
    r.message = "budget " + fmt(C) + " is below the minimum feasible budget " + fmt(pr.W0exact.round_up()) +
                " (the cheapest item of every group)";
    return r;
  }
  auto orig = [&](int64_t g, int32_t pareto_pos) { return pr.pareto[pr.poff[g] + pareto_pos].idx; };
  auto hull_item = [&](int64_t g, int32_t k) { return orig(g, pr.hull[pr.hoff[g] + k]); };

  // LP: the whole increments that fit, then the split increment.
  const double cap = std::max(0.0, C - pr.W0);
  const std::size_t N = pr.incs.size();
  std::size_t k = static_cast<std::size_t>(
      std::upper_bound(pr.prefW.begin(), pr.prefW.end(), cap) - pr.prefW.begin() - 1);
  std::vector<int32_t> pos(n, 0);
  auto prefix_choice = [&](std::size_t kk) {  // LP rounding: the first kk increments, an integral solution
    std::fill(pos.begin(), pos.end(), 0);
    for (std::size_t t = 0; t < kk; ++t) pos[pr.incs[t].g] = pr.incs[t].k;
    for (int64_t g = 0; g < n; ++g) r.choice[g] = hull_item(g, pos[g]);
  };
  r.choice.resize(n);
  prefix_choice(k);
  // the float prefix sums may put k one past the exact boundary; k = 0 is feasible (checked above)
  while (k > 0 && compare_sum(pr.offsets, pr.costs, r.choice, C) > 0) prefix_choice(--k);
  if (k == N) {  // everything fits: every group takes its best item, the LP is integral
    evaluate_choice(pr, r);
    r.status = MckpStatus::kOptimal;
    r.bound = r.objective;
    return r;
  }
  const double lambda = pr.incs[k].e;
  const double U_lp = pr.P0 + pr.prefP[k] + (cap - pr.prefW[k]) * lambda;

  // Incumbent: LP rounding plus greedy continuation (freeze a group at its first increment that does not fit).
  {
    double used = pr.W0 + pr.prefW[k];
    std::vector<char> frozen(n, 0);
    for (std::size_t t = k; t < N; ++t) {
      const Inc& in = pr.incs[t];
      if (frozen[in.g]) continue;
      if (used + in.dw <= C) { used += in.dw; pos[in.g] = in.k; }
      else frozen[in.g] = 1;
    }
    for (int64_t g = 0; g < n; ++g) r.choice[g] = hull_item(g, pos[g]);
    if (compare_sum(pr.offsets, pr.costs, r.choice, C) > 0) prefix_choice(k);  // rounding in `used`
    evaluate_choice(pr, r);
    if (static_cast<int64_t>(hint.size()) == n && compare_sum(pr.offsets, pr.costs, hint, C) <= 0) {
      MckpResult h;
      h.choice = hint;
      evaluate_choice(pr, h);
      if (h.objective > r.objective) { r.choice = hint; r.objective = h.objective; r.cost = h.cost; }
    }
  }
  double z = r.objective;
  const double tol = 1e-12 * pr.scale;
  auto threshold = [&] { return z + std::max(opts.rel_gap * std::fabs(z), tol); };

  // Lagrangian pegging with lambda: forcing item j of group g costs (rmax_g - r_gj) of the bound.
  std::vector<double> rmax(n);
  double U_L = lambda * C;
  for (int64_t g = 0; g < n; ++g) {
    double best = kNegInf;
    for (int64_t i = pr.poff[g]; i < pr.poff[g + 1]; ++i) best = std::max(best, pr.pareto[i].p - lambda * pr.pareto[i].w);
    rmax[g] = best;
    U_L += best;
  }
  const double U_root = std::min(U_lp, U_L);
  double pruned_max = kNegInf;  // largest bound of anything discarded by a bound test
  auto finish_optimal = [&] {
    r.status = MckpStatus::kOptimal;
    r.bound = std::max(r.objective, std::min(U_root, pruned_max));
    r.seconds = seconds_since(start);
    return r;
  };
  if (U_root <= threshold()) { pruned_max = U_root; return finish_optimal(); }

  std::vector<int64_t> coff{0};       // CSR of the core groups' surviving items
  std::vector<Item> citems;
  std::vector<int64_t> core_g;        // group of each core level
  std::vector<double> ambiguity;      // best minus second-best reduced profit among survivors
  std::vector<int32_t> fixed(n, -1);  // original item of groups reduced to one survivor
  double Wfix = 0, Pfix = 0;
  {
    const double th = threshold();
    std::vector<Item> surv;
    for (int64_t g = 0; g < n; ++g) {
      surv.clear();
      double b1 = kNegInf, b2 = kNegInf;  // two best reduced profits among survivors
      for (int64_t i = pr.poff[g]; i < pr.poff[g + 1]; ++i) {
        const Item& it = pr.pareto[i];
        const double rr = it.p - lambda * it.w;
        const double Ug = U_L - (rmax[g] - rr);
        if (Ug < th) { pruned_max = std::max(pruned_max, Ug); continue; }
        surv.push_back(it);
        if (rr > b1) { b2 = b1; b1 = rr; }
        else if (rr > b2) b2 = rr;
      }
      if (surv.empty()) return finish_optimal();  // every item of g is pegged out: the incumbent is proven
      if (surv.size() == 1) {
        fixed[g] = surv[0].idx;
        Wfix += surv[0].w;
        Pfix += surv[0].p;
        continue;
      }
      core_g.push_back(g);
      ambiguity.push_back(b1 - b2);
      citems.insert(citems.end(), surv.begin(), surv.end());
      coff.push_back(static_cast<int64_t>(citems.size()));
    }
  }
  const int L = static_cast<int>(core_g.size());
  r.core_groups = L;

  // Most ambiguous groups first (ties by group index): their choice is the one the LP cannot settle.
  std::vector<int> order(L);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ambiguity[a] < ambiguity[b]; });
  std::vector<int64_t> lg(L), loff(L + 1, 0);
  std::vector<Item> litems;
  litems.reserve(citems.size());
  for (int l = 0; l < L; ++l) {
    const int c = order[l];
    lg[l] = core_g[c];
    litems.insert(litems.end(), citems.begin() + coff[c], citems.begin() + coff[c + 1]);
    loff[l + 1] = static_cast<int64_t>(litems.size());
  }
  // Hull increments of the survivors, per level, sorted once; removed from the Fenwick tree level by level.
  std::vector<Inc> cincs;
  std::vector<int32_t> lhull;          // CSR: level l's hull positions are lhull[lhoff[l], lhoff[l+1])
  std::vector<int64_t> lhoff(L + 1, 0);
  for (int l = 0; l < L; ++l) {
    const Item* its = litems.data() + loff[l];
    hull_of(its, static_cast<int32_t>(loff[l + 1] - loff[l]), lhull);
    lhoff[l + 1] = static_cast<int64_t>(lhull.size());
    for (int64_t h = lhoff[l] + 1; h < lhoff[l + 1]; ++h) {
      const Item& u = its[lhull[h - 1]];
      const Item& v = its[lhull[h]];
      double e = (v.p - u.p) / (v.w - u.w);
      if (h > lhoff[l] + 1 && e > cincs.back().e) e = cincs.back().e;
      cincs.push_back({v.p - u.p, v.w - u.w, e, l, static_cast<int32_t>(h - lhoff[l])});
    }
  }
  sort_by_efficiency(cincs);  // built in (level, k) order
  const int M = static_cast<int>(cincs.size());
  std::vector<int32_t> lpos(M);         // CSR: level l's increments sit at lpos[lpoff[l], lpoff[l+1])
  std::vector<int32_t> lpoff(L + 1, 0);
  for (int t = 0; t < M; ++t) ++lpoff[cincs[t].g + 1];
  for (int l = 0; l < L; ++l) lpoff[l + 1] += lpoff[l];
  {
    std::vector<int32_t> fill(lpoff.begin(), lpoff.end() - 1);
    for (int t = 0; t < M; ++t) lpos[fill[cincs[t].g]++] = t;
  }
  std::vector<char> active(M, 1);
  Fenwick fw;
  fw.build(cincs);
  std::vector<double> baseW(L + 1, 0), baseP(L + 1, 0);  // cheapest survivors of levels l..L-1
  for (int l = L - 1; l >= 0; --l) {
    baseW[l] = baseW[l + 1] + litems[loff[l]].w;
    baseP[l] = baseP[l + 1] + litems[loff[l]].p;
  }
  const double Cp = C - Wfix;

  // Pareto-state DP. bp[l] holds (parent, item) of the states kept before merging level l.
  std::vector<std::vector<std::pair<int32_t, int32_t>>> bp(L + 1);
  std::vector<State> cur{{0.0, Pfix, -1, -1}}, buf, buf2;
  std::vector<double> lp;
  std::vector<int64_t> runs;
  // Full choice (original indices) for a state of level l given by its (parent, item), completed greedily.
  auto rebuild = [&](int l, int32_t parent, int32_t item, double capR) {
    std::vector<int32_t> lchoice(L, -1);
    if (l > 0) {
      lchoice[l - 1] = item;
      int32_t s = parent;
      for (int lev = l - 1; lev >= 1; --lev) {
        lchoice[lev - 1] = bp[lev][s].second;
        s = bp[lev][s].first;
      }
    }
    std::vector<int32_t> hp(L, 0);
    double used = 0;
    for (int t = 0; t < M; ++t) {
      if (cincs[t].g < l) continue;
      if (used + cincs[t].dw > capR) break;
      used += cincs[t].dw;
      hp[cincs[t].g] = cincs[t].k;
    }
    for (int q = l; q < L; ++q) lchoice[q] = lhull[lhoff[q] + hp[q]];
    std::vector<int32_t> ch(fixed);
    for (int q = 0; q < L; ++q) ch[lg[q]] = litems[loff[q] + lchoice[q]].idx;
    return ch;
  };
  // A float cost this close to the budget may round either way: such candidates are checked exactly.
  const double near = 1e-13 * (std::fabs(C) + pr.Wmax);
  Record rec;
  bool limited = false;
  int64_t kept_total = 0;
  const int64_t level_cap = std::max<int64_t>(1000, opts.max_states / 4);
  int stop_level = L;
  for (int l = 0; l <= L; ++l) {
    // bound and rounding value of every state over the groups not merged yet
    lp.assign(cur.size(), kNegInf);

    for (std::size_t s = 0; s < cur.size(); ++s) {
      const double capR = Cp - cur[s].c - baseW[l];
      if (capR < -near) continue;  // over budget beyond rounding: dead (states within `near` are decided exactly)
      double sw = 0, sp = 0, frac = 0;
      if (l < L) {
        int at = fw.descend(capR, sw, sp);
        while (at < M && !active[at]) ++at;  // rounding residue of removed increments
        if (at < M) frac = std::max(0.0, capR - sw) * cincs[at].e;
      }
      const double lb = cur[s].g + baseP[l] + sp;
      lp[s] = lb + frac;
      if (lb > z) {
        double zs = lb;
        if (capR - sw <= near) {  // float sums may disagree at the boundary: use the rebuilt, exact answer
          const std::vector<int32_t> ch = rebuild(l, cur[s].parent, cur[s].item, capR);
          if (compare_sum(pr.offsets, pr.costs, ch, C) > 0) continue;  // over budget (lp[s] still stands)
          MckpResult e;
          e.choice = ch;
          evaluate_choice(pr, e);
          zs = e.objective;
          if (!(zs > z)) continue;
        }
        z = zs;
        rec = {l, cur[s].parent, cur[s].item, capR};
      }
    }
    const double th = threshold();
    std::size_t w = 0;
    for (std::size_t s = 0; s < cur.size(); ++s) {
      if (lp[s] < th) { pruned_max = std::max(pruned_max, lp[s]); continue; }
      cur[w] = cur[s];
      lp[w++] = lp[s];
    }
    cur.resize(w);
    lp.resize(w);
    if (cur.empty() || l == L) break;
    const int64_t m_l = loff[l + 1] - loff[l];
    const bool over_time = opts.time_limit > 0 && seconds_since(start) > opts.time_limit;
    if (over_time) {
      for (double v : lp) pruned_max = std::max(pruned_max, v);
      limited = true;
      r.message = "time limit of " + fmt(opts.time_limit) + " s reached";
      stop_level = l;
      break;
    }
    if (!limited && (kept_total + static_cast<int64_t>(cur.size()) * m_l > opts.max_states ||
                     static_cast<int64_t>(cur.size()) * m_l > level_cap)) {
      limited = true;
      r.message = "state limit reached (max_states = " + std::to_string(opts.max_states) + ", at most " +
                  std::to_string(level_cap) + " per level); finished with a beam of " +
                  std::to_string(opts.beam_width) + " states per level";
    }
    if (limited && static_cast<int64_t>(cur.size()) > opts.beam_width) {  // keep the best bounds, in cost order
      keep_best(cur, lp, opts.beam_width, pruned_max);
    }
    // store back-pointers of the states we expand
    if (l > 0) {
      bp[l].resize(cur.size());
      for (std::size_t s = 0; s < cur.size(); ++s) bp[l][s] = {cur[s].parent, cur[s].item};
      kept_total += static_cast<int64_t>(cur.size());
    }
    // merge the shifted copies (one per survivor item), each already sorted by cost
    const double climit = Cp - baseW[l + 1] + near;  // keep states a rounding error over: checked exactly
    buf.clear();
    runs.assign(1, 0);
    for (int64_t j = 0; j < m_l; ++j) {
      const Item& it = litems[loff[l] + j];
      for (std::size_t s = 0; s < cur.size(); ++s) {
        const double c = cur[s].c + it.w;
        if (c > climit) break;
        buf.push_back({c, cur[s].g + it.p, static_cast<int32_t>(s), static_cast<int32_t>(j)});
      }
      if (static_cast<int64_t>(buf.size()) > runs.back()) runs.push_back(static_cast<int64_t>(buf.size()));
    }
    r.nodes += static_cast<int64_t>(buf.size());
    auto before = [](const State& a, const State& b) { return a.c != b.c ? a.c < b.c : a.g > b.g; };
    while (runs.size() > 2) {  // pairwise (stable) merges: O(|L| m log m)
      buf2.resize(buf.size());
      std::vector<int64_t> nr{0};
      for (std::size_t q = 0; q + 1 < runs.size(); q += 2) {
        if (q + 2 < runs.size()) {
          std::merge(buf.begin() + runs[q], buf.begin() + runs[q + 1], buf.begin() + runs[q + 1],
                     buf.begin() + runs[q + 2], buf2.begin() + runs[q], before);
          nr.push_back(runs[q + 2]);
        } else {
          std::copy(buf.begin() + runs[q], buf.begin() + runs[q + 1], buf2.begin() + runs[q]);
          nr.push_back(runs[q + 1]);
        }
      }
      buf.swap(buf2);
      runs.swap(nr);
    }
    cur.clear();
    for (const State& s : buf)  // dominance: keep only strictly increasing gain along increasing cost
      if (cur.empty() || s.g > cur.back().g) cur.push_back(s);
    for (int32_t q = lpoff[l]; q < lpoff[l + 1]; ++q) {
      const int32_t t = lpos[q];
      fw.add(t, -cincs[t].dw, -cincs[t].dp);
      active[t] = 0;
    }
  }

  if (rec.level >= 0) {  // the DP's best rounding solution, rebuilt once
    MckpResult cand;
    cand.choice = rebuild(rec.level, rec.parent, rec.item, rec.cap);
    evaluate_choice(pr, cand);
    if (cand.objective >= r.objective) { r.choice = cand.choice; r.objective = cand.objective; r.cost = cand.cost; }
  }
  (void)stop_level;
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
