"""Gurobi backend for ``mpq.solve_mckp(..., solver="gurobi")`` (optional: needs gurobipy and a licence).

The pip-bundled licence is size-limited (2,000 variables/constraints); that case raises a RuntimeError saying so.
Answers are verified exactly like HiGHS' (mckp_verify.py).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from .verify import finish_external


def solve_gurobi(offsets, gains, costs, target: float, *, minimize_cost: bool = False, memory=None,
                 max_memory: Optional[float] = None, time_limit: Optional[float] = None,
                 rel_gap: float = 1e-9) -> dict:
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError:
        raise ImportError("solver='gurobi' needs gurobipy (and a Gurobi licence): pip install gurobipy") from None
    n, nv = len(offsets) - 1, int(offsets[-1])
    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        m = gp.Model(env=env)
        m.Params.MIPGap = float(rel_gap)
        m.Params.MIPGapAbs = 0.0
        if time_limit:
            m.Params.TimeLimit = float(time_limit)
        x = m.addMVar(nv, vtype=GRB.BINARY)
        for g in range(n):  # one item per group
            m.addConstr(x[int(offsets[g]):int(offsets[g + 1])].sum() == 1)
        if minimize_cost:
            m.setObjective(np.asarray(costs) @ x, GRB.MINIMIZE)
            m.addConstr(np.asarray(gains) @ x >= target)
        else:
            m.setObjective(np.asarray(gains) @ x, GRB.MAXIMIZE)
            m.addConstr(np.asarray(costs) @ x <= target)
        if memory is not None:
            m.addConstr(np.asarray(memory) @ x <= max_memory)
        t0 = time.perf_counter()
        m.optimize()
        seconds = time.perf_counter() - t0
    except gp.GurobiError as e:
        if getattr(e, "errno", None) == 10010 or "size-limited" in str(e):
            raise RuntimeError(f"Gurobi's licence is too small for this model ({nv} binary variables, {n + 1} "
                               f"rows; the pip licence allows 2,000 of each): {e}") from None
        raise RuntimeError(f"Gurobi failed: {e}") from None
    empty = {"choice": np.zeros(0, dtype=np.int64), "objective": 0.0, "cost": 0.0, "memory": 0.0,
             "seconds": seconds, "nodes": int(m.NodeCount)}
    if m.Status == GRB.INFEASIBLE:
        return {**empty, "status": "infeasible", "bound": math.inf if minimize_cost else -math.inf,
                "message": "Gurobi: infeasible"}
    if m.SolCount == 0:
        return {**empty, "status": "limit", "bound": float(m.ObjBound), "message": f"Gurobi status {m.Status}"}
    xv = x.X
    choice = np.array([int(np.argmax(xv[offsets[g]:offsets[g + 1]])) for g in range(n)], dtype=np.int64)
    out = finish_external("Gurobi", offsets, gains, costs, choice, target, minimize_cost, memory, max_memory,
                          proven=m.Status == GRB.OPTIMAL, bound=float(m.ObjBound), seconds=seconds,
                          status_text=f"status {m.Status}")
    out["nodes"] = int(m.NodeCount)
    return out
