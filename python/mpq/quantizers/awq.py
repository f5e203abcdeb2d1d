"""AWQ (Lin, Tang, Tang, Yang, Dang, Han 2023, arXiv 2306.00978), per layer: scale every input channel j of W by
s_j = mean|x_j|^α (normalised by √(max s · min s), as AutoAWQ does), quantize W·diag(s) on the candidate's
grid by round-to-nearest, run the layer on x / s, and pick α on the grid {0, 1/n, ..., (n−1)/n} that minimises the
layer-output error ‖X Wᵀ − (X/s) Q(W s)ᵀ‖² = tr(ΔW H ΔWᵀ) over the calibration inputs (H = Σ x xᵀ, exact, no
activations kept). α = 0 is RTN, so AWQ never does worse than RTN on that error. Then, for formats in groups,
AutoAWQ's weight clipping (``clip_search``): each (row, group) of W·diag(s) takes the shrunk range r · amax,
r in {1, 0.95, ..., 0.55}, that minimises that group's own output error. Differences from AutoAWQ: the errors
are the layer's own output (not the decoder block's) with the exact H = Σ x xᵀ (AutoAWQ samples tokens), and 1/s
is applied to the input instead of being folded into the preceding norm (per-layer choices cannot share a fold).
Per-channel formats get no clipping search (a row's block is the whole H: in² work per row)."""
from __future__ import annotations

from typing import Optional

import torch

from .grid import codes_for, dequantize, grid_scales, output_error, rtn


def awq_scales(w: torch.Tensor, h: torch.Tensor, x_absmean: torch.Tensor, fmt: str,
               group_size: Optional[int] = None, n_grid: int = 20):
    """(codes int8, scales float32, input_scale float32 [in], α, error) of the best α; input_scale is all ones at
    α = 0 (then it is RTN)."""
    w = w.detach().float()
    mean = x_absmean.detach().float().clamp(min=1e-8)
    best = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = mean.pow(alpha)
        s = (s / torch.sqrt(s.max() * s.min())).clamp(min=1e-4)
        codes, scales = rtn(w * s, fmt, group_size)
        err = output_error(dequantize(codes, scales) / s - w, h)
        if best is None or err < best[4]:
            best = (codes, scales, s.contiguous(), alpha, err)
    return best


def clip_search(w: torch.Tensor, h: torch.Tensor, fmt: str, group_size: int, n_grid: int = 20,
                max_shrink: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, scales float32) of ``w`` [out, in] in groups of ``group_size``: each (row, group) keeps the
    ratio r = 1 - i/n_grid (i < n_grid·max_shrink, AutoAWQ's grid) of its round-to-nearest scale that minimises
    d H_gg dᵀ, d = Q_r(w_og) - w_og, H_gg the group's block of ``h`` (the inputs' Σ x xᵀ). r = 1 is RTN, so no
    group does worse than RTN on its own error."""
    w = w.detach().float()
    out, k = w.shape
    ng = k // group_size
    base = grid_scales(w, fmt, group_size)
    # the diagonal blocks of H, [ng, G, G], in float64: the ratios are compared group by group
    hb = h.detach().double().reshape(ng, group_size, ng, group_size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    wg = w.double().reshape(out, ng, group_size)
    best_codes = best_scales = best_err = None
    for i in range(int(n_grid * max_shrink)):
        scales = base * (1.0 - i / n_grid)
        codes = codes_for(w, scales, fmt)
        d = (codes.double().reshape(out, ng, group_size) * scales.double().unsqueeze(-1) - wg).permute(1, 0, 2)
        err = (torch.bmm(d, hb) * d).sum(-1).t()  # [out, ng]
        if best_err is None:
            best_codes, best_scales, best_err = codes.reshape(out, ng, group_size), scales.clone(), err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scales = torch.where(better, scales, best_scales)
        best_codes = torch.where(better.unsqueeze(-1), codes.reshape(out, ng, group_size), best_codes)
    return best_codes.reshape(out, k).to(torch.int8), best_scales
