"""The symmetric integer grid all three algorithms quantize onto: the candidate's own scale rule
(``mpq.formats.compute_scales``: amax / qmax per channel or group) and round-to-nearest-even codes."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import compute_scales, format_info


def grid_scales(w: torch.Tensor, fmt: str, group_size: Optional[int]) -> torch.Tensor:
    """float32 [out, groups] scales of w [out, in] (groups = 1 per channel), as the candidate computes them."""
    w = w.float().contiguous()
    if group_size is None:
        s, _ = compute_scales(w, fmt, axis=0)
        return s.reshape(-1, 1)
    s, _ = compute_scales(w, fmt, group_size=group_size)
    return s.reshape(w.shape[0], w.shape[1] // group_size)


def codes_for(w: torch.Tensor, scales: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round-to-nearest codes of w [out, k] against per-row scales [out, 1] or per-group ones [out, groups]."""
    qmax = format_info(fmt)["qmax"]
    out, k = w.shape
    g = scales.shape[1]
    inv = (1.0 / scales.to(w.dtype)).unsqueeze(-1)
    q = torch.round(w.reshape(out, g, k // g) * inv).clamp(-qmax, qmax)
    return q.reshape(out, k)


def rtn(w: torch.Tensor, fmt: str, group_size: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, scales float32) of round-to-nearest: the grid the algorithms start from."""
    s = grid_scales(w, fmt, group_size)
    return codes_for(w.float(), s, fmt).to(torch.int8), s


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out, k = codes.shape
    g = scales.shape[1]
    return (codes.float().reshape(out, g, k // g) * scales.unsqueeze(-1)).reshape(out, k)


def output_error(delta_w: torch.Tensor, h: torch.Tensor) -> float:
    """Σ_tokens ‖x ΔWᵀ‖² = tr(ΔW H ΔWᵀ) with H = Σ x xᵀ: the layer-output error the algorithms minimise."""
    d = delta_w.float()
    return float(((d @ h.float()) * d).sum(dtype=torch.float64))


def timing_stand_in(linear, cand):
    """A QuantizedWeight of ``cand``'s shapes with RTN codes and (AWQ, SmoothQuant) a unit input scale: what a
    timing backend runs, the kernels' work being the same whatever the integers. Never used for accuracy."""
    from ..artifacts.quantized_weights import QuantizedWeight
    codes, scales = rtn(linear.weight.detach().to("cpu", torch.float32), cand.weight_format, cand.group_size)
    xs = None if cand.algorithm == "gptq" else torch.ones(linear.in_features)
    return QuantizedWeight(codes, scales, xs)
