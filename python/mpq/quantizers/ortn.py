"""Optimized round-to-nearest on the full signed range (llama.cpp's ``make_qx_quants``, AutoRound's opt-RTN), per
(row, group): the value of largest magnitude w_m is mapped to the grid's extra negative level −(qmax+1) (−8 for
int4), scale = −w_m / (qmax + 1 − t), so that 2^b levels are used instead of the symmetric grid's 2^b − 1 (the
scale is negative when w_m is positive); codes round(w / scale) clamped to [−(qmax+1), qmax]. The offset t runs
over a grid (t > 0: a coarser step, t < 0: w_m and its neighbours clipped) and each (row, group) keeps the t, or
the symmetric round-to-nearest grid itself, with the least output error d H_gg dᵀ of its own block (H = Σ x xᵀ of
the calibration inputs, exact; AutoRound weights by the diagonal only). Round-to-nearest is one of the choices, so
no group does worse than RTN on its own error. On SmolLM2's int4 groups of 64 the full range alone cuts the weight
error to ~0.76× of RTN's, a weight-error search to ~0.64× (clipping on the symmetric grid: ~0.84×); all-INT4
held-out loss MSE 0.219 → 0.044 (bench/RESULTS.md).

Stored as every calibrated weight is (``QuantizedWeight``): int8 codes in [−8, 7] for int4, float32 scales that
may be negative; the int4 kernels store codes + 8 as unsigned nibbles, so −8 runs natively."""
from __future__ import annotations

import torch

from ..formats import format_info
from .grid import codes_for, grid_scales


def full_range_codes(w: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """Codes of w [out, k] against (possibly negative) per-group scales [out, groups] on [−(qmax+1), qmax]."""
    out, k = w.shape
    g = scales.shape[1]
    q = torch.round(w.reshape(out, g, k // g) / scales.to(w.dtype).unsqueeze(-1)).clamp(-qmax - 1, qmax)
    return q.reshape(out, k)


def optimized_rtn(w: torch.Tensor, h: torch.Tensor, fmt: str, group_size: int, n_grid: int = 33,
                  max_offset: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, scales float32) of ``w`` [out, in] in groups of ``group_size`` (module docstring): offsets t in
    ``n_grid`` steps over [−max_offset, max_offset], plus the symmetric RTN grid, each (row, group) taking the least
    d H_gg dᵀ."""
    w = w.detach().float()
    out, k = w.shape
    ng = k // group_size
    qmax = int(format_info(fmt)["qmax"])
    wg = w.reshape(out, ng, group_size)
    peak = torch.take_along_dim(wg, wg.abs().argmax(-1, keepdim=True), -1)[..., 0]  # w_m, signed, [out, ng]
    peak = torch.where(peak == 0, torch.ones_like(peak), peak)  # an all-zero group: any scale gives zero codes
    hb = h.detach().double().reshape(ng, group_size, ng, group_size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    w64 = wg.double()

    def error(codes, scales):
        d = (codes.double().reshape(out, ng, group_size) * scales.double().unsqueeze(-1) - w64).permute(1, 0, 2)
        return (torch.bmm(d, hb) * d).sum(-1).t()  # [out, ng]

    best_scales = grid_scales(w, fmt, group_size)  # round-to-nearest first: the search never ends worse
    best_codes = codes_for(w, best_scales, fmt)
    best_err = error(best_codes, best_scales)
    for t in torch.linspace(-max_offset, max_offset, n_grid).tolist():
        scales = -peak / (qmax + 1 - t)
        codes = full_range_codes(w, scales, qmax)
        err = error(codes, scales)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scales = torch.where(better, scales, best_scales)
        best_codes = torch.where(better.unsqueeze(-1), codes.reshape(out, ng, group_size),
                                 best_codes.reshape(out, ng, group_size)).reshape(out, k)
    return best_codes.to(torch.int8), best_scales.contiguous()
