"""The flat-array entry points (solve_mckp_csr, sweep_mckp_csr) and the solver paths issue 20 added: pruning at the
next multiple of the gains' unit (integer and dyadic gains), and the single solve's increments ordered only around
its LP split (checked against the sweep, which sorts them all). References: brute force in exact arithmetic and
HiGHS (gap 0) on the literature's integer families."""
import math
from fractions import Fraction

import numpy as np
import pytest

from mpq.selection.solvers import solve_mckp, solve_mckp_csr, sweep_mckp, sweep_mckp_csr
from mpq.selection.solvers.dispatch import to_csr
from mpq.selection.solvers.instances import classic, generate, integer_suite, llm_int, threshold

from test_mckp import brute, exact_cost_le


def _random_groups(rng, unit):
    """Ragged groups whose gains are multiples of `unit` (0: real-valued), with ties, zero costs, negative gains."""
    n = int(rng.integers(1, 7))
    gains, costs = [], []
    for _ in range(n):
        m = int(rng.integers(1, 5))
        c = np.round(rng.uniform(0, 10, m), 3)
        c[rng.random(m) < 0.2] = 0.0
        p = rng.uniform(-3, 10, m)
        p = np.round(p / unit) * unit if unit else p
        if rng.random() < 0.3:  # equal gains
            p[:] = p[0]
        gains.append(p)
        costs.append(c)
    return gains, costs


@pytest.mark.parametrize("unit", [1.0, 0.25, 8.0, 0.0])
def test_flat_entry_point_matches_brute_force(unit):
    rng = np.random.default_rng(7 + int(unit * 4))
    for _ in range(120):
        gains, costs = _random_groups(rng, unit)
        lo, hi = sum(c.min() for c in costs), sum(c.max() for c in costs)
        budget = float(lo + rng.uniform(0, 1) * (hi - lo))
        off, g, c, _ = to_csr(gains, costs)
        sol = solve_mckp_csr(off, g, c, budget, rel_gap=0.0)
        ref = brute([list(x) for x in gains], [list(x) for x in costs], budget)
        assert sol.status == "optimal"
        assert Fraction(sol.objective) == ref or math.isclose(sol.objective, float(ref), rel_tol=1e-12, abs_tol=1e-12)
        assert exact_cost_le(costs, sol.choice, budget)
        assert sol.bound >= sol.objective
        if unit:  # the optimum is a multiple of the unit and nothing reaches the next one: the bound is closed
            assert sol.bound == sol.objective


def test_flat_equals_ragged_and_2d_on_every_direction():
    g, c = generate(120, 6, 3)
    off = np.arange(121, dtype=np.int64) * 6
    b = threshold(c, 0.3)
    ref = solve_mckp(list(g), list(c), b)
    for sol in (solve_mckp_csr(off, g.reshape(-1), c.reshape(-1), b), solve_mckp(g, c, b)):
        assert sol.status == "optimal" and sol.objective == ref.objective
        np.testing.assert_array_equal(sol.choice, ref.choice)
    mg = 0.9 * ref.objective
    a, f = solve_mckp(list(g), list(c), min_gain=mg), solve_mckp_csr(off, g.ravel(), c.ravel(), min_gain=mg)
    assert f.status == a.status == "optimal" and f.cost == a.cost
    mem = np.tile([16.0, 12.0, 8.0, 8.0, 6.0, 4.0], (120, 1))  # weight bits of the menu, roughly
    lim = 0.6 * mem.max(axis=1).sum()
    a = solve_mckp(list(g), list(c), b, memory=list(mem), max_memory=lim)
    f = solve_mckp_csr(off, g.ravel(), c.ravel(), b, memory=mem.ravel(), max_memory=lim)
    assert f.status == a.status and f.objective == a.objective
    # other dtypes and strides are converted once
    f = solve_mckp_csr(off.astype(np.int32), g.T.copy().T.reshape(-1), c.reshape(-1).astype(np.float32), b)
    assert f.status == "optimal"


def test_flat_bad_input_names_the_problem():
    off = np.array([0, 2, 2, 4], dtype=np.int64)
    g, c = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match="group 1 is empty"):
        solve_mckp_csr(off, g, c, 3.0)
    with pytest.raises(ValueError, match="group 1 is empty"):
        solve_mckp_csr(off, g, c, 3.0, solver="highs")
    off = np.array([0, 2, 4], dtype=np.int64)
    with pytest.raises(ValueError, match="gain of item 1 in group 1 is nan"):
        solve_mckp_csr(off, np.array([1.0, 2.0, 3.0, np.nan]), c, 3.0)
    with pytest.raises(ValueError, match="cost of item 0 in group 1 is negative"):
        solve_mckp_csr(off, g, np.array([1.0, 1.0, -1.0, 1.0]), 3.0)
    with pytest.raises(ValueError, match="offsets: expected a 1-D array"):
        solve_mckp_csr(off[None, :], g, c, 3.0)
    with pytest.raises(ValueError, match="offsets end at 4 but 5 items"):
        solve_mckp_csr(off, np.ones(5), np.ones(5), 3.0)
    with pytest.raises(ValueError, match="budgets\\[1\\] is nan"):
        sweep_mckp_csr(off, g, c, [1.0, float("nan")])


def test_single_solves_equal_the_fully_sorted_sweep():
    """A single solve orders its increments only around its split (and from 8,192 groups stores only those in a
    sampled bracket around it, the budgets near 0 and 1 putting the split at the bracket's edges); the sweep sorts
    them all: same optima."""
    for gains, costs in (generate(3000, 16, 1), generate(2000, 6, 2, family="llm_tied"), llm_int(3000, 8, 5),
                         llm_int(20000, 4, 6), classic("weak", 10000, 20, 1000, 3)):
        n, m = gains.shape
        off = np.arange(n + 1, dtype=np.int64) * m
        g, c = gains.reshape(-1), costs.reshape(-1)
        budgets = [threshold(costs, f) for f in (0.0, 0.001, 0.05, 0.3, 0.7, 0.999, 1.0)]
        sweep = sweep_mckp_csr(off, g, c, budgets)
        for b, s in zip(budgets, sweep):
            one = solve_mckp_csr(off, g, c, b)
            assert one.status == s.status == "optimal"
            assert one.objective == pytest.approx(s.objective, rel=1e-9, abs=0)
            assert exact_cost_le(list(costs), one.choice, b)
    # budgets exactly at LP breakpoints (the whole cheapest-first prefix of increments fits): integral LPs
    g, c = generate(500, 4, 9)
    for k in (1, 10, 250):
        b = float(np.sort(c[:, 1])[:k].sum())
        ref = sweep_mckp(list(g), list(c), [b])[0]
        assert solve_mckp(g, c, b).objective == pytest.approx(ref.objective, rel=1e-12)


@pytest.mark.parametrize("kind", ["unc", "weak", "strong", "llm"])
def test_integer_families_match_highs(kind):
    """Gains are integers here, so the solver prunes at z + 1: HiGHS at gap 0 must agree exactly."""
    pytest.importorskip("highspy")
    for seed in (1, 2):
        n = 20 if kind == "strong" else 60  # HiGHS needs minutes on larger strongly correlated ones
        g, c = llm_int(150, 6, seed) if kind == "llm" else classic(kind, n, 6, 1000, seed)
        b = threshold(c, 0.3)
        ref = solve_mckp(g, c, b, solver="highs", rel_gap=0.0, time_limit=60)
        n, m = g.shape
        ours = solve_mckp_csr(np.arange(n + 1, dtype=np.int64) * m, g.ravel(), c.ravel(), b, rel_gap=0.0)
        assert ours.status == "optimal" and ours.bound == ours.objective
        assert exact_cost_le(list(c), ours.choice, b)
        if ref.status == "optimal":
            assert ours.objective == ref.objective
        else:  # HiGHS gave no proof: its answer is still a lower bound
            assert ours.objective >= ref.objective


def test_integer_suite_instances_by_name():
    small = list(integer_suite(("unc_R1000_n100_m10", "llm_n224_m4")))
    assert [i.name for i in small] == ["unc_R1000_n100_m10", "llm_n224_m4"]
    for inst in small:
        assert inst.budget == round(inst.budget) and (inst.gains == np.round(inst.gains)).all()
        assert inst.gains.shape == ((100, 10) if inst.family == "unc" else (224, 4))


def test_large_instance_single_solve_sweep_and_permuted_items_agree():
    """At 50,000 groups the per-solve arrays pass the size where the core asks for huge pages and leaves them
    unfilled; the groups' items are out of cost order (the in-group sort path). Reversing every group's items and
    the fully sorted sweep must give the same optima, each within budget by an exact sum and below the LP bound."""
    from mpq import _core
    gains, costs = generate(50000, 8, 4)
    n, m = gains.shape
    off = np.arange(n + 1, dtype=np.int64) * m
    g, c = gains.reshape(-1), costs.reshape(-1)
    gr, cr = gains[:, ::-1].reshape(-1).copy(), costs[:, ::-1].reshape(-1).copy()
    budgets = [threshold(costs, f) for f in (0.02, 0.3, 0.8)]
    sweep = sweep_mckp_csr(off, g, c, budgets)
    for b, s in zip(budgets, sweep):
        one, rev = solve_mckp_csr(off, g, c, b), solve_mckp_csr(off, gr, cr, b)
        assert one.status == rev.status == s.status == "optimal"
        assert one.objective == pytest.approx(s.objective, rel=1e-12, abs=0)
        assert rev.objective == pytest.approx(one.objective, rel=1e-12, abs=0)
        assert exact_cost_le(list(costs), one.choice, b)
        assert exact_cost_le(list(costs), m - 1 - rev.choice, b)
        assert math.fsum(gains[np.arange(n), m - 1 - rev.choice]) == pytest.approx(rev.objective, rel=1e-12)
        assert one.objective <= _core.mckp_lp_bound(off, g, c, b) * (1 + 1e-12)
