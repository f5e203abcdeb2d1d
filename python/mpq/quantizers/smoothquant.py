"""SmoothQuant (Xiao, Lin, Seznec, Wu, Demouth, Han 2022, arXiv 2211.10438): per input channel j,
s_j = max|x_j|^α / max|W_{:,j}|^(1−α) (α = 0.5), so that X/s has its outlier channels flattened and W·diag(s)
takes them on; (X/s)(W s)ᵀ = X Wᵀ exactly before quantization. Channels that never fire or have a zero weight
column keep s_j = 1. The 1/s runs on the layer input (per-layer choices cannot share a fold into the norm)."""
from __future__ import annotations

import torch


def smoothquant_scales(w: torch.Tensor, x_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """float32 [in] migration factors s for w [out, in] and the per-input-channel max |x| of the calibration data."""
    wmax = w.detach().float().abs().amax(dim=0)
    xmax = x_absmax.detach().float()
    ok = (xmax > 0) & (wmax > 0) & torch.isfinite(xmax)
    s = torch.ones_like(wmax)
    s[ok] = (xmax[ok].pow(alpha) / wmax[ok].pow(1 - alpha)).clamp(min=1e-5, max=1e5)
    return s.contiguous()
