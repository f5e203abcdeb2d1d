"""The multiple-choice knapsack behind ``mpq.select``: one item per group, maximise total gain, total cost <= budget.

``solve_mckp`` runs mpq's exact C++ solver (``solver="exact"``, the default; docs/solver.md says how it works) or,
for cross-checks, HiGHS or Gurobi. ``"bnb"``, its name in mpq 0.1, is an alias of ``"exact"`` for one release.
Every answer is verified with an exact sum (``math.fsum``): a budget-violating answer is never reported optimal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

SOLVERS = ("exact", "highs", "gurobi")
SOLVER_ALIASES = {"bnb": "exact"}
STATUSES = ("optimal", "infeasible", "limit")


@dataclass(frozen=True)
class MckpSolution:
    """Result of one solve. ``choice[g]`` is the item picked in group g (empty if none was found).

    ``objective``/``cost``/``memory`` are exact sums of the chosen values; ``bound`` is a proven upper bound on the
    optimal gain (for ``min_gain=`` solves: a proven lower bound on the least cost). ``status`` is "optimal",
    "infeasible" or "limit" (a time/state limit: best solution found, with ``bound``)."""
    choice: np.ndarray
    objective: float
    cost: float
    bound: float
    status: str
    seconds: float
    nodes: int = 0
    solver: str = "exact"
    message: str = ""
    memory: Optional[float] = None
    core_groups: int = 0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def gap(self) -> float:
        """Relative distance between objective and bound (0 when proven optimal)."""
        if not self.choice.size:
            return math.inf
        ref = self.cost if self.extra.get("min_gain") is not None else self.objective
        return abs(self.bound - ref) / max(abs(ref), 1e-300)


def to_csr(gains, costs, memory=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Ragged groups -> (offsets int64, gains, costs[, memory]) float64. Raises ValueError naming the group."""
    if (isinstance(gains, np.ndarray) and isinstance(costs, np.ndarray) and gains.ndim == 2
            and gains.shape == costs.shape and gains.shape[1] > 0
            and (memory is None or (isinstance(memory, np.ndarray) and memory.shape == gains.shape))):
        return _csr_2d(gains, costs, memory)
    gl, cl = _groups(gains, "gains"), _groups(costs, "costs")
    if len(gl) != len(cl):
        raise ValueError(f"gains has {len(gl)} groups but costs has {len(cl)}")
    ml = _groups(memory, "memory") if memory is not None else None
    if ml is not None and len(ml) != len(gl):
        raise ValueError(f"memory has {len(ml)} groups but gains has {len(gl)}")
    gs = np.array([p.size for p in gl], dtype=np.int64)
    cs = np.array([c.size for c in cl], dtype=np.int64)
    if (gs != cs).any():
        g = int(np.argmax(gs != cs))
        raise ValueError(f"group {g}: gains has {gs[g]} values but costs has {cs[g]}")
    if (gs == 0).any():
        raise ValueError(f"group {int(np.argmax(gs == 0))} is empty")
    offsets = np.zeros(len(gl) + 1, dtype=np.int64)
    np.cumsum(gs, out=offsets[1:])
    cat = lambda xs: np.ascontiguousarray(np.concatenate(xs) if xs else np.zeros(0), dtype=np.float64)
    g, c = cat(gl), cat(cl)
    group_of = lambda i: int(np.searchsorted(offsets, i, side="right") - 1)
    _check_gains_costs(g, c, group_of)
    m = None
    if ml is not None:
        ms = np.array([x.size for x in ml], dtype=np.int64)
        if (ms != gs).any():
            k = int(np.argmax(ms != gs))
            raise ValueError(f"group {k}: memory has {ms[k]} values but gains has {gs[k]}")
        m = cat(ml)
        _check_memory(m, group_of)
    return offsets, g, c, m


def _check_gains_costs(g: np.ndarray, c: np.ndarray, group_of) -> None:
    """Finite gains and costs, no cost below 0; ``group_of(i)`` names the group of flat item i."""
    for name, v in (("gain", g), ("cost", c)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"group {group_of(bad[0])}: {name} {v[bad[0]]} is not finite")
    bad = np.flatnonzero(c < 0)
    if bad.size:
        raise ValueError(f"group {group_of(bad[0])}: cost {c[bad[0]]} is negative")


def _check_memory(m: np.ndarray, group_of) -> None:
    bad = np.flatnonzero(~np.isfinite(m) | (m < 0))
    if bad.size:
        raise ValueError(f"group {group_of(bad[0])}: memory values must be finite and >= 0")


def _csr_2d(gains, costs, memory):
    """to_csr of (groups, items) arrays: row-major values and evenly spaced offsets, checked without a loop."""
    n, m = gains.shape
    offsets = np.arange(n + 1, dtype=np.int64) * m
    g, c = (np.ascontiguousarray(a, dtype=np.float64).reshape(-1) for a in (gains, costs))
    group_of = lambda i: int(i) // m
    _check_gains_costs(g, c, group_of)
    mem = None
    if memory is not None:
        mem = np.ascontiguousarray(memory, dtype=np.float64).reshape(-1)
        _check_memory(mem, group_of)
    return offsets, g, c, mem


def _groups(x, name) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return list(np.asarray(x, dtype=np.float64))
    if isinstance(x, np.ndarray) and x.ndim != 2:
        raise ValueError(f"{name}: expected a sequence of 1-D arrays or a 2-D array, got ndim {x.ndim}")
    out = []
    for g, row in enumerate(x):
        try:
            a = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"group {g}: {name} are not numbers ({e})") from None
        if a.ndim != 1:
            raise ValueError(f"group {g}: {name} must be 1-D, got shape {a.shape}")
        out.append(a)
    return out


def _number(x, name) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}") from None
    if math.isnan(v):
        raise ValueError(f"{name} is nan")
    return v


def _options(time_limit, rel_gap, max_states) -> dict:
    if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit must be a positive number of seconds or None, got {time_limit!r}")
    if not 0 <= rel_gap < 1:
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap!r}")
    opts = dict(time_limit=float(time_limit or 0.0), rel_gap=float(rel_gap))
    if max_states is not None:
        opts["max_states"] = int(max_states)
    return opts


def _wrap(d: dict, solver: str, **extra) -> MckpSolution:
    return MckpSolution(choice=np.asarray(d["choice"], dtype=np.int64), objective=float(d["objective"]),
                        cost=float(d["cost"]), bound=float(d["bound"]), status=str(d["status"]),
                        seconds=float(d["seconds"]), nodes=int(d.get("nodes", 0)), solver=solver,
                        message=str(d.get("message", "")),
                        memory=(float(d["memory"]) if extra.get("max_memory") is not None else None),
                        core_groups=int(d.get("core_groups", 0)), extra=extra)


def solver_name(solver: str) -> str:
    """The solver's canonical name ("bnb" -> "exact"); a ValueError names the known ones."""
    solver = SOLVER_ALIASES.get(solver, solver)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)} (or 'bnb', an alias of 'exact'), "
                         f"got {solver!r}")
    return solver


def solve_mckp(gains: Sequence, costs: Sequence, budget: Optional[float] = None, *, solver: str = "exact",
               time_limit: Optional[float] = None, min_gain: Optional[float] = None,
               memory: Optional[Sequence] = None, max_memory: Optional[float] = None, rel_gap: float = 1e-9,
               max_states: Optional[int] = None) -> MckpSolution:
    """Choose one item per group to maximise the total gain with total cost <= ``budget``.

    gains, costs: one 1-D float array per group (ragged allowed), or (groups, items) 2-D arrays. Costs >= 0.
    min_gain: instead of ``budget``, find the least total cost whose total gain is >= min_gain.
    memory, max_memory: an optional second row, sum(memory) <= max_memory.
    solver: "exact" (mpq's C++ core; "bnb" is an alias), "highs" (needs highspy, run under a watchdog process),
    "gurobi" (needs gurobipy).
    time_limit: seconds; the answer is then the best found with a proven bound (status "limit").
    Raises ValueError naming the group for NaN/Inf, negative costs, empty groups or mismatched lengths.
    """
    solver = solver_name(solver)
    if (budget is None) == (min_gain is None):
        raise ValueError("give exactly one of budget and min_gain")
    if (memory is None) != (max_memory is None):
        raise ValueError("memory and max_memory go together")
    if min_gain is not None and memory is not None:
        raise ValueError("min_gain with a memory row is not supported")
    offsets, g, c, mem = to_csr(gains, costs, memory)
    return _solve_csr(offsets, g, c, mem, budget, solver, time_limit, min_gain, max_memory, rel_gap, max_states)


def solve_mckp_csr(offsets, gains, costs, budget: Optional[float] = None, *, solver: str = "exact",
                   time_limit: Optional[float] = None, min_gain: Optional[float] = None, memory=None,
                   max_memory: Optional[float] = None, rel_gap: float = 1e-9,
                   max_states: Optional[int] = None) -> MckpSolution:
    """``solve_mckp`` on flat arrays, for instances with many groups: group g owns items
    ``offsets[g]:offsets[g + 1]`` of ``gains``, ``costs`` (and ``memory``); offsets[0] = 0, offsets[-1] = the number
    of items. No per-group Python object is made: the arrays go to the C++ core as they are (int64 offsets, float64
    values; other dtypes or strides are converted once), and the core checks them, naming the group at fault."""
    solver = solver_name(solver)
    if (budget is None) == (min_gain is None):
        raise ValueError("give exactly one of budget and min_gain")
    if (memory is None) != (max_memory is None):
        raise ValueError("memory and max_memory go together")
    if min_gain is not None and memory is not None:
        raise ValueError("min_gain with a memory row is not supported")
    offsets, g, c = _flat(offsets, "offsets", np.int64), _flat(gains, "gains"), _flat(costs, "costs")
    mem = _flat(memory, "memory") if memory is not None else None
    if solver != "exact":  # the external solvers get the checks the C++ core would make
        _core_checks(offsets, g, c, mem)
    return _solve_csr(offsets, g, c, mem, budget, solver, time_limit, min_gain, max_memory, rel_gap, max_states)


def sweep_mckp_csr(offsets, gains, costs, budgets, *, time_limit: Optional[float] = None, rel_gap: float = 1e-9,
                   max_states: Optional[int] = None) -> list[MckpSolution]:
    """``sweep_mckp`` (exact solver) on flat arrays, as ``solve_mckp_csr`` takes them."""
    b = _flat(budgets, "budgets")
    if np.isnan(b).any():
        raise ValueError(f"budgets[{int(np.flatnonzero(np.isnan(b))[0])}] is nan")
    opts = _options(time_limit, rel_gap, max_states)
    from ... import _core
    out = _core.mckp_sweep(_flat(offsets, "offsets", np.int64), _flat(gains, "gains"), _flat(costs, "costs"), b,
                           **opts)
    return [_wrap(d, "exact", budget=float(x), min_gain=None, max_memory=None) for d, x in zip(out, b.tolist())]


def _flat(x, name, dtype=np.float64) -> np.ndarray:
    try:
        a = np.ascontiguousarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not an array of numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    return a


def _core_checks(offsets, g, c, mem) -> None:
    """The C++ core's input checks, for the solvers that do not run it."""
    from ... import _core
    _core.mckp_lp_bound(offsets, g, c, math.inf)  # raises ValueError naming the group at fault
    if mem is not None:
        if mem.size != g.size:
            raise ValueError(f"memory has {mem.size} values but gains has {g.size}")
        bad = np.flatnonzero(~np.isfinite(mem) | (mem < 0))
        if bad.size:
            group = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise ValueError(f"group {group}: memory values must be finite and >= 0")


def _solve_csr(offsets, g, c, mem, budget, solver, time_limit, min_gain, max_memory, rel_gap,
               max_states) -> MckpSolution:
    target = _number(budget if budget is not None else min_gain, "budget" if budget is not None else "min_gain")
    mmax = _number(max_memory, "max_memory") if max_memory is not None else None
    opts = _options(time_limit, rel_gap, max_states)
    extra = dict(budget=budget, min_gain=min_gain, max_memory=mmax)
    if solver == "exact":
        from ... import _core
        if min_gain is not None:
            d = _core.mckp_min_cost(offsets, g, c, target, **opts)
        elif mem is not None:
            d = _core.mckp_memory(offsets, g, c, mem, target, mmax, **opts)
        else:
            d = _core.mckp_solve(offsets, g, c, target, **opts)
        return _wrap(d, "exact", **extra)
    if solver == "highs":
        from .highs import solve_highs
        d = solve_highs(offsets, g, c, target, minimize_cost=min_gain is not None, memory=mem, max_memory=mmax,
                        time_limit=time_limit, rel_gap=rel_gap)
    else:
        from .gurobi import solve_gurobi
        d = solve_gurobi(offsets, g, c, target, minimize_cost=min_gain is not None, memory=mem, max_memory=mmax,
                         time_limit=time_limit, rel_gap=rel_gap)
    return _wrap(d, solver, **extra)


def sweep_mckp(gains: Sequence, costs: Sequence, budgets: Sequence[float], *, solver: str = "exact",
               time_limit: Optional[float] = None, rel_gap: float = 1e-9,
               max_states: Optional[int] = None) -> list[MckpSolution]:
    """One ``solve_mckp`` per budget (a Pareto front), in the order given. With "exact" the preprocessing is done
    once and each solution seeds the next larger budget; ``time_limit`` applies to each budget."""
    solver = solver_name(solver)
    b = np.ascontiguousarray([_number(x, f"budgets[{i}]") for i, x in enumerate(budgets)], dtype=np.float64)
    if solver != "exact":
        return [solve_mckp(gains, costs, float(x), solver=solver, time_limit=time_limit, rel_gap=rel_gap)
                for x in b]
    offsets, g, c, _ = to_csr(gains, costs)
    opts = _options(time_limit, rel_gap, max_states)
    from ... import _core
    return [_wrap(d, "exact", budget=float(x), min_gain=None, max_memory=None)
            for d, x in zip(_core.mckp_sweep(offsets, g, c, b, **opts), b)]


def verify(offsets: np.ndarray, gains: np.ndarray, costs: np.ndarray, choice: np.ndarray,
           budget: float) -> tuple[float, float, bool]:
    """(objective, cost, fits): exact sums of a choice and whether cost <= budget holds exactly."""
    idx = offsets[:-1] + np.asarray(choice, dtype=np.int64)
    cost_terms = costs[idx].tolist()
    fits = _fsum_le(cost_terms, budget)
    return math.fsum(gains[idx].tolist()), math.fsum(cost_terms), fits


def _fsum_le(values: list, limit: float) -> bool:
    """Exact test sum(values) <= limit (fsum is correctly rounded; the tie case needs the exact remainder)."""
    if math.isinf(limit):
        return limit > 0
    return math.fsum(values + [-limit]) <= 0
