"""Alternative per-(sample, layer, candidate) sensitivity scores, computed in the same calibration pass as δ.

The seed's score (``first_order``) is q[n,l,c] = δ[n,l,c]², δ the whole sequence's first-order loss change. Two
other forms come from the same output gradient G = ∂ℓ_n/∂Y and input X of each Linear call, asked for with
``calibrate(..., scores=...)``:

  per_token    q = Σ_t δ_t²,  δ_t = Σ_o G[t,o] · D[t,o],  D = X ΔWᵀ + ΔX Wᵀ  (δ = Σ_t δ_t: the same first-order
               term, split by token; the cross-token products δ_t δ_t' are dropped)
  elementwise  q = Σ_t Σ_o (G[t,o] · ΔY[t,o])²,  ΔY = Q(X) Q(W)ᵀ − X Wᵀ = D + ΔX ΔWᵀ  (the whole output change of
               the quantized layer, weight and activation quantized together)

``elementwise`` is NVIDIA ModelOpt's AutoQuantize gradient score (method="gradient"): ModelOpt runs each quantized
module's forward once more with its recipe active, keeps output_diff = Y_q − Y, and in a full backward hook adds
``(grad_output * output_diff).square().sum()`` (its ``_get_auto_quantize_score``), a diagonal empirical-Fisher
stand-in for ½ ΔYᵀ H ΔY. Here the sum is kept per sample instead of per batch, and ΔY is formed from its three
parts (no difference of two large outputs in float32).

Each score is additive over layers by construction (a per-layer number per sample), so a plan's cost stays a sum and
the MCKP solve stays exact. Neither form is in loss-MSE units (the element-wise form drops every cross product);
``SensitivityTable`` maps them there with one scale per table (``score_scale``). Only computed when asked: the
default pass never calls into this file.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifacts.sensitivity_table import FIRST_ORDER, SCORE_FORMS as SCORES

EXTRA = SCORES[1:]  # the forms kept besides δ (which is always computed)


def check_scores(scores) -> tuple[str, ...]:
    """The requested forms as a tuple, the first being the one a table reports. @raises ValueError."""
    if isinstance(scores, str):
        scores = (scores,)
    out = tuple(scores)
    if not out:
        raise ValueError(f"scores is empty: name at least one of {', '.join(SCORES)}")
    bad = [s for s in out if s not in SCORES]
    if bad:
        raise ValueError(f"unknown score(s) {bad}: choose from {', '.join(SCORES)}")
    if len(set(out)) != len(out):
        raise ValueError(f"scores names a form twice: {list(out)}")
    return out


class ExtraScores:
    """Per-batch accumulators [B, L, C] of the extra forms; ``add_call`` is called from a Linear's output-gradient
    hook (``hooks._Call.on_grad_y``) with that call's G, X and W."""

    def __init__(self, forms: Sequence[str], n_layers: int, n_cands: int):
        self.forms = tuple(f for f in forms if f in EXTRA)
        self.shape = (n_layers, n_cands)
        self.batch = {}
        self.kept = {f: [] for f in self.forms}

    def start(self, samples: int) -> None:
        self.batch = {f: np.zeros((samples,) + self.shape) for f in self.forms}

    def finish(self) -> None:
        for f in self.forms:
            self.kept[f].append(self.batch[f])

    def stacked(self) -> list[np.ndarray]:
        return [np.concatenate(self.kept[f]) if self.kept[f] else np.zeros((0,) + self.shape) for f in self.forms]

    @torch.no_grad()
    def add_call(self, layer, g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
        """g [B, T, out], x [B, T, in], w [out, in] (float32) of one call of ``layer`` (a ``hooks._Layer``)."""
        act = dict(zip(layer.a_idx, layer.a_quants))
        parts = []  # (column, ΔW, ΔX or None)
        for j, wq in zip(layer.w_idx, layer.w_quants):
            aq = act.get(j)
            dx = None if aq is None else aq.apply(x.reshape(-1, x.shape[-1])).reshape(x.shape) - x
            parts.append((j, wq.apply(w) - w, dx))
        for j, q, aq in layer.calibrated:  # deployed Y_q = Q(x/s) Dᵀ = (Q(x/s)·s)(D/s)ᵀ: ΔX = Q(x/s)·s − x
            dw = q.effective_weight().to(w.device).float() - w
            dx = None
            if aq is not None:
                s = q.input_scale.to(x.device).float()
                dx = aq.apply((x / s).reshape(-1, x.shape[-1])).reshape(x.shape) * s - x
            parts.append((j, dw, dx))
        for j, dw, dx in parts:
            d1 = F.linear(x, dw) if dx is None else F.linear(x, dw) + F.linear(dx, w)
            for f, v in call_scores(self.forms, g, d1, dx, dw).items():
                self.batch[f][:, layer.index, j] += v.cpu().numpy()


def call_scores(forms, g: torch.Tensor, d1: torch.Tensor, dx, dw: torch.Tensor) -> dict:
    """{form: [B] float64} for one candidate of one call: d1 = X ΔWᵀ + ΔX Wᵀ (the first-order output change),
    dx = ΔX or None (weight-only), dw = ΔW."""
    out = {}
    if "per_token" in forms:
        out["per_token"] = (g * d1).sum(-1, dtype=torch.float64).square().sum(-1)
    if "elementwise" in forms:
        dy = d1 if dx is None else d1 + F.linear(dx, dw)
        out["elementwise"] = (g * dy).square().sum((1, 2), dtype=torch.float64)
    return out
