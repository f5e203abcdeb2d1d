"""The reusable pieces of bench/selection_quality.py's baseline allocators against independent references:
Hutchinson's trace against the exact Hessian (torch.autograd.functional.hessian), OMPQ's ORM against linear CKA
written on centred features, and its LP + rounding against Dantzig's greedy solution of the same LP."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _hawq import hutchinson_trace  # noqa: E402
from _ompq import lp_weights, orm_matrix, solve_bits  # noqa: E402


def _mlp_loss(shapes, seed=0):
    """A two-layer tanh network's squared error as a function of its two weights (float64): not quadratic."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, shapes[0][1], generator=g, dtype=torch.float64)
    y = torch.randn(16, shapes[1][0], generator=g, dtype=torch.float64)

    def loss(w1, w2):
        return ((torch.tanh(x @ w1.T) @ w2.T - y) ** 2).mean()
    params = [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in shapes]
    return loss, params


def _exact_block_traces(loss, params):
    h = torch.autograd.functional.hessian(loss, tuple(p.detach() for p in params))
    return [float(torch.diagonal(h[i][i].reshape(p.numel(), p.numel())).sum()) for i, p in enumerate(params)]


def test_hutchinson_is_exact_on_a_diagonal_quadratic():
    # zᵀDz = tr D for every Rademacher z: one probe is exact, for either way of forming Hz
    d1 = torch.linspace(0.5, 3.0, 12, dtype=torch.float64).reshape(3, 4)
    d2 = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64).reshape(2, 3)
    p1 = torch.randn(3, 4, dtype=torch.float64).requires_grad_(True)
    p2 = torch.randn(2, 3, dtype=torch.float64).requires_grad_(True)
    before = [p1.detach().clone(), p2.detach().clone()]

    def loss_of():
        return 0.5 * ((d1 * p1 ** 2).sum() + (d2 * p2 ** 2).sum()) + (p1.sum() * 0.1)
    for method in ("double_backward", "finite_difference"):
        got = hutchinson_trace(loss_of, [p1, p2], 1, torch.Generator().manual_seed(1), method)
        np.testing.assert_allclose(got, [float(d1.sum()), float(d2.sum())], rtol=1e-6)
    assert torch.equal(p1.detach(), before[0]) and torch.equal(p2.detach(), before[1])


@pytest.mark.parametrize("method", ["double_backward", "finite_difference"])
def test_hutchinson_matches_the_exact_block_traces_of_a_tanh_network(method):
    loss, params = _mlp_loss([(5, 4), (3, 5)])
    exact = _exact_block_traces(loss, params)
    got = hutchinson_trace(lambda: loss(*params), params, 3000, torch.Generator().manual_seed(0), method)
    # the estimator's standard error at 3000 probes is ~1-2% here; off-diagonal blocks must not leak in
    np.testing.assert_allclose(got, exact, rtol=0.06)


def test_hutchinson_rejects_bad_arguments():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="method"):
        hutchinson_trace(lambda: (p ** 2).sum(), [p], 1, torch.Generator(), "exact")
    with pytest.raises(ValueError, match="probes"):
        hutchinson_trace(lambda: (p ** 2).sum(), [p], 0, torch.Generator())


def _linear_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float((x.T @ y).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_orm_is_linear_cka_symmetric_and_invariant_to_rotations():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    b = torch.randn(40, 9, generator=g, dtype=torch.float64)
    c = torch.cat([a[:, :3], b[:, :2]], dim=1) * 3.0 + 1.0
    feats = [a, a @ q, b, c]
    orm = orm_matrix(feats)
    assert orm.shape == (4, 4)
    np.testing.assert_allclose(orm, orm.T)
    np.testing.assert_allclose(np.diag(orm), 1.0)
    assert (orm >= 0).all() and (orm <= 1).all()
    assert orm[0, 1] == pytest.approx(1.0, abs=1e-6)  # an orthogonal map of the same features
    for i in range(4):
        for j in range(4):
            assert orm[i, j] == pytest.approx(_linear_cka(feats[i], feats[j]), abs=1e-5)


def test_orm_rejects_mismatched_or_constant_features():
    with pytest.raises(ValueError, match="same number of rows"):
        orm_matrix([torch.randn(5, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="constant"):
        orm_matrix([torch.ones(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)])


def _dantzig(weights, sizes, budget, b_min, b_max):
    """The LP's optimum by Dantzig's rule (raise the variables in decreasing w/size until the budget binds),
    with the one fractional variable rounded down: an independent solution of the same relaxation."""
    b = np.full(len(sizes), b_min, dtype=np.int64)
    left = budget - b_min * sizes.sum()
    for i in np.argsort(-weights / sizes, kind="stable"):
        step = (b_max - b_min) * sizes[i]
        if step <= left:
            b[i] = b_max
            left -= step
        else:
            break
    return b


def test_lp_rounding_agrees_with_dantzig_and_keeps_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 12))
        w = lp_weights(np.exp(-rng.uniform(0, 3, n)))
        sizes = rng.integers(10, 1000, n).astype(np.float64)
        budget = float(rng.uniform(4.0, 8.0) * sizes.sum())
        got = solve_bits(w, sizes, budget, 4, 8)
        assert float(got @ sizes) <= budget * (1 + 1e-12)
        assert set(got.tolist()) <= {4, 8}
        ref = _dantzig(w, sizes, budget, 4, 8)
        assert float(got @ w) >= float(ref @ w) - 1e-12  # the floor/ceil search never does worse than round-down
        # and it differs from round-down only by raising the fractional variable, when the budget allows it
        assert int((got != ref).sum()) <= 1 or float(got @ w) > float(ref @ w)


def test_lp_weights_are_tail_means_and_bad_budgets_are_refused():
    np.testing.assert_allclose(lp_weights(np.array([1.0, 2.0, 3.0])), [2.0, 2.5, 3.0])
    with pytest.raises(ValueError, match="below all layers"):
        solve_bits(np.ones(2), np.array([10.0, 10.0]), 70.0, 4, 8)
