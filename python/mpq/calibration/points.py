"""Multipoint candidates in calibration: their weight δ from the fused kernel run on the weight's residual.

A k-point candidate's weight is Σ_{p<k} a_p q_p, built greedily from the residual (``quantizers.multipoint``), so
Q_k(W) − W = −r_k = Q(r_{k−1}) − r_{k−1}: the candidate's point quantizer applied by the fused kernel to
T = r_{k−1} instead of W gives ⟨G_n, Q_k(W) − W⟩ exactly, from the same per-sample gradient. One kernel call per
distinct residual (format, group size, k − 1); single-point candidates share one call on W, as before.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..quantizers.multipoint import residual
from .kernel import delta_sums


def weight_terms(w: torch.Tensor, cands: Sequence) -> list:
    """[(tensor the kernel reads, positions in ``cands``)]: W for single-point candidates, r_{k−1} for the others."""
    groups: dict = {}
    for pos, c in enumerate(cands):
        key = None if c.points == 1 else (c.weight_format, c.group_size, c.points - 1)
        groups.setdefault(key, []).append(pos)
    return [(w if key is None else residual(w, *key).to(w.dtype), pos) for key, pos in groups.items()]


def weight_delta_parts(terms: list, quants: Sequence, gw: torch.Tensor, rows: int) -> torch.Tensor:
    """[k, groups of ``rows`` rows, len(quants)] float64: the kernel's sums for every term, in candidate order."""
    out = None
    for t, pos in terms:
        part = delta_sums(t, gw, [quants[i] for i in pos], rows).reshape(gw.shape[0], -1, len(pos))
        if out is None:
            out = torch.empty(gw.shape[0], part.shape[1], len(quants), dtype=part.dtype, device=part.device)
        out[:, :, pos] = part
    return out
