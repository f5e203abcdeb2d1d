"""Select: the multiple-choice knapsack of the method. One group per sub-graph of the GainTable, one item per
measured configuration; item gain = its measured gain, item cost = Σ of its layers' loss MSE s[l, c] from the
SensitivityTable (0 for "base"). Maximise Σ gain s.t. Σ cost ≤ budget — or the dual, least Σ cost for a required
gain — optionally with Σ weight bytes ≤ max_memory."""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..artifacts.gain_table import GainTable
from ..artifacts.channel_table import ChannelTable
from ..artifacts.plan import Plan
from ..artifacts.sensitivity_table import SensitivityTable
from ..candidates import BASE
from .channels import pareto_channels, select_channels
from .limits import loss_or_gain_objective, memory_of_bits
from .solvers import MckpSolution, solve_mckp, sweep_mckp


def select(table: SensitivityTable, gains: GainTable, *, max_loss_mse: Optional[float] = None,
           max_loss_rmse: Optional[float] = None, min_gain: Optional[float] = None,
           target_speedup: Optional[float] = None, max_memory: Optional[float] = None, solver: str = "exact",
           pin: Optional[Mapping[str, str]] = None, keep: Optional[Iterable[str]] = None,
           time_limit: Optional[float] = None, verify=None, verify_bound: str = "estimate",
           verify_rounds: int = 8, max_avg_bits: Optional[float] = None, score: Optional[str] = None) -> Plan:
    """The best plan for one objective; give exactly one of ``max_loss_mse``, ``max_loss_rmse`` (the loss
    budget), ``min_gain`` or ``target_speedup`` (the least loss MSE reaching that gain / speedup).

    max_memory: bytes of the timed layers' weights (from a GainTable with ``layer_bytes``, e.g. backend "memory").
    max_avg_bits: the same limit as the average bits per weight of the timed layers (``avg_bits``).
    pin: {layer name or regex: candidate} forces those layers; keep: names or regexes of layers that stay in the
    model's own precision. A pattern that matches no layer is an error.
    verify: ``(model, batches)`` or ``(model, batches, loss_fn)`` with held-out batches (default loss: a causal
    LM's): with a loss budget, the plan is fake-quantized and its loss MSE measured against the base model there;
    while the measurement (``verify_bound="estimate"``, the default) or its upper bound (``"upper"``: estimate + 2
    standard errors) exceeds the budget, the additive budget is tightened and the problem solved again, in at most
    ``verify_rounds`` measurements. The Plan's ``verification`` records what was measured.
    @raises ValueError for mismatched artifacts, an unknown layer pattern, a budget no plan can meet (the message
    gives the smallest feasible budget), or, with verify, a budget no quantized plan measured within.
    score: the table's score form to optimise (``table.score_forms``; default: the one the table reports). Every
    form is additive over layers, so the solve stays exact; a form other than "first_order" is in loss-MSE units
    through the table's one fitted scale (``score_scale``), so with a loss budget pair it with ``verify``.
    """
    if isinstance(table, ChannelTable):  # below the layer: a candidate per row group (selection.channels)
        _channel_args(pin=pin, keep=keep, target_speedup=target_speedup, verify=verify, score=score)
        return select_channels(table, gains, max_loss_mse=max_loss_mse, max_loss_rmse=max_loss_rmse,
                               min_gain=min_gain, max_memory=max_memory, max_avg_bits=max_avg_bits, solver=solver,
                               time_limit=time_limit)
    kind, value = loss_or_gain_objective(max_loss_mse, max_loss_rmse, min_gain, target_speedup)
    table = table if score is None else table.with_score(score)
    max_memory = memory_of_bits(gains, max_memory, max_avg_bits)
    problem = Problem.build(table, gains, pin=pin, keep=keep, with_memory=max_memory is not None)
    if kind == "target_speedup":
        t0 = gains.baseline_seconds
        if gains.unit != "seconds" or not t0 or math.isnan(t0):
            raise ValueError(f"target_speedup needs a timed GainTable with baseline_seconds (this one: "
                             f"backend {gains.backend!r}, unit {gains.unit!r}); use min_gain instead")
        if value <= 1:
            raise ValueError(f"target_speedup must be > 1, got {value}")
        need = t0 * (1 - 1 / value)
    kwargs = dict(solver=solver, time_limit=time_limit)
    if max_memory is not None:
        kwargs.update(memory=problem.memory, max_memory=max_memory)
    objective = {"kind": kind, "value": value, **({"max_memory": max_memory} if max_memory else {}),
                 **({"max_avg_bits": max_avg_bits} if max_avg_bits is not None else {}), **_score_key(table)}
    if kind in ("max_loss_mse", "max_loss_rmse"):
        budget = value if kind == "max_loss_mse" else value ** 2

        def solve(additive_budget: float) -> Plan:
            sol = solve_mckp(problem.gains, problem.costs, additive_budget - problem.fixed_cost, **kwargs)
            _check_solved(sol, kind, value, problem)
            return problem.plan(sol, objective)

        if verify is None:
            return solve(budget)
        from .measured import Verifier, verified_select
        return verified_select(solve, budget, Verifier.of(verify, table.quantized_weights), bound=verify_bound,
                               max_rounds=verify_rounds, calibration_fingerprint=table.data_fingerprint)
    if verify is not None:
        raise ValueError("verify checks a loss budget: use it with max_loss_mse or max_loss_rmse")
    need = value if kind == "min_gain" else need
    sol = solve_mckp(problem.gains, problem.costs, min_gain=need, **kwargs)
    _check_solved(sol, kind, value, problem)
    return problem.plan(sol, objective)


def pareto(table: SensitivityTable, gains: GainTable, budgets: Optional[Sequence[float]] = None, *,
           solver: str = "exact", pin: Optional[Mapping[str, str]] = None, keep: Optional[Iterable[str]] = None,
           points: int = 30, verify=None, max_memory: Optional[float] = None,
           max_avg_bits: Optional[float] = None, score: Optional[str] = None) -> list[Plan]:
    """The loss-MSE / gain front: one plan per loss budget (default: ``points`` budgets spaced geometrically from
    the cheapest non-zero cost to the cost of the fastest plan), solved with one shared preprocessing. With
    ``verify`` (as in ``select``) every plan is also measured once, its ``verification`` saying whether it held.
    ``max_memory`` (or ``max_avg_bits``) holds for every plan of the front (solved budget by budget: the sweep has
    no memory row). ``score``: as in ``select``."""
    if isinstance(table, ChannelTable):
        _channel_args(pin=pin, keep=keep, verify=verify, score=score)
        return pareto_channels(table, gains, budgets, points=points, solver=solver, max_memory=max_memory,
                               max_avg_bits=max_avg_bits)
    if not isinstance(points, int) or isinstance(points, bool) or points < 1:
        raise ValueError(f"points must be a whole number >= 1, got {points!r}")
    table = table if score is None else table.with_score(score)
    max_memory = memory_of_bits(gains, max_memory, max_avg_bits)
    problem = Problem.build(table, gains, pin=pin, keep=keep, with_memory=max_memory is not None)
    if budgets is None:
        budgets = problem.default_budgets(points)
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise ValueError("budgets is empty")
    if max_memory is None:
        sols = sweep_mckp(problem.gains, problem.costs, [b - problem.fixed_cost for b in budgets], solver=solver)
    else:
        sols = [solve_mckp(problem.gains, problem.costs, b - problem.fixed_cost, solver=solver,
                           memory=problem.memory, max_memory=max_memory) for b in budgets]
    plans = []
    for b, sol in zip(budgets, sols):
        if sol.status == "infeasible":
            continue
        plans.append(problem.plan(sol, {"kind": "max_loss_mse", "value": b,
                                        **({"max_memory": max_memory} if max_memory is not None else {}),
                                        **({"max_avg_bits": max_avg_bits} if max_avg_bits is not None else {}),
                                        **_score_key(table)}))
    if verify is not None:
        from .measured import Verifier, measured_front
        plans = measured_front(plans, Verifier.of(verify, table.quantized_weights), table.data_fingerprint)
    return plans


def _channel_args(**given) -> None:
    used = sorted(k for k, v in given.items() if v is not None)
    if used:
        raise ValueError(f"{', '.join(used)}: not supported with a ChannelTable (a channel plan chooses per row group "
                         "under a loss budget or a required gain, with max_memory / max_avg_bits)")
def _score_key(table: SensitivityTable) -> dict:
    """The objective's record of a score form other than the seed's (absent for first_order)."""
    return {} if table.score == "first_order" else {"score": table.score, "score_scale": table.score_scale}


@dataclass
class Problem:
    """The MCKP built from the two tables: per sub-graph the admissible configuration rows and their gain, cost
    and memory; plus what pinned layers outside every sub-graph add."""
    table: SensitivityTable
    table_gains: GainTable
    rows: list            # per sub-graph: indices of admissible configurations
    gains: list           # per sub-graph: float64 [k]
    costs: list
    memory: Optional[list]
    fixed: dict           # pinned layers that no sub-graph times: layer -> candidate
    fixed_cost: float

    @classmethod
    def build(cls, table: SensitivityTable, gains: GainTable, *, pin=None, keep=None, with_memory=False) -> "Problem":
        _check_compatible(table, gains)
        forced = _forced(table.layers, pin or {}, keep or ())
        unknown = {c for c in forced.values() if c != BASE and c not in table.candidates}
        if unknown:
            raise ValueError(f"pinned candidate(s) {sorted(unknown)} were not calibrated ({list(table.candidates)})")
        mse = table.mse
        lidx = {name: i for i, name in enumerate(table.layers)}
        cidx = np.array([-1] + [table.candidates.index(c) for c in gains.candidates[1:]])
        if with_memory and gains.layer_bytes is None:
            raise ValueError(f"max_memory needs per-layer bytes in the GainTable (profile with backend='memory'); "
                             f"this one is {gains.backend!r}")
        g_lidx = {name: i for i, name in enumerate(gains.layer_names)}
        seen: dict[str, str] = {}
        for sg in gains.subgraphs:  # one layer, one choice: a layer in two sub-graphs could get two
            for name in sg.layers:
                if name in seen:
                    raise ValueError(f"layer {name!r} is in two sub-graphs of the GainTable ({seen[name]!r} and "
                                     f"{sg.name!r}): each layer must belong to one")
                seen[name] = sg.name
        rows, g_list, c_list, m_list = [], [], [], []
        for sg in gains.subgraphs:
            li = np.array([lidx[name] for name in sg.layers], dtype=np.int64)
            cols = cidx[sg.configs]                                   # [K, n] table columns, -1 = base
            per_layer = np.where(cols >= 0, mse[li[None, :], np.maximum(cols, 0)], 0.0)
            cost = per_layer.sum(axis=1)
            ok = np.isfinite(cost)
            for j, name in enumerate(sg.layers):
                want = forced.get(name)
                if want is not None:
                    ok &= (sg.configs[:, j] == gains.candidates.index(want)) if want in gains.candidates else False
            if not ok.any():
                raise ValueError(f"sub-graph {sg.name!r}: no measured configuration satisfies the pins/keeps "
                                 f"{ {n: forced[n] for n in sg.layers if n in forced} }")
            keep_rows = np.nonzero(ok)[0]
            rows.append(keep_rows)
            g_list.append(np.asarray(sg.gain, np.float64)[keep_rows])
            c_list.append(np.maximum(cost[keep_rows], 0.0))
            if with_memory:
                gl = np.array([g_lidx[name] for name in sg.layers], dtype=np.int64)
                mem = gains.layer_bytes[gl[None, :], sg.configs].sum(axis=1)
                m_list.append(np.asarray(mem, np.float64)[keep_rows])
        fixed = {name: c for name, c in forced.items() if name not in seen and c != BASE}  # seen: the timed
        fixed_cost = sum(float(mse[lidx[n], table.candidates.index(c)]) for n, c in fixed.items())
        if not math.isfinite(fixed_cost):
            raise ValueError(f"a pinned layer cannot run its candidate: {fixed}")
        return cls(table, gains, rows, g_list, c_list, m_list if with_memory else None, fixed, fixed_cost)

    def default_budgets(self, points: int) -> list[float]:
        top = sum(float(c[np.argmax(g)]) for g, c in zip(self.gains, self.costs))
        # the cheapest item worth taking (positive gain) starts the grid: cheaper budgets all give the empty plan
        positive = np.concatenate([c[(c > 0) & (g > 0)] for g, c in zip(self.gains, self.costs)] or [np.zeros(0)])
        if top <= 0 or not positive.size:
            return [self.fixed_cost]
        low = max(float(positive.min()), top * 1e-6)
        return list(self.fixed_cost + np.geomspace(low, top, points))

    def act_scales(self, mapping: Mapping[str, str]) -> dict:
        """The calibrated static activation scale of every layer whose candidate has one (NaN elsewhere): a
        Linear's from ``table.act_scales``, an attention layer's list (per input of a matmul, per K/V head) from
        ``table.info["attention_scales"]``."""
        t = self.table
        lidx = {name: i for i, name in enumerate(t.layers)}
        attention = t.info.get("attention_scales") or {}
        out = {}
        for layer, c in mapping.items():
            if c == BASE:
                continue
            listed = (attention.get(layer) or {}).get(c)
            if listed:
                out[layer] = [float(v) for v in listed]
                continue
            s = float(t.act_scales[lidx[layer], t.candidates.index(c)])
            if math.isfinite(s):
                out[layer] = s
        return out

    def plan(self, sol: MckpSolution, objective: dict) -> Plan:
        gains = self.table_gains
        mapping = {name: BASE for name in self.table.layers}
        mapping.update(self.fixed)
        memory = 0.0 if self.memory is not None else None
        for i, (sg, rows) in enumerate(zip(gains.subgraphs, self.rows)):
            k = int(rows[sol.choice[i]])
            mapping.update({name: gains.candidates[j] for name, j in zip(sg.layers, sg.configs[k])})
            if memory is not None:
                memory += float(self.memory[i][sol.choice[i]])
        timed_with = gains.meta.get("implementations", {})
        impls = {layer: timed_with[layer][c] for layer, c in mapping.items()
                 if c != BASE and timed_with.get(layer, {}).get(c) is not None}
        return Plan(mapping=mapping, act_scales=self.act_scales(mapping), implementations=impls,
                    predicted_loss_mse_stderr=self.table.predicted_mse_stderr(mapping),
                    predicted_loss_mse=float(sol.cost) + self.fixed_cost,
                    predicted_gain=float(sol.objective), gain_unit=gains.unit,
                    baseline_seconds=float(gains.baseline_seconds), predicted_memory=memory,
                    candidates=self.table.candidates, objective=objective,
                    solver={"name": sol.solver, "status": sol.status, "bound": float(sol.bound),
                            "seconds": float(sol.seconds)},
                    artifacts={"sensitivity": fingerprint_table(self.table), "gains": fingerprint_gains(gains),
                               "backend": gains.backend, "phase": gains.phase})


def fingerprint_table(table: SensitivityTable) -> str:
    h = hashlib.sha256("\n".join(table.layers + ("|",) + table.candidates).encode())
    h.update(table.data_fingerprint.encode())
    return h.hexdigest()[:16]


def fingerprint_gains(gains: GainTable) -> str:
    h = hashlib.sha256("\n".join(gains.layers + ("|",) + gains.candidates).encode())
    h.update(f"{gains.backend}/{gains.phase}".encode())
    return h.hexdigest()[:16]


def _check_compatible(table: SensitivityTable, gains: GainTable) -> None:
    missing = [name for name in gains.layers if name not in table.layers]
    if missing:
        shared = len(set(gains.layers) & set(table.layers))
        raise ValueError(f"the GainTable times {len(missing)} layer(s) the SensitivityTable lacks (e.g. "
                         f"{missing[:3]}; {shared} shared): the two artifacts come from different models")
    extra = [c for c in gains.candidates[1:] if c not in table.candidates]
    if extra:
        raise ValueError(f"the GainTable measured candidates {extra} that the SensitivityTable did not calibrate "
                         f"({list(table.candidates)}): calibrate or profile with the same candidates")


def _forced(layers: Sequence[str], pin: Mapping[str, str], keep: Iterable[str]) -> dict[str, str]:
    """layer -> candidate for every layer a pin or keep pattern matches (exact name, else full regex match)."""
    if not isinstance(pin, Mapping):
        raise ValueError(f"pin must be a mapping {{layer name or regex: candidate}}, got {type(pin).__name__}")
    keep = names_list(keep, "keep")
    forced: dict[str, str] = {}
    rules = [(p, BASE) for p in keep] + list(pin.items())
    for pattern, cand in rules:
        matched = [name for name in layers if name == pattern] or _regex_matches(layers, pattern)
        if not matched:
            raise ValueError(f"layer pattern {pattern!r} matches no layer of the model (e.g. {list(layers[:3])})")
        for name in matched:
            if name in forced and forced[name] != cand:
                raise ValueError(f"layer {name!r} is both {forced[name]!r} and {cand!r} by the pins/keeps")
            forced[name] = cand
    return forced


def names_list(names, what: str) -> list[str]:
    """``names`` as a list of strings; a bare string is refused (it would be read letter by letter)."""
    if isinstance(names, (str, bytes)):
        raise ValueError(f"{what} must be a list of layer names or patterns, not the string {names!r} "
                         f"(write [{names!r}])")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"{what} must hold layer names (strings), got {bad[:3]}")
    return names


def _regex_matches(layers: Sequence[str], pattern: str) -> list[str]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"layer pattern {pattern!r} is neither a layer name nor a valid regex ({e})") from None
    return [name for name in layers if rx.fullmatch(name)]


def _check_solved(sol: MckpSolution, kind: str, value: float, problem: Problem) -> None:
    if sol.status == "infeasible":
        raise ValueError(f"no plan meets {kind}={value:g}: {sol.message}"
                         + (f" (pinned layers outside the timed sub-graphs already cost {problem.fixed_cost:g})"
                            if problem.fixed else ""))
