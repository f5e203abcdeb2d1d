"""Select below the layer: the multiple-choice knapsack over the row groups of a ``ChannelTable``.

One MCKP group per (layer, row group), one item per candidate the layer can take plus "base"; item cost = the
group's charged loss MSE (``ChannelTable.cost``: its weight term, plus its share of the layer's activation term),
item gain = the group's share of the layer's gain, item memory = its share of the layer's bytes. That split of
gains is exact for the theoretical backends whose count is linear in a layer's output rows (memory, ebops, macs:
M·K·N·…); a timed backend measures whole layers, and the time of a Linear split into precision classes is not the
sum of per-row gains (one kernel per class: ``bench/channel_split.py`` measures it), so it is refused. With
10⁴–10⁶ groups the instance goes to the solver as flat arrays (``solve_mckp_csr``), no per-group Python object.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..artifacts.channel_plan import ChannelPlan
from ..artifacts.channel_table import ChannelTable
from ..artifacts.gain_table import GainTable
from ..candidates import BASE
from .limits import loss_or_gain_objective, memory_of_bits
from .solvers import solve_mckp_csr, sweep_mckp_csr

# backends whose gain of a layer is a sum over its output rows
ROW_ADDITIVE_BACKENDS = ("memory", "ebops", "macs")


class ChannelProblem:
    """The flat MCKP of a ChannelTable and a GainTable: CSR offsets, gains, costs, memory, and what each item is."""

    def __init__(self, table: ChannelTable, gains: GainTable, with_memory: bool):
        if gains.backend not in ROW_ADDITIVE_BACKENDS:
            raise ValueError(f"a channel plan needs gains that add up over output rows (backend "
                             f"{' / '.join(ROW_ADDITIVE_BACKENDS)}); the {gains.backend!r} GainTable times whole "
                             "layers, and a Linear split into precision classes runs one kernel per class, whose "
                             "time is not the sum of per-row gains")
        if gains.layer_gain is None or gains.layer_bytes is None:
            raise ValueError("the GainTable lacks per-layer gains and bytes (a table from mpq.profile with a "
                             "theoretical backend has them)")
        missing = [l for l in gains.layers if l not in table.layers]
        if missing:
            raise ValueError(f"the GainTable has layer(s) the ChannelTable lacks (e.g. {missing[:3]}): the two "
                             "artifacts come from different models")
        extra = [c for c in gains.candidates[1:] if c not in table.candidates]
        if extra:
            raise ValueError(f"the GainTable measured candidates {extra} that the ChannelTable did not calibrate")
        self.table, self.gains = table, gains
        self.candidates = gains.candidates                        # "base" first
        tcol = np.array([table.candidates.index(c) for c in self.candidates[1:]], np.int64)
        gl = {name: i for i, name in enumerate(gains.layer_names)}
        offsets, cost_all = table.offsets, table.cost
        share_all = table.group_share
        g_parts, c_parts, m_parts, item_parts, sizes = [], [], [], [], []
        self.layers = []
        for name in dict.fromkeys(gains.layers):
            li, gi = table.layers.index(name), gl[name]
            a, b = int(offsets[li]), int(offsets[li + 1])
            lg = gains.layer_gain[gi, 1:]
            cost = cost_all[a:b][:, tcol]                           # [groups, C']
            ok = np.isfinite(lg) & np.isfinite(cost).all(axis=0) & np.isfinite(gains.layer_bytes[gi, 1:])
            cols = np.flatnonzero(ok)
            share = share_all[a:b, None]
            k = 1 + len(cols)
            g_parts.append(np.hstack([np.zeros((b - a, 1)), share * lg[cols]]).ravel())
            c_parts.append(np.hstack([np.zeros((b - a, 1)), np.maximum(cost[:, cols], 0.0)]).ravel())
            m_parts.append((share * gains.layer_bytes[gi, np.concatenate([[0], 1 + cols])]).ravel())
            item_parts.append(np.tile(np.concatenate([[0], 1 + cols]), b - a))
            sizes.append(np.full(b - a, k))
            self.layers.append(name)
        if not self.layers:
            raise ValueError("the GainTable has no layer to choose for")
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(sizes))]).astype(np.int64)
        self.item_gain = np.concatenate(g_parts)
        self.item_cost = np.concatenate(c_parts)
        self.item_memory = np.concatenate(m_parts) if with_memory else None
        self.item_candidate = np.concatenate(item_parts).astype(np.int32)   # index into self.candidates

    def default_budgets(self, points: int) -> list:
        best = np.maximum.reduceat(self.item_gain, self.offsets[:-1])
        # the cost of every group's best-gain item (first maximum): argmax per CSR segment, vectorised
        seg = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
        is_best = self.item_gain == best[seg]
        first = np.flatnonzero(is_best)
        first = first[np.concatenate([[True], seg[first][1:] != seg[first][:-1]])]
        top = float(self.item_cost[first].sum())
        positive = self.item_cost[(self.item_cost > 0) & (self.item_gain > 0)]
        if top <= 0 or not positive.size:
            return [0.0]
        return list(np.geomspace(max(float(positive.min()), top * 1e-6), top, points))

    def plan(self, sol, objective: dict) -> ChannelPlan:
        t = self.table
        chosen = self.offsets[:-1] + np.asarray(sol.choice, np.int64)
        lidx = [t.layers.index(n) for n in self.layers]
        memory = float(self.item_memory[chosen].sum()) if self.item_memory is not None else None
        choice = self.item_candidate[chosen]
        scales = {}
        at = 0
        for name, li in zip(self.layers, lidx):
            n = int(t.offsets[li + 1] - t.offsets[li])
            for j in np.unique(choice[at:at + n]):
                c = self.candidates[j]
                if c != BASE:
                    s = float(t.table.act_scales[li, t.candidates.index(c)])
                    if math.isfinite(s):
                        scales.setdefault(name, {})[c] = s
            at += n
        return ChannelPlan(tuple(self.layers), tuple(t.out_features[i] for i in lidx),
                           tuple(t.group_rows[i] for i in lidx), self.candidates, choice, scales,
                           float(sol.cost), float(sol.objective), self.gains.unit, memory, objective,
                           {"name": sol.solver, "status": sol.status, "bound": float(sol.bound),
                            "seconds": float(sol.seconds)})


def select_channels(table: ChannelTable, gains: GainTable, *, max_loss_mse: Optional[float] = None,
                    max_loss_rmse: Optional[float] = None, min_gain: Optional[float] = None,
                    max_memory: Optional[float] = None, max_avg_bits: Optional[float] = None,
                    solver: str = "exact", time_limit: Optional[float] = None) -> ChannelPlan:
    """``mpq.select`` on a ChannelTable: a candidate per row group (module docstring). Give exactly one of
    max_loss_mse, max_loss_rmse (the loss budget) or min_gain; max_memory / max_avg_bits limit the bytes of the
    GainTable's layers as in ``select``. @raises ValueError for a timed GainTable, mismatched artifacts or a
    budget no plan meets."""
    kind, value = loss_or_gain_objective(max_loss_mse, max_loss_rmse, min_gain, None)
    max_memory = memory_of_bits(gains, max_memory, max_avg_bits)
    problem = ChannelProblem(table, gains, with_memory=max_memory is not None)
    kwargs = dict(solver=solver, time_limit=time_limit)
    if max_memory is not None:
        kwargs.update(memory=problem.item_memory, max_memory=max_memory)
    if kind == "min_gain":
        sol = solve_mckp_csr(problem.offsets, problem.item_gain, problem.item_cost, min_gain=value, **kwargs)
    else:
        budget = value if kind == "max_loss_mse" else value ** 2
        sol = solve_mckp_csr(problem.offsets, problem.item_gain, problem.item_cost, budget, **kwargs)
    if sol.status == "infeasible":
        raise ValueError(f"no channel plan meets {kind}={value:g}: {sol.message}")
    objective = {"kind": kind, "value": value, **({"max_memory": max_memory} if max_memory is not None else {}),
                 **({"max_avg_bits": max_avg_bits} if max_avg_bits is not None else {})}
    return problem.plan(sol, objective)


def pareto_channels(table: ChannelTable, gains: GainTable, budgets: Optional[Sequence[float]] = None, *,
                    points: int = 30, solver: str = "exact", max_memory: Optional[float] = None,
                    max_avg_bits: Optional[float] = None) -> list:
    """``mpq.pareto`` on a ChannelTable: one ChannelPlan per loss budget (default: ``points`` budgets spaced
    geometrically up to the cost of the highest-gain plan); one sweep of the exact solver without a memory limit,
    budget by budget with one."""
    if not isinstance(points, int) or isinstance(points, bool) or points < 1:
        raise ValueError(f"points must be a whole number >= 1, got {points!r}")
    max_memory = memory_of_bits(gains, max_memory, max_avg_bits)
    problem = ChannelProblem(table, gains, with_memory=max_memory is not None)
    budgets = [float(b) for b in (problem.default_budgets(points) if budgets is None else budgets)]
    if not budgets:
        raise ValueError("budgets is empty")
    if max_memory is None and solver == "exact":
        sols = sweep_mckp_csr(problem.offsets, problem.item_gain, problem.item_cost, budgets)
    else:
        kw = dict(memory=problem.item_memory, max_memory=max_memory) if max_memory is not None else {}
        sols = [solve_mckp_csr(problem.offsets, problem.item_gain, problem.item_cost, b, solver=solver, **kw)
                for b in budgets]
    extra = {**({"max_memory": max_memory} if max_memory is not None else {}),
             **({"max_avg_bits": max_avg_bits} if max_avg_bits is not None else {})}
    return [problem.plan(s, {"kind": "max_loss_mse", "value": b, **extra})
            for b, s in zip(budgets, sols) if s.status != "infeasible"]
