"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, arXiv 2210.17323): quantize the columns of W one by one and
spread each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
layer-output error, H = Σ x xᵀ (+ dampening). As in the reference implementation: dead inputs (H_jj = 0) get
weight 0, dampening 1% of mean(diag H), the upper Cholesky factor of H⁻¹, lazy batch updates in blocks of 128
columns. Group scales are taken from the group's current (already error-updated) weights when its first column
is reached (the reference's static_groups=False); per-channel scales from the whole W first. No act-order."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import format_info
from .grid import grid_scales


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, fmt: str, group_size: Optional[int] = None,
                  damp: float = 0.01, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [out, in], scales float32 [out, groups]) of GPTQ for w [out, in] with input Hessian h [in, in].
    @raises ValueError when h is not [in, in] or holds non-finite values, or the group size does not divide in."""
    out_f, in_f = w.shape
    if tuple(h.shape) != (in_f, in_f) or not bool(torch.isfinite(h).all()):
        raise ValueError(f"the Hessian must be a finite [{in_f}, {in_f}] matrix, got {tuple(h.shape)}")
    if group_size is not None and in_f % group_size:
        raise ValueError(f"group size {group_size} does not divide in_features {in_f}")
    if group_size is not None:
        block = max(group_size, block // group_size * group_size)  # groups never straddle two blocks
    W = w.detach().double().clone()
    H = h.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    qmax = float(format_info(fmt)["qmax"])
    groups = 1 if group_size is None else in_f // group_size
    scales = torch.empty(out_f, groups, dtype=torch.float32)
    if group_size is None:
        scales[:] = grid_scales(W, fmt, None)
    Q = torch.zeros_like(W)
    s = inv = None
    if group_size is None:
        s = scales[:, 0].double()
        inv = 1.0 / s
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size is not None and col % group_size == 0:
                scales[:, col // group_size] = grid_scales(W1[:, i:i + group_size], fmt, None)[:, 0]
                s = scales[:, col // group_size].double()
                inv = 1.0 / s
            w = W1[:, i]
            q = torch.round(w * inv).clamp_(-qmax, qmax)
            Q[:, col] = q
            err = (w - q * s).div_(U1[i, i])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q.to(torch.int8), scales
