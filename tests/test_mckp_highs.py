"""The exact solver against HiGHS (gap 0) on the llm family, the HiGHS watchdog, the exact verification of
external answers, and Gurobi's optional path."""
import math
import time

import numpy as np
import pytest

from mpq.selection.solvers.dispatch import solve_mckp, to_csr
from mpq.selection.solvers.verify import finish_external

from mpq.selection.solvers.instances import generate, threshold

highspy = pytest.importorskip("highspy")


def fits(costs, choice, budget):
    return math.fsum([costs[g][j] for g, j in enumerate(choice)] + [-budget]) <= 0


@pytest.mark.parametrize("n,m,seed,frac", [(224, 6, 0, 0.3), (224, 25, 1, 0.1), (560, 4, 0, 0.6),
                                           (560, 16, 2, 0.3), (2000, 2, 0, 0.3), (2000, 2, 1, 0.6)])
def test_same_optimum_as_highs_on_llm_family(n, m, seed, frac):
    g, c = generate(n, m, seed)
    budget = threshold(c, frac)
    ours = solve_mckp(g, c, budget, rel_gap=0.0)
    ref = solve_mckp(g, c, budget, solver="highs", rel_gap=0.0, time_limit=60)
    assert ours.status == "optimal" and fits(c, ours.choice, budget)
    assert ref.solver == "highs" and ref.choice.shape == (n,)
    assert fits(c, ref.choice, budget)  # verified: a violating HiGHS answer would have been repaired
    if ref.status == "optimal":
        assert ours.objective == pytest.approx(ref.objective, rel=1e-9)
    else:  # a repaired HiGHS answer is feasible, hence no better than the proven optimum
        assert ref.objective <= ours.objective * (1 + 1e-12)
    assert ours.bound >= ref.objective * (1 - 1e-12)


def test_min_gain_and_memory_match_highs():
    g, c = generate(224, 6, 3)
    target = 0.8 * g.max(axis=1).sum()
    ours = solve_mckp(g, c, min_gain=target, rel_gap=0.0)
    ref = solve_mckp(g, c, min_gain=target, solver="highs", rel_gap=0.0, time_limit=60)
    assert ours.status == "optimal" and math.fsum(g[np.arange(224), ours.choice]) >= target
    if ref.status == "optimal":
        assert ours.cost == pytest.approx(ref.cost, rel=1e-9)
    # a binding memory row: memory ~ bits of the weight format, limit below what the plain optimum uses
    wb = np.array([16, 16, 8, 8, 4, 4], dtype=float)
    mem = np.tile(wb, (224, 1)) * (1 + np.arange(224) % 7)[:, None]
    budget = threshold(c, 0.3)
    plain = solve_mckp(g, c, budget)
    limit = 0.95 * mem[np.arange(224), plain.choice].sum()
    ours = solve_mckp(g, c, budget, memory=mem, max_memory=limit, rel_gap=0.0, time_limit=20)
    ref = solve_mckp(g, c, budget, memory=mem, max_memory=limit, solver="highs", rel_gap=0.0, time_limit=60)
    assert ours.status == "optimal", ours.message
    assert fits(c, ours.choice, budget) and fits(mem, ours.choice, limit)
    if ref.status == "optimal":
        assert ours.objective == pytest.approx(ref.objective, rel=1e-9)


def test_watchdog_returns_on_time_when_highs_cannot_finish():
    g, c = generate(560, 16, 0, family="uniform_scorr")  # HiGHS times out on this family (solver.md §4.4)
    t0 = time.perf_counter()
    sol = solve_mckp(g, c, threshold(c, 0.3), solver="highs", time_limit=1.0)
    assert time.perf_counter() - t0 < 1.0 + 5.0 + 0.5 + 3.0  # limit + grace + process start
    assert sol.status in ("limit", "optimal")
    if sol.choice.size:
        assert fits(c, sol.choice, threshold(c, 0.3))


def test_violating_external_answer_is_repaired_and_never_optimal():
    gains = [np.array([0.0, 5.0, 6.0]), np.array([0.0, 4.0])]
    costs = [np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0 + 2e-9])]
    off, g, c, _ = to_csr(gains, costs)
    budget = 3.0
    # what a MIP solver with feasibility tolerance 1e-6 may return: cost 3 + 2e-9 > budget, labelled optimal
    d = finish_external("HiGHS", off, g, c, np.array([2, 1]), budget, False, None, None, proven=True,
                        bound=10.0, seconds=0.0, status_text="Optimal")
    assert d["status"] == "limit" and "violated the budget" in d["message"]
    assert math.fsum(c[off[:-1] + d["choice"]].tolist()) <= budget
    assert d["choice"].tolist() == [1, 1]  # the cheapest loss of gain that restores feasibility
    ok = finish_external("HiGHS", off, g, c, np.array([1, 1]), 3.5, False, None, None, proven=True,
                         bound=9.0, seconds=0.0, status_text="Optimal")
    assert ok["status"] == "optimal" and ok["objective"] == 9.0


def test_gurobi_is_optional():
    try:
        import gurobipy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="solver='gurobi' needs gurobipy"):
            solve_mckp([[0.0, 1.0]], [[0.0, 1.0]], 1.0, solver="gurobi")
        return
    g, c = generate(224, 2, 0)
    budget = threshold(c, 0.3)
    sol = solve_mckp(g, c, budget, solver="gurobi", rel_gap=0.0)
    assert fits(c, sol.choice, budget)
    assert sol.objective == pytest.approx(solve_mckp(g, c, budget).objective, rel=1e-9)
    big_g, big_c = generate(2000, 6, 0)
    with pytest.raises(RuntimeError, match="licence is too small"):
        solve_mckp(big_g, big_c, threshold(big_c, 0.3), solver="gurobi")


def test_an_instance_infeasible_by_one_ulp_is_infeasible_for_every_solver():
    budget = 1.0
    over = math.nextafter(budget, math.inf)
    gains, costs = [np.array([2.0, 3.0]), np.array([1.0, 5.0])], [np.array([0.5, 0.7]), np.array([over - 0.5, 0.9])]
    ours = solve_mckp(gains, costs, budget)
    ref = solve_mckp(gains, costs, budget, solver="highs", time_limit=30)
    assert ours.status == "infeasible" and ref.status == "infeasible", (ours.message, ref.message)
    assert ref.choice.size == 0 and ref.bound == ours.bound
