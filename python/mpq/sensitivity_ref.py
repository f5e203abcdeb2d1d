"""Plain-torch reference of the fused sensitivity kernel (``cpp/include/mpq/sensitivity.hpp``): used on devices
other than the CPU, for non-float32 tensors, and by the tests. It materialises Q_c(T) with ``mpq.fake_quantize``
(the deployment quantizer) and sums in float64; it shares no code with the C++ kernel."""
from __future__ import annotations

from typing import Sequence

import torch


def delta_sums(t: torch.Tensor, g: torch.Tensor, quants: Sequence, sample_rows: int) -> torch.Tensor:
    """out[k, b, c] = Σ_{rows of block b} g[k] ⊙ (Q_c(t) − t) in float64. t: [rows, cols]; g: [K, rows, cols]."""
    rows, cols = t.shape
    g3 = g.unsqueeze(0) if g.dim() == 2 else g
    t = t.detach()
    n_blocks = rows // sample_rows
    gd = g3.detach().to(torch.float64)
    out = torch.zeros(g3.shape[0], n_blocks, len(quants), dtype=torch.float64, device=t.device)
    td = t.to(torch.float64)
    for c, q in enumerate(quants):
        d = q.apply(t).to(torch.float64) - td
        out[:, :, c] = (gd * d).reshape(g3.shape[0], n_blocks, -1).sum(-1)
    return out
