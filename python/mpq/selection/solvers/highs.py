"""HiGHS backend for ``mpq.solve_mckp(..., solver="highs")``.

HiGHS does not honour its time limit inside presolve (docs/solver.md: a 20 s limit became up to 168 s), so it
runs in a child process that we kill when our own deadline passes. Its answers are then checked exactly: HiGHS'
feasibility tolerance lets "optimal" answers exceed the budget, and such an answer is repaired and marked "limit".
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from .verify import finish_external, problem_rows, provably_infeasible

GRACE_S = 5.0  # extra wall clock for process start, model build and HiGHS' own overshoot before we kill it


def solve_highs(offsets, gains, costs, target: float, *, minimize_cost: bool = False, memory=None,
                max_memory: Optional[float] = None, time_limit: Optional[float] = None,
                rel_gap: float = 1e-9) -> dict:
    """Solve with HiGHS in a child process; returns the dict shape of ``mpq._core.mckp_solve``."""
    try:
        import highspy  # noqa: F401  (fail early, in the caller's process, with a clear message)
    except ImportError:
        raise ImportError("solver='highs' needs highspy: pip install 'mpq-ptq[highs]'") from None
    # A plain script, not `import mpq...`: the child must not pay for importing the package (torch).
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "highs_child.py")
    payload = pickle.dumps(dict(offsets=np.asarray(offsets), gains=np.asarray(gains), costs=np.asarray(costs),
                                target=float(target), minimize_cost=minimize_cost, memory=memory,
                                max_memory=max_memory, time_limit=time_limit, rel_gap=rel_gap), protocol=4)
    deadline = None if time_limit is None else time_limit + GRACE_S + 0.1 * time_limit
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    killed = False
    try:
        out, err = proc.communicate(payload, timeout=deadline)
    except subprocess.TimeoutExpired:
        proc.kill()  # HiGHS ignores its own limit inside presolve: ours is the one that holds
        out, err = proc.communicate()
        killed = True
    wall = time.perf_counter() - t0
    res = None
    if not killed and proc.returncode == 0 and out:
        res = pickle.loads(out)
    if res is None:
        why = (f"HiGHS did not return within {deadline:.1f} s (its time limit is not honoured inside presolve); "
               "the process was killed" if killed else
               f"the HiGHS process ended without an answer (exit code {proc.returncode}): "
               f"{err.decode(errors='replace').strip()[-500:]}")
        return _empty("limit", why, wall, minimize_cost)
    if "import_error" in res:
        raise ImportError(f"solver='highs' needs highspy: {res['import_error']}")
    if res["infeasible"]:
        return _empty("infeasible", "HiGHS: infeasible", res["seconds"], minimize_cost)
    if not res["has_solution"]:
        if provably_infeasible(offsets, problem_rows(gains, costs, target, minimize_cost, memory, max_memory)[1]):
            return _empty("infeasible", f"HiGHS: {res['status']}; no choice is feasible (exact sums)",
                          res["seconds"], minimize_cost)
        return _empty("limit", f"HiGHS: {res['status']}, no feasible solution", res["seconds"], minimize_cost,
                      bound=res["bound"])
    choice = _choice_from_x(offsets, res["x"])
    return finish_external("HiGHS", offsets, gains, costs, choice, target, minimize_cost, memory, max_memory,
                           proven=res["optimal"], bound=res["bound"], seconds=res["seconds"],
                           status_text=res["status"])


def _choice_from_x(offsets, x) -> np.ndarray:
    return np.array([int(np.argmax(x[offsets[g]:offsets[g + 1]])) for g in range(len(offsets) - 1)],
                    dtype=np.int64)


def _empty(status, message, seconds, minimize_cost, bound=None) -> dict:
    if bound is None or not math.isfinite(bound):
        unknown = -math.inf if minimize_cost else math.inf   # a limit proves nothing; infeasible is the opposite
        bound = unknown if status == "limit" else -unknown
    return {"status": status, "choice": np.zeros(0, dtype=np.int64), "objective": 0.0, "cost": 0.0,
            "memory": 0.0, "bound": float(bound), "seconds": seconds, "nodes": 0, "message": message}
