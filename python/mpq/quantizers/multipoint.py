"""Multipoint quantization (Liu et al., "Post-training quantization with multiple points", AAAI 2021): a weight
row approximated by a sum of k low-bit vectors, W ≈ Σ_{p<k} a_p ⊙ q_p, built greedily from the residual.

Point p quantizes the residual r_p = W − Σ_{i<p} a_i q_i onto the candidate's own grid (``grid.rtn``: scale
amax / qmax per row or group, round to nearest even), and r_{p+1} = r_p − a_p q_p. With that scale every element
of r_{p+1} is at most a_p / 2 = amax(r_p) / (2·qmax): the error falls by 2·qmax (14 for int4) per point, the
exponential decay the paper proves; the paper searches a_p per point, the amax rule is its closed-form bound.
k = 1 is plain round-to-nearest. The weight is a function of W alone (no calibration data); which k each row
group gets is the channel selection's choice from the first-order costs of k = 1, 2, 3 (``selection.channels``).

For calibration's δ: Q_k(W) − W = −r_k = Q(r_{k−1}) − r_{k−1}, so the fused kernel run on the residual r_{k−1}
with the point's own quantizer gives ⟨G, Q_k(W) − W⟩ exactly (``residual``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .grid import dequantize, rtn


def multipoint(w: torch.Tensor, fmt: str, group_size: Optional[int], points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [points, out, in], scales float32 [points, out, groups]) of the greedy residual points."""
    if not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be a whole number >= 1, got {points!r}")
    r = w.detach().float()
    codes, scales = [], []
    for _ in range(points):
        q, s = rtn(r, fmt, group_size)
        codes.append(q)
        scales.append(s)
        r = r - dequantize(q, s)
    return torch.stack(codes), torch.stack(scales)


def residual(w: torch.Tensor, fmt: str, group_size: Optional[int], points: int) -> torch.Tensor:
    """r_points = W − Σ_{p<points} a_p q_p (r_0 = W)."""
    r = w.detach().float()
    for _ in range(points):
        q, s = rtn(r, fmt, group_size)
        r = r - dequantize(q, s)
    return r


def multipoint_weight(w: torch.Tensor, fmt: str, group_size: Optional[int], points: int) -> torch.Tensor:
    """Σ_p a_p q_p in w's dtype: the weight the k-point layer computes with."""
    codes, scales = multipoint(w, fmt, group_size, points)
    total = sum(dequantize(c, s) for c, s in zip(codes, scales))
    return total.to(w.dtype)
