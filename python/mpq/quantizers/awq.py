"""AWQ (Lin, Tang, Tang, Yang, Dang, Han 2023, arXiv 2306.00978), per layer: scale every input channel j of W by
s_j = mean|x_j|^α (normalised by √(max s · min s), as AutoAWQ does), quantize W·diag(s) on the candidate's
grid by round-to-nearest, run the layer on x / s, and pick α on the grid {0, 1/n, ..., (n−1)/n} that minimises the
layer-output error ‖X Wᵀ − (X/s) Q(W s)ᵀ‖² = tr(ΔW H ΔWᵀ) over the calibration inputs (H = Σ x xᵀ, exact, no
activations kept). α = 0 is RTN, so AWQ never does worse than RTN on that error. Then, for formats in groups,
the weight step AutoAWQ does by clipping: here each (row, group) of W·diag(s) takes the full-range scale of
``ortn.optimized_rtn`` (all 16 int4 levels, the range shrunk or widened) that minimises that group's own output
error under the scaled inputs x / s. AutoAWQ clips on its asymmetric grid (a zero point: 16 levels too); on
mpq's symmetric grid its clipping alone left 15 levels, and the full-range search cut SmolLM2's all-INT4 g64
held-out loss MSE from 0.044 to 0.024 (bench/RESULTS.md). Differences from AutoAWQ: the errors are the layer's
own output (not the decoder block's) with the exact H = Σ x xᵀ (AutoAWQ samples tokens), and 1/s is applied to
the input instead of being folded into the preceding norm (per-layer choices cannot share a fold). Per-channel
formats get no search (a row's block is the whole H: in² work per row)."""
from __future__ import annotations

from typing import Optional

import torch

from .grid import dequantize, output_error, rtn


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
