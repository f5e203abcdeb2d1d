// The Pareto-state DP over the core groups that Lagrangian pegging left (docs/cpp-core.md, "The MCKP solver",
// step 5).
// Levels go most ambiguous first. Each level: bound every state by the exact LP of the groups not merged yet (a
// Fenwick tree over their hull increments, which loses a level's increments once it is merged), round it to an
// incumbent where that beats the best one, prune states whose bound cannot beat the incumbent, then expand by the
// level's survivors and keep the states no other dominates.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "mckp/internal.hpp"

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

// The core groups in DP order, with the hull increments of their survivors.
struct Levels {
  int L = 0, M = 0;                   // levels, hull increments
  std::vector<int64_t> group;         // original group of each level
  std::vector<int64_t> off;           // CSR: level l's survivors are items[off[l], off[l+1])
  std::vector<Item> items;
  std::vector<int32_t> hull;          // CSR: level l's hull positions are hull[hoff[l], hoff[l+1])
  std::vector<int64_t> hoff;
  std::vector<Inc> incs;              // every level's hull increments, efficiency descending (g = level)
  std::vector<int32_t> pos, poff;     // CSR: level l's increments sit at incs[pos[poff[l]]] ...
  std::vector<double> baseW, baseP;   // cheapest survivors of levels l..L-1
};

Levels make_levels(const CoreGroups& core) {
  Levels v;
  const int L = v.L = static_cast<int>(core.group.size());
  // Most ambiguous groups first (ties by group index): their choice is the one the LP cannot settle.
  std::vector<int> order(L);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return core.ambiguity[a] < core.ambiguity[b]; });
  v.group.resize(L);
  v.off.assign(L + 1, 0);
  v.items.reserve(core.items.size());
  for (int l = 0; l < L; ++l) {
    const int c = order[l];
    v.group[l] = core.group[c];
    v.items.insert(v.items.end(), core.items.begin() + core.off[c], core.items.begin() + core.off[c + 1]);
    v.off[l + 1] = static_cast<int64_t>(v.items.size());
  }
  // Hull increments of the survivors, per level, sorted once; removed from the Fenwick tree level by level.
  v.hoff.assign(L + 1, 0);
  for (int l = 0; l < L; ++l) {
    const Item* its = v.items.data() + v.off[l];
    hull_of(its, static_cast<int32_t>(v.off[l + 1] - v.off[l]), v.hull);
    v.hoff[l + 1] = static_cast<int64_t>(v.hull.size());
    for (int64_t h = v.hoff[l] + 1; h < v.hoff[l + 1]; ++h) {
      const Item& a = its[v.hull[h - 1]];
      const Item& b = its[v.hull[h]];
      double e = (b.p - a.p) / (b.w - a.w);
      if (h > v.hoff[l] + 1 && e > v.incs.back().e) e = v.incs.back().e;
      v.incs.push_back({b.p - a.p, b.w - a.w, e, l, static_cast<int32_t>(h - v.hoff[l])});
    }
  }
  sort_by_efficiency(v.incs);  // built in (level, k) order
  const int M = v.M = static_cast<int>(v.incs.size());
  v.pos.resize(M);
  v.poff.assign(L + 1, 0);
  for (int t = 0; t < M; ++t) ++v.poff[v.incs[t].g + 1];
  for (int l = 0; l < L; ++l) v.poff[l + 1] += v.poff[l];
  std::vector<int32_t> fill(v.poff.begin(), v.poff.end() - 1);
  for (int t = 0; t < M; ++t) v.pos[fill[v.incs[t].g]++] = t;
  v.baseW.assign(L + 1, 0);
  v.baseP.assign(L + 1, 0);
  for (int l = L - 1; l >= 0; --l) {
    v.baseW[l] = v.baseW[l + 1] + v.items[v.off[l]].w;
    v.baseP[l] = v.baseP[l + 1] + v.items[v.off[l]].p;
  }
  return v;
}

class ParetoDp {
 public:
  ParetoDp(const Prepared& pr, double C, const MckpOptions& opts, Clock::time_point start, const CoreGroups& core,
           double tol, MckpResult& r, double& z, double& pruned_max, bool& summed)
      : pr_(pr), C_(C), opts_(opts), start_(start), core_(core), tol_(tol), r_(r), z_(z), pruned_max_(pruned_max),
        summed_(summed),
        v_(make_levels(core)), Cp_(C - core.Wfix), near_(1e-13 * (std::fabs(C) + pr.Wmax)),
        level_cap_(std::max<int64_t>(1000, opts.max_states / 4)), active_(v_.M, 1), bp_(v_.L + 1) {
    fw_.build(v_.incs);
    cur_.push_back({0.0, core.Pfix, -1, -1});
  }

  bool run() {
    for (int l = 0; l <= v_.L; ++l) {
      bound_and_round(l);
      prune();
      if (cur_.empty() || l == v_.L) break;
      if (!limit(l)) break;  // out of time
      expand(l);
      retire(l);
    }
    if (rec_.level >= 0) {  // the DP's best rounding solution, rebuilt once
      MckpResult cand;
      cand.choice = rebuild(rec_.level, rec_.parent, rec_.item, rec_.cap);
      const bool fits = evaluate_fits(pr_, cand, C_);
      if (cand.objective >= r_.objective) {
        r_.choice = cand.choice;
        r_.objective = cand.objective;
        r_.cost = cand.cost;
        summed_ = fits;
      }
    }
    return limited_;
  }

 private:
  double threshold() const { return improve_threshold(z_, opts_.rel_gap, tol_, pr_.unit); }

  // Bound and rounding value of every state over the levels not merged yet; a rounding that beats the
  // incumbent becomes it.
  void bound_and_round(int l) {
    lp_.assign(cur_.size(), kNegInf);
    // The states come by increasing cost, so their capacities left decrease: where the level has more states
    // than its active increments (by a factor of the tree's depth), one walk down the active increments' prefix
    // sums places them all, instead of a Fenwick descent per state.
    const bool sweep = l < v_.L && static_cast<double>(n_active_) <
                                       static_cast<double>(cur_.size()) * std::log2(static_cast<double>(v_.M) + 2.0);
    std::size_t j = 0;  // sweep: active increments taken whole by the current state
    if (sweep) {
      act_.clear();
      pw_.assign(1, 0.0);
      pp_.assign(1, 0.0);
      for (int t = 0; t < v_.M; ++t) {
        if (!active_[t]) continue;
        act_.push_back(t);
        pw_.push_back(pw_.back() + v_.incs[t].dw);
        pp_.push_back(pp_.back() + v_.incs[t].dp);
      }
      j = act_.size();
    }
    for (std::size_t s = 0; s < cur_.size(); ++s) {
      const double capR = Cp_ - cur_[s].c - v_.baseW[l];
      if (capR < -near_) continue;  // over budget beyond rounding: dead (states within `near` are decided exactly)
      double sw = 0, sp = 0, frac = 0;
      if (sweep) {
        while (j > 0 && pw_[j] > capR) --j;
        sw = pw_[j];
        sp = pp_[j];
        if (j < act_.size()) frac = std::max(0.0, capR - sw) * v_.incs[act_[j]].e;
      } else if (l < v_.L) {
        int at = fw_.descend(capR, sw, sp);
        while (at < v_.M && !active_[at]) ++at;  // rounding residue of removed increments
        if (at < v_.M) frac = std::max(0.0, capR - sw) * v_.incs[at].e;
      }
      const double lb = cur_[s].g + v_.baseP[l] + sp;
      lp_[s] = lb + frac;
      if (lb > z_) {
        double zs = lb;
        if (capR - sw <= near_) {  // float sums may disagree at the boundary: use the rebuilt, exact answer
          const std::vector<int32_t> ch = rebuild(l, cur_[s].parent, cur_[s].item, capR);
          if (compare_sum(pr_.offsets, pr_.costs, ch, C_) > 0) continue;  // over budget (lp_[s] still stands)
          MckpResult e;
          e.choice = ch;
          evaluate_choice(pr_, e);
          zs = e.objective;
          if (!(zs > z_)) continue;
        }
        z_ = zs;
        rec_ = {l, cur_[s].parent, cur_[s].item, capR};
      }
    }
  }

  // Drops the states whose bound cannot beat the incumbent by the requested gap.
  void prune() {
    const double th = threshold();
    std::size_t w = 0;
    for (std::size_t s = 0; s < cur_.size(); ++s) {
      if (lp_[s] < th) { pruned_max_ = std::max(pruned_max_, lp_[s]); continue; }
      cur_[w] = cur_[s];
      lp_[w++] = lp_[s];
    }
    cur_.resize(w);
    lp_.resize(w);
  }

  // Time and state limits before expanding level l: false when out of time; past the state limit the search
  // goes on as a beam of the best bounds.
  bool limit(int l) {
    const int64_t m_l = v_.off[l + 1] - v_.off[l];
    if (opts_.time_limit > 0 && seconds_since(start_) > opts_.time_limit) {
      for (double b : lp_) pruned_max_ = std::max(pruned_max_, b);
      limited_ = true;
      r_.message = "time limit of " + fmt(opts_.time_limit) + " s reached";
      return false;
    }
    const int64_t grown = static_cast<int64_t>(cur_.size()) * m_l;
    if (!limited_ && (kept_total_ + grown > opts_.max_states || grown > level_cap_)) {
      limited_ = true;
      r_.message = "state limit reached (max_states = " + std::to_string(opts_.max_states) + ", at most " +
                   std::to_string(level_cap_) + " per level); finished with a beam of " +
                   std::to_string(opts_.beam_width) + " states per level";
    }
    if (limited_ && static_cast<int64_t>(cur_.size()) > opts_.beam_width) {  // the best bounds, in cost order
      keep_best(cur_, lp_, opts_.beam_width, pruned_max_);
    }
    return true;
  }

  // Merges level l: one shifted copy of the states per survivor item, each already sorted by cost, merged in
  // pairs, then only strictly increasing gain along increasing cost is kept.
  void expand(int l) {
    if (l > 0) {  // back-pointers of the states being expanded
      bp_[l].resize(cur_.size());
      for (std::size_t s = 0; s < cur_.size(); ++s) bp_[l][s] = {cur_[s].parent, cur_[s].item};
      kept_total_ += static_cast<int64_t>(cur_.size());
    }
    const int64_t m_l = v_.off[l + 1] - v_.off[l];
    const double climit = Cp_ - v_.baseW[l + 1] + near_;  // keep states a rounding error over: checked exactly
    buf_.clear();
    runs_.assign(1, 0);
    for (int64_t j = 0; j < m_l; ++j) {
      const Item& it = v_.items[v_.off[l] + j];
      for (std::size_t s = 0; s < cur_.size(); ++s) {
        const double c = cur_[s].c + it.w;
        if (c > climit) break;
        buf_.push_back({c, cur_[s].g + it.p, static_cast<int32_t>(s), static_cast<int32_t>(j)});
      }
      if (static_cast<int64_t>(buf_.size()) > runs_.back()) runs_.push_back(static_cast<int64_t>(buf_.size()));
    }
    r_.nodes += static_cast<int64_t>(buf_.size());
    auto before = [](const State& a, const State& b) { return a.c != b.c ? a.c < b.c : a.g > b.g; };
    while (runs_.size() > 2) {  // pairwise (stable) merges: O(|L| m log m)
      buf2_.resize(buf_.size());
      std::vector<int64_t> nr{0};
      for (std::size_t q = 0; q + 1 < runs_.size(); q += 2) {
        if (q + 2 < runs_.size()) {
          std::merge(buf_.begin() + runs_[q], buf_.begin() + runs_[q + 1], buf_.begin() + runs_[q + 1],
                     buf_.begin() + runs_[q + 2], buf2_.begin() + runs_[q], before);
          nr.push_back(runs_[q + 2]);
        } else {
          std::copy(buf_.begin() + runs_[q], buf_.begin() + runs_[q + 1], buf2_.begin() + runs_[q]);
          nr.push_back(runs_[q + 1]);
        }
      }
      buf_.swap(buf2_);
      runs_.swap(nr);
    }
    cur_.clear();
    for (const State& s : buf_)  // dominance: keep only strictly increasing gain along increasing cost
      if (cur_.empty() || s.g > cur_.back().g) cur_.push_back(s);
  }

  // Level l is merged: its increments leave the LP of the remaining levels.
  void retire(int l) {
    for (int32_t q = v_.poff[l]; q < v_.poff[l + 1]; ++q) {
      const int32_t t = v_.pos[q];
      fw_.add(t, -v_.incs[t].dw, -v_.incs[t].dp);
      active_[t] = 0;
      --n_active_;
    }
  }

  // Full choice (original indices) for a state of level l given by its (parent, item), completed greedily by
  // the LP rounding of the levels not merged yet within capR.
  std::vector<int32_t> rebuild(int l, int32_t parent, int32_t item, double capR) const {
    const int L = v_.L;
    std::vector<int32_t> lchoice(L, -1);
    if (l > 0) {
      lchoice[l - 1] = item;
      int32_t s = parent;
      for (int lev = l - 1; lev >= 1; --lev) {
        lchoice[lev - 1] = bp_[lev][s].second;
        s = bp_[lev][s].first;
      }
    }
    std::vector<int32_t> hp(L, 0);
    double used = 0;
    for (int t = 0; t < v_.M; ++t) {
      if (v_.incs[t].g < l) continue;
      if (used + v_.incs[t].dw > capR) break;
      used += v_.incs[t].dw;
      hp[v_.incs[t].g] = v_.incs[t].k;
    }
    for (int q = l; q < L; ++q) lchoice[q] = v_.hull[v_.hoff[q] + hp[q]];
    std::vector<int32_t> ch(core_.fixed);
    for (int q = 0; q < L; ++q) ch[v_.group[q]] = v_.items[v_.off[q] + lchoice[q]].idx;
    return ch;
  }

  const Prepared& pr_;
  const double C_;
  const MckpOptions& opts_;
  const Clock::time_point start_;
  const CoreGroups& core_;
  const double tol_;
  MckpResult& r_;
  double& z_;            // the incumbent's objective
  double& pruned_max_;   // largest bound of anything discarded
  bool& summed_;         // r_'s choice summed by evaluate_fits and within the budget
  const Levels v_;
  const double Cp_;      // budget left for the core levels
  const double near_;    // a float cost this close to the budget may round either way: checked exactly
  const int64_t level_cap_;
  std::vector<char> active_;  // increments still in the Fenwick tree
  int n_active_ = v_.M;
  Fenwick fw_;
  std::vector<int32_t> act_;        // a sweeping level's active increments, efficiency descending
  std::vector<double> pw_, pp_;     // ... and their prefix sums of cost and gain steps
  std::vector<std::vector<std::pair<int32_t, int32_t>>> bp_;  // (parent, item) of the states kept before level l
  std::vector<State> cur_, buf_, buf2_;
  std::vector<double> lp_;
  std::vector<int64_t> runs_;
  Record rec_;
  bool limited_ = false;
  int64_t kept_total_ = 0;
};

}  // namespace

bool core_dp(const Prepared& pr, double C, const MckpOptions& opts, Clock::time_point start, const CoreGroups& core,
             double tol, MckpResult& r, double& z, double& pruned_max, bool& summed) {
  return ParetoDp(pr, C, opts, start, core, tol, r, z, pruned_max, summed).run();
}

}  // namespace mpq::detail
