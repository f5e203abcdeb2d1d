"""OMPQ's allocator, a baseline of bench/selection_quality.py (issue 20, item 6).

OMPQ (Ma et al., "OMPQ: Orthogonal Mixed Precision Quantization", AAAI 2023) needs no loss and no labels: one
unlabelled batch through the full-precision model gives every layer's output features X_l (tokens × d_l); the
orthogonality metric ORM(X_i, X_j) = ⟨K̃_i, K̃_j⟩_F / (‖K̃_i‖_F ‖K̃_j‖_F), K = X Xᵀ double-centred (linear CKA, in
[0, 1]); a layer's importance θ_i = exp(−β γ_i), γ_i = Σ_{j≠i} ORM_ij (a layer orthogonal to the rest matters
more); and a linear program over relaxed bit-widths

    maximise Σ_i b_i · w_i,  w_i = (1 / (L − i + 1)) Σ_{j≥i} θ_j  (layers in network order),
    subject to Σ_i b_i |W_i| ≤ budget,  b_min ≤ b_i ≤ b_max,

rounded to integer widths under the budget (the published code: a search over floor / ceil of the relaxed widths
that stays within budget, else round-to-nearest). Here the LP is solved exactly by HiGHS (highspy, the project's
fallback solver; the published code uses SLSQP on the same LP) and rounded by an exhaustive floor / ceil search over the fractional
variables (a vertex of this LP has at most one), falling back to round-down beyond 16 of them.

Choices the source leaves open, for an LLM: the features are the Linear layers' outputs (before any residual
add, where residual-stream features would make every ORM ≈ 1); tied layers (q/k/v, gate/up) are one variable
whose weight is the sum of its members' and whose size is theirs together; the relaxed widths span the two
widths around the budget (the paper's PTQ range is 2–4 bits, its QAT range 4–8).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn


def layer_features(model: nn.Module, layers: Sequence[str], batch: dict) -> list[torch.Tensor]:
    """[tokens, d_out] float64 output of each named Linear on one batch, padding tokens left out."""
    modules = dict(model.named_modules())
    keep = batch["attention_mask"].reshape(-1).bool()
    feats: dict = {}
    handles = [modules[n].register_forward_hook(
        lambda m, a, out, n=n: feats.__setitem__(n, out.detach().reshape(-1, out.shape[-1])[keep].double()))
        for n in layers]
    try:
        with torch.inference_mode():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [feats[n] for n in layers]


def orm_matrix(features: Sequence[torch.Tensor]) -> np.ndarray:
    """[L, L] ORM_ij = ⟨K̃_i, K̃_j⟩_F / (‖K̃_i‖_F ‖K̃_j‖_F), K_i = X_i X_iᵀ double-centred: symmetric, diagonal 1,
    entries in [0, 1]. All X_i share their number of rows (the same tokens)."""
    n = features[0].shape[0]
    if any(f.shape[0] != n for f in features):
        raise ValueError("every layer's features must have the same number of rows (the same samples)")
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    flat = []
    for x in features:
        gram = x @ x.T
        k = h @ gram @ h
        norm = torch.linalg.matrix_norm(k)
        if not float(norm) > 1e-12 * float(torch.linalg.matrix_norm(gram)):  # centring left only rounding
            raise ValueError("a layer's features are constant over the batch: its ORM is undefined")
        flat.append((k / norm).reshape(-1).float())  # float32 for the L × n² product; unit norm keeps it exact enough
    f = torch.stack(flat)
    orm = (f @ f.T).double().numpy()
    orm = np.clip((orm + orm.T) / 2, 0.0, 1.0)
    np.fill_diagonal(orm, 1.0)
    return orm


def importance(orm: np.ndarray, beta: float) -> np.ndarray:
    """θ_i = exp(−β Σ_{j≠i} ORM_ij)."""
    gamma = orm.sum(axis=1) - np.diag(orm)
    return np.exp(-beta * gamma)


def lp_weights(theta: np.ndarray) -> np.ndarray:
    """w_i = mean of θ_j over j ≥ i (the layer and every deeper one, in network order)."""
    tail = np.cumsum(theta[::-1])[::-1]
    return tail / np.arange(len(theta), 0, -1)


def _lp_relaxation(weights, sizes, budget_bits, b_min, b_max) -> np.ndarray:
    """argmax Σ b_i w_i subject to Σ b_i sizes_i ≤ budget_bits, b_min ≤ b_i ≤ b_max, by HiGHS's LP solver."""
    import highspy
    n = len(sizes)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, 1
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = weights
    lp.col_lower_, lp.col_upper_ = np.full(n, float(b_min)), np.full(n, float(b_max))
    lp.row_lower_, lp.row_upper_ = np.array([-highspy.kHighsInf]), np.array([float(budget_bits)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(n + 1, dtype=np.int32)
    lp.a_matrix_.index_ = np.zeros(n, dtype=np.int32)
    lp.a_matrix_.value_ = sizes
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise ValueError(f"OMPQ's LP did not solve: {h.modelStatusToString(status)}")
    return np.asarray(h.getSolution().col_value, np.float64)


def solve_bits(weights: np.ndarray, sizes: np.ndarray, budget_bits: float, b_min: int, b_max: int) -> np.ndarray:
    """Integer widths in {b_min, b_max} (per variable) maximising Σ b_i w_i with Σ b_i sizes_i ≤ budget_bits:
    the LP relaxation b_i ∈ [b_min, b_max] by HiGHS, then the best floor / ceil rounding within the budget.
    @raises ValueError when even all-b_min exceeds the budget."""
    sizes = np.asarray(sizes, np.float64)
    if b_min * sizes.sum() > budget_bits * (1 + 1e-12):
        raise ValueError(f"budget {budget_bits:g} bits is below all layers at {b_min} bits ({b_min * sizes.sum():g})")
    b = _lp_relaxation(np.asarray(weights, np.float64), sizes, budget_bits, b_min, b_max)
    span = b_max - b_min
    frac = [i for i in range(len(b)) if 1e-9 < (b[i] - b_min) / span < 1 - 1e-9]
    base = np.where((b - b_min) / span >= 1 - 1e-9, b_max, b_min).astype(np.int64)
    if len(frac) > 16:  # not a vertex (degenerate ties): round the fractional ones down, always within budget
        return base
    best, best_val = base.copy(), -math.inf
    for ups in itertools.product((b_min, b_max), repeat=len(frac)):
        cand = base.copy()
        cand[frac] = ups
        if float(cand @ sizes) <= budget_bits * (1 + 1e-12):
            val = float(cand @ weights)
            if val > best_val:
                best, best_val = cand, val
    return best
