"""mpq.solve_mckp / sweep_mckp (solver="exact", alias "bnb") against brute force, the LP bound, and the documented errors."""
import itertools
import math
import time
from fractions import Fraction

import numpy as np
import pytest

import mpq
from mpq import _core
from mpq.selection.solvers.dispatch import MckpSolution, solve_mckp, sweep_mckp, to_csr

from mpq.selection.solvers.instances import generate, threshold


def _exact_ints(groups):
    """Doubles -> Python ints over one power-of-two denominator: exact sums at integer speed."""
    ratios = [[float(v).as_integer_ratio() for v in g] for g in groups]
    den = max((d for g in ratios for _, d in g), default=1)
    return [[n * (den // d) for n, d in g] for g in ratios], den


def brute(gains, costs, budget=None, min_gain=None, memory=None, max_memory=None):
    """Exact optimum by enumeration in exact (scaled integer) arithmetic, or None if infeasible."""
    P, dp = _exact_ints(gains)
    C, dc = _exact_ints(costs + [[budget if budget is not None else 0.0]])
    cap = C.pop()[0]
    if memory is not None:
        M, dm = _exact_ints(memory + [[max_memory]])
        mcap = M.pop()[0]
    target = None if min_gain is None else Fraction(min_gain) * dp
    best = None
    for ch in itertools.product(*[range(len(g)) for g in gains]):
        c = sum(C[i][j] for i, j in enumerate(ch))
        if memory is not None and sum(M[i][j] for i, j in enumerate(ch)) > mcap:
            continue
        p = sum(P[i][j] for i, j in enumerate(ch))
        if min_gain is None:
            if c <= cap and (best is None or p > best):
                best = p
        elif p >= target and (best is None or c < best):
            best = c
    if best is None:
        return None
    return Fraction(best, dp if min_gain is None else dc)


def random_instance(rng, dyadic):
    n = int(rng.integers(1, 7))
    kind = int(rng.integers(0, 4))
    gains, costs = [], []
    for _ in range(n):
        m = int(rng.integers(1, 5))
        c = rng.uniform(0, 10, m)
        p = rng.uniform(-3, 10, m)
        if kind == 1:  # exact ties and equal gains
            c, p = rng.integers(0, 3, m).astype(float), rng.integers(-1, 2, m).astype(float)
        if kind == 2:  # zero costs
            c[rng.random(m) < 0.5] = 0.0
        if kind == 3:  # gain = cost (+1): subset-sum-like
            p = c + rng.integers(0, 2, m)
        if dyadic:
            c, p = np.round(c * 8) / 8, np.round(p * 8) / 8
        gains.append(p)
        costs.append(c)
    return gains, costs


def exact_cost_le(costs, choice, budget):
    return math.fsum([costs[g][j] for g, j in enumerate(choice)] + [-budget]) <= 0


def test_brute_force_random_small():
    rng = np.random.default_rng(2024)
    checked = infeasible = 0
    for it in range(600):
        gains, costs = random_instance(rng, dyadic=it % 3 != 0)
        ch = [int(rng.integers(0, len(g))) for g in gains]
        on_boundary = math.fsum(costs[g][j] for g, j in enumerate(ch))  # a budget some choice hits exactly
        for budget in (on_boundary, float(rng.uniform(-2, 40)), -0.5):
            want = brute(gains, costs, budget)
            sol = solve_mckp(gains, costs, budget, rel_gap=0.0)
            checked += 1
            if want is None:
                infeasible += 1
                assert sol.status == "infeasible" and sol.choice.size == 0
                assert "minimum feasible budget" in sol.message
                continue
            assert sol.status == "optimal", sol.message
            assert exact_cost_le(costs, sol.choice, budget)
            assert sol.objective == pytest.approx(float(want), rel=1e-9, abs=1e-12)
            assert sol.bound >= sol.objective
            assert sol.bound <= _lp(gains, costs, budget) + 1e-9 * max(1, abs(sol.bound))
    assert checked == 1800 and infeasible > 100


def test_min_gain_brute_force():
    rng = np.random.default_rng(7)
    for it in range(300):
        gains, costs = random_instance(rng, dyadic=True)
        target = float(np.round(rng.uniform(-10, 40) * 8) / 8)
        want = brute(gains, costs, min_gain=target)
        sol = solve_mckp(gains, costs, min_gain=target, rel_gap=0.0)
        if want is None:
            assert sol.status == "infeasible" and "exceeds the largest reachable total gain" in sol.message
            continue
        assert sol.status == "optimal"
        assert math.fsum(gains[g][j] for g, j in enumerate(sol.choice)) >= target
        assert sol.cost == pytest.approx(float(want), abs=1e-12)
        assert sol.bound <= sol.cost + 1e-12


def test_memory_row_brute_force():
    rng = np.random.default_rng(11)
    binding = 0
    for it in range(300):
        gains, costs = random_instance(rng, dyadic=True)
        memory = [np.round(rng.uniform(0, 10, len(g)) * 8) / 8 for g in gains]
        budget = float(np.round(rng.uniform(0, 30) * 8) / 8)
        max_mem = float(np.round(rng.uniform(0, 30) * 8) / 8)
        want = brute(gains, costs, budget, memory=memory, max_memory=max_mem)
        plain = brute(gains, costs, budget)
        binding += want is not None and plain != want
        sol = solve_mckp(gains, costs, budget, memory=memory, max_memory=max_mem, rel_gap=0.0)
        if want is None:
            assert sol.status == "infeasible"
            continue
        assert sol.status == "optimal", sol.message
        assert exact_cost_le(costs, sol.choice, budget) and exact_cost_le(memory, sol.choice, max_mem)
        assert sol.objective == pytest.approx(float(want), abs=1e-12)
        assert sol.memory == pytest.approx(math.fsum(memory[g][j] for g, j in enumerate(sol.choice)))
    assert binding > 20


def _lp(gains, costs, budget):
    off, g, c, _ = to_csr(gains, costs)
    return _core.mckp_lp_bound(off, g, c, float(budget))


def test_bnb_is_an_alias_of_exact_and_unknown_solvers_are_named():
    g, c = generate(224, 6, 0)
    budget = threshold(c, 0.3)
    a, b = solve_mckp(g, c, budget, solver="bnb"), solve_mckp(g, c, budget, solver="exact")
    assert a.solver == b.solver == "exact" and np.array_equal(a.choice, b.choice) and a.objective == b.objective
    assert [s.solver for s in sweep_mckp(g, c, [budget], solver="bnb")] == ["exact"]
    with pytest.raises(ValueError, match="exact, highs, gurobi.*'cplex'"):
        solve_mckp(g, c, budget, solver="cplex")


@pytest.mark.parametrize("n,m,seed,frac", [(224, 6, 0, 0.1), (560, 16, 1, 0.3), (2000, 25, 2, 0.6),
                                           (20000, 4, 0, 0.3)])
def test_llm_family_properties(n, m, seed, frac):
    g, c = generate(n, m, seed)
    budget = threshold(c, frac)
    sol = solve_mckp(g, c, budget)
    assert isinstance(sol, MckpSolution) and sol.solver == "exact"
    assert sol.status == "optimal" and sol.choice.shape == (n,) and sol.choice.dtype == np.int64
    assert exact_cost_le(c, sol.choice, budget)
    assert sol.objective == math.fsum(g[np.arange(n), sol.choice])
    assert sol.objective <= sol.bound <= sol.objective + 1e-9 * abs(sol.objective)
    assert sol.bound <= _lp(g, c, budget) * (1 + 1e-12)
    assert solve_mckp(g, c, budget).choice.tolist() == sol.choice.tolist()  # deterministic


def test_llm_tied_blocks_are_easy():
    g, c = generate(224, 16, 0, family="llm_tied")
    sol = solve_mckp(g, c, threshold(c, 0.3), time_limit=5)
    assert sol.status == "optimal" and sol.seconds < 1


@pytest.mark.parametrize("family", ["scorr", "ssum", "uniform_scorr"])
def test_hard_families_end_within_limit_with_valid_bound(family):
    g, c = generate(224, 6, 0, family=family)
    budget = threshold(c, 0.3)
    t0 = time.perf_counter()
    sol = solve_mckp(g, c, budget, time_limit=1.0, max_states=200_000)
    assert time.perf_counter() - t0 < 3.0
    assert sol.status in ("optimal", "limit")
    assert sol.choice.shape == (224,) and exact_cost_le(c, sol.choice, budget)
    assert sol.objective <= sol.bound <= _lp(g, c, budget) * (1 + 1e-12)
    if sol.status == "limit":
        assert sol.message and sol.gap < 1e-3


def test_time_limit_stops_a_huge_hard_instance():
    g, c = generate(2000, 16, 1, family="uniform_scorr")
    t0 = time.perf_counter()
    sol = solve_mckp(g, c, threshold(c, 0.3), time_limit=0.3)
    assert time.perf_counter() - t0 < 2.0
    assert sol.status in ("optimal", "limit") and sol.bound >= sol.objective


def test_sweep_monotone_below_lp_and_equal_to_single_solves():
    g, c = generate(560, 6, 0)
    budgets = np.linspace(threshold(c, 0.0), threshold(c, 1.0), 100)
    sols = sweep_mckp(g, c, budgets[::-1])[::-1]  # any order in, same order out
    objs = [s.objective for s in sols]
    assert all(s.status == "optimal" for s in sols)
    assert all(b >= a for a, b in zip(objs, objs[1:]))
    for s, b in zip(sols, budgets):
        assert exact_cost_le(c, s.choice, b)
        assert s.objective <= _lp(g, c, b) * (1 + 1e-12) + 1e-12
    for k in (0, 17, 50, 99):
        assert solve_mckp(g, c, budgets[k]).objective == pytest.approx(objs[k], rel=1e-9)


def test_ragged_groups_and_2d_input_agree():
    g, c = generate(50, 4, 3)
    budget = threshold(c, 0.3)
    a = solve_mckp(g, c, budget)
    b = solve_mckp([list(r) for r in g], [list(r) for r in c], budget)
    assert a.choice.tolist() == b.choice.tolist()
    ragged_g = [g[0][:1]] + list(g[1:])
    ragged_c = [c[0][:1]] + list(c[1:])
    r = solve_mckp(ragged_g, ragged_c, budget)
    assert r.status == "optimal" and r.choice[0] == 0


def test_unconstrained_and_empty():
    sol = solve_mckp([[1.0, 5.0], [2.0]], [[0.0, 100.0], [1.0]], math.inf)
    assert sol.status == "optimal" and sol.choice.tolist() == [1, 0] and sol.objective == 7.0
    empty = solve_mckp([], [], 1.0)
    assert empty.status == "optimal" and empty.choice.size == 0 and empty.objective == 0.0


def test_infeasible_budget_reports_minimum():
    sol = solve_mckp([[1.0, 2.0], [3.0]], [[2.5, 4.0], [1.25]], 3.0)
    assert sol.status == "infeasible" and sol.choice.size == 0
    assert "minimum feasible budget 3.75" in sol.message


@pytest.mark.parametrize("gains,costs,match", [
    ([[1.0, float("nan")]], [[0.0, 1.0]], "group 0: gain nan"),
    ([[1.0], [2.0, 3.0]], [[0.0], [1.0, float("inf")]], "group 1: cost inf"),
    ([[1.0], [1.0, math.inf]], [[0.0], [1.0, 2.0]], "group 1: gain inf"),
    ([[1.0], [1.0, 2.0]], [[0.0], [1.0, -2.0]], "group 1: cost -2.0 is negative"),
    ([[1.0], []], [[0.0], []], "group 1 is empty"),
    ([[1.0], [1.0, 2.0]], [[0.0], [1.0]], "group 1: gains has 2 values but costs has 1"),
    ([[1.0], [2.0]], [[0.0]], "gains has 2 groups but costs has 1"),
    ([[1.0], [[2.0]]], [[0.0], [[1.0]]], "group 1: gains must be 1-D"),
    ([["a"]], [[0.0]], "group 0: gains are not numbers"),
])
def test_bad_input_raises_value_error_naming_the_group(gains, costs, match):
    with pytest.raises(ValueError, match=match):
        solve_mckp(gains, costs, 1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(budget=float("nan")), "budget is nan"),
    (dict(budget="x"), "budget must be a number"),
    (dict(), "exactly one of budget and min_gain"),
    (dict(budget=1.0, min_gain=1.0), "exactly one of budget and min_gain"),
    (dict(budget=1.0, solver="cplex"), "solver must be one of"),
    (dict(budget=1.0, time_limit=-1), "time_limit must be a positive"),
    (dict(budget=1.0, rel_gap=2.0), r"rel_gap must be in \[0, 1\)"),
    (dict(budget=1.0, max_states=10), "max_states must be >= 1000"),
    (dict(budget=1.0, memory=[[1.0]]), "memory and max_memory go together"),
    (dict(budget=1.0, memory=[[-1.0]], max_memory=1.0), "group 0: memory values must be finite and >= 0"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_mckp([[1.0]], [[0.0]], **kwargs)


def test_overflowing_values_are_rejected_not_crashed():
    with pytest.raises(ValueError, match="values too large"):
        solve_mckp([[0.0, 1.0], [0.0, 1.0]], [[1e308, 1.7e308], [1e308, 1.7e308]], 1.0)


def test_core_checks_its_own_inputs():
    off = np.array([0, 1, 1], dtype=np.int64)  # group 1 empty
    v = np.zeros(1)
    with pytest.raises(ValueError, match="group 1 is empty"):
        _core.mckp_solve(off, v, v, 1.0)
    with pytest.raises(ValueError, match="expected a C-contiguous float64 array"):
        _core.mckp_solve(np.array([0, 1], dtype=np.int64), np.zeros(1, dtype=np.float32), v, 1.0)
    with pytest.raises(ValueError, match="group 0 ends at item 2 but only 1 items were given"):
        _core.mckp_solve(np.array([0, 2], dtype=np.int64), v, v, 1.0)


def test_public_names():
    assert mpq.selection.solvers.dispatch.solve_mckp is solve_mckp
    sol = solve_mckp([[0.0, 1.0]], [[0.0, 1.0]], 1.0)
    with pytest.raises(Exception):
        sol.objective = 3.0  # frozen
