"""A multipoint Linear on the CPU's common weight-only kernels: y = Σ_p x (a_p ⊙ q_p)ᵀ + b, the k points of
``quantizers.multipoint`` (greedy from the residual), in one of two layouts:

- "stacked": the k points' rows stacked into one [k·out, in] weight, one GEMM of the format's kernel
  (``torch._weight_int4pack_mm_for_cpu`` / ``torch._weight_int8pack_mm``, as ``native_cpu`` runs them), then the
  segment sum of the k output blocks;
- "points": k GEMMs of [out, in], summed.

Both read the same k·out·in codes; which is faster depends on the kernel's efficiency at the two widths, which
``bench/multipoint.py`` measures. Numerics: each point as its kernel computes it (bf16 activations and scales,
bf16 outputs summed in float32), so the error against Σ_p a_p q_p is the kernel's (2^-7 relative) per point.
"""
from __future__ import annotations

import torch
from torch import nn

from ..artifacts.quantized_weights import QuantizedWeight
from ..quantizers.multipoint import multipoint
from . import native_cpu as N

LAYOUTS = ("stacked", "points")
FORMATS = ("int4", "int8")


def _kernel_module(in_features: int, codes: torch.Tensor, scales: torch.Tensor, fmt: str) -> nn.Module:
    """The format's weight-only CPU module for stored codes [rows, in] and scales [rows, groups], no bias."""
    shape = nn.Linear(in_features, codes.shape[0], bias=False, device="meta")  # shapes only: the codes are given
    q = QuantizedWeight(codes.contiguous(), scales.contiguous())
    if fmt == "int4":
        return N.W4A16Linear(shape, q.group_size, "multipoint int4", q)
    return N.W8A16Linear(shape, q, "multipoint int8")


class MultipointLinear(nn.Module):
    """``points`` greedy residual points of ``linear``'s weight in ``fmt`` (int4 needs ``group_size``; int8 is per
    channel), run in ``layout`` (module docstring). Inference only, float32 in and out (bf16 / fp16 in: the
    same sums, rounded to that dtype)."""

    def __init__(self, linear: nn.Linear, fmt: str = "int4", group_size=128, points: int = 2,
                 layout: str = "stacked"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if fmt not in FORMATS:
            raise ValueError(f"multipoint runs on the {'/'.join(FORMATS)} weight-only kernels, not {fmt!r}")
        if fmt == "int8":
            group_size = None
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.points, self.layout, self.fmt = points, layout, fmt
        codes, scales = multipoint(linear.weight, fmt, group_size, points)   # [k, out, in], [k, out, groups]
        k, out, inp = codes.shape
        if layout == "stacked":
            self.parts = nn.ModuleList([_kernel_module(inp, codes.reshape(k * out, inp),
                                                       scales.reshape(k * out, -1), fmt)])
        else:
            self.parts = nn.ModuleList([_kernel_module(inp, codes[p], scales[p], fmt) for p in range(k)])
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.dtype in (torch.bfloat16, torch.float16)  # a bf16 / fp16 model: sum the points in float32
        xf = x.float() if half else x
        if self.layout == "stacked":
            y = self.parts[0](xf)
            y = y.reshape(*y.shape[:-1], self.points, self.out_features).sum(-2)
        else:
            y = self.parts[0](xf)
            for p in self.parts[1:]:
                y = y + p(xf)
        y = y if self.bias is None else y + self.bias
        return y.to(x.dtype) if half else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt} x {self.points} "
                f"points, layout={self.layout}")
