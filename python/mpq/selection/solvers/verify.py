"""Exact checks of answers from external MIP solvers (HiGHS, Gurobi).

MIP solvers accept sum(cost) <= budget + tolerance; on correlated data that returns "optimal" answers that break
the budget (docs/solver.md, "External solvers"). Here every answer is summed exactly; a violating one is repaired by moving
groups to items that reduce the violated rows at the least loss of objective, and is then reported as "limit".
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def _excess(values: np.ndarray, idx: np.ndarray, limit: float) -> float:
    """Exact sum(values[idx]) - limit, correctly rounded (> 0 iff the row is violated)."""
    if math.isinf(limit):
        return -math.inf if limit > 0 else math.inf
    return math.fsum(values[idx].tolist() + [-limit])


def problem_rows(gains, costs, target: float, minimize_cost: bool, memory, max_memory):
    """(objective to maximise, rows [(values, limit)] meaning sum(values[choice]) <= limit)."""
    if minimize_cost:   # min cost s.t. gain >= target  ==  max -cost s.t. -gain <= -target
        objective, rows = -np.asarray(costs), [(-np.asarray(gains), -target)]
    else:
        objective, rows = np.asarray(gains), [(np.asarray(costs), target)]
    if memory is not None:
        rows.append((np.asarray(memory), max_memory))
    return objective, rows


def provably_infeasible(offsets: np.ndarray, rows: list) -> bool:
    """Whether some row cannot hold even with every group at its smallest value (an exact sum): then no choice
    is feasible, whatever an external solver's tolerances let it report."""
    for values, limit in rows:
        least = [float(values[offsets[g]:offsets[g + 1]].min()) for g in range(len(offsets) - 1)]
        if math.fsum(least + [-limit]) > 0:
            return True
    return False


def repair(offsets: np.ndarray, objective: np.ndarray, rows: list, choice: np.ndarray) -> Optional[np.ndarray]:
    """Greedy repair for rows [(values, limit)] meaning sum(values[choice]) <= limit, maximising ``objective``.
    Each step takes the move (group, item) that worsens no row and reduces the violated ones most per unit of
    objective lost. Returns the repaired choice, or None if no such move exists."""
    choice = np.array(choice, dtype=np.int64)
    n = len(offsets) - 1
    for _ in range(int(offsets[-1]) + n):
        idx = offsets[:-1] + choice
        ex = [_excess(v, idx, lim) for v, lim in rows]
        if all(e <= 0 for e in ex):
            return choice
        scale = [max(e, 1e-300) for e in ex]
        best = None
        for g in range(n):
            cur = offsets[g] + choice[g]
            for j in range(int(offsets[g + 1] - offsets[g])):
                it = offsets[g] + j
                d = [v[it] - v[cur] for v, _ in rows]
                if j == choice[g] or any(x > 0 for x in d):
                    continue
                gain = sum(-x / s for x, e, s in zip(d, ex, scale) if e > 0)
                if gain <= 0:
                    continue
                loss = objective[cur] - objective[it]
                key = (loss / gain, g, j)
                if best is None or key < best:
                    best = key
        if best is None:
            return None
        choice[best[1]] = best[2]
    return None


def finish_external(name: str, offsets, gains, costs, choice, target: float, minimize_cost: bool, memory,
                    max_memory, *, proven: bool, bound: float, seconds: float, status_text: str) -> dict:
    """Verify an external solver's choice exactly and build the result dict (shape of mpq._core results)."""
    objective, rows = problem_rows(gains, costs, target, minimize_cost, memory, max_memory)
    idx = offsets[:-1] + choice
    violation = max(_excess(v, idx, lim) for v, lim in rows)
    message = "" if proven else f"{name}: {status_text}"
    status = "optimal" if proven else "limit"
    if violation > 0:
        fixed = repair(offsets, objective, rows, choice)
        what = "min_gain" if minimize_cost else "the budget"
        if fixed is None:
            if provably_infeasible(offsets, rows):  # the exact solver's answer too: no choice fits
                return {"status": "infeasible", "choice": np.zeros(0, dtype=np.int64), "objective": 0.0,
                        "cost": 0.0, "memory": 0.0, "bound": -math.inf if not minimize_cost else math.inf,
                        "seconds": seconds, "nodes": 0,
                        "message": f"{name} returned an answer violating {what} by {violation:.3g}; no choice is "
                                   "feasible (exact sums)"}
            return {"status": "limit", "choice": np.zeros(0, dtype=np.int64), "objective": 0.0, "cost": 0.0,
                    "memory": 0.0, "bound": float(bound), "seconds": seconds, "nodes": 0,
                    "message": f"{name}'s answer violates {what} by {violation:.3g} and could not be repaired"}
        moved = int((fixed != choice).sum())
        choice, status = fixed, "limit"
        message = (f"{name} reported {status_text} but its answer violated {what} by {violation:.3g} (feasibility "
                   f"tolerance); repaired by changing {moved} group(s), optimality not proven")
        idx = offsets[:-1] + choice
    obj = math.fsum(np.asarray(gains)[idx].tolist())
    cost = math.fsum(np.asarray(costs)[idx].tolist())
    mem = math.fsum(np.asarray(memory)[idx].tolist()) if memory is not None else 0.0
    ref = cost if minimize_cost else obj
    if not math.isfinite(bound):
        bound = ref if status == "optimal" else bound
    # a MIP dual bound on the wrong side of its own answer is not a proof: clip it to the answer
    bound = min(bound, ref) if minimize_cost else max(bound, ref)
    return {"status": status, "choice": np.asarray(choice, dtype=np.int64), "objective": obj, "cost": cost,
            "memory": mem, "bound": float(bound), "seconds": seconds, "nodes": 0, "message": message}
