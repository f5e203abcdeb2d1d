"""The fused sensitivity kernel from Python: Σ G ⊙ (Q_c(T) − T) per sample, for every candidate quantizer at once.

A ``TensorQuant`` says how one candidate quantizes a 2-D tensor T [rows, cols] — exactly as ``Candidate``
quantizes a Linear weight (rows = output channels) or its input (rows = tokens). ``delta_sums`` runs the C++
kernel on the CPU for float32 tensors and the plain-torch reference (``mpq.sensitivity_ref``) elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..candidates import Candidate
from ..formats import format_info

GRANULARITIES = ("tensor", "row", "group")


@dataclass(frozen=True)
class TensorQuant:
    """Q for a 2-D tensor: one scale per tensor, per row, or per ``group_size`` consecutive values of a row.
    ``scale`` (with ``zero_point`` for asymmetric formats) fixes a per-tensor scale (static activations);
    otherwise scales come from the values by the format's default rule, as ``mpq.fake_quantize`` computes them."""

    fmt: str
    granularity: str = "tensor"
    group_size: Optional[int] = None
    scale: Optional[float] = None
    zero_point: Optional[float] = None

    def __post_init__(self):
        format_info(self.fmt)  # ValueError if unknown
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError("group_size goes with granularity='group' only")
        if self.scale is not None and self.granularity != "tensor":
            raise ValueError("an explicit scale is per tensor")

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Q(t) for a 2-D tensor, through ``mpq.fake_quantize`` (the deployment quantizer)."""
        from ..formats import fake_quantize
        if self.granularity == "row":
            return fake_quantize(t, self.fmt, axis=0)
        if self.granularity == "group":
            return fake_quantize(t, self.fmt, group_size=self.group_size)
        if self.scale is not None:
            return fake_quantize(t, self.fmt, scale=self.scale, zero_point=self.zero_point)
        return fake_quantize(t, self.fmt)

    def core_spec(self, rows: int, cols: int) -> tuple:
        """The (format, block, rule, scales, zero_points) tuple of ``mpq._core.sensitivity``."""
        block = {"tensor": rows * cols, "row": cols, "group": self.group_size}[self.granularity]
        if self.granularity == "group" and cols % self.group_size:
            raise ValueError(f"group_size {self.group_size} does not divide {cols} columns")
        if self.scale is None:
            scales = zps = np.zeros(0, np.float32)
        else:
            scales = np.array([self.scale], np.float32)
            zps = np.array([0.0 if self.zero_point is None else self.zero_point], np.float32)
        return (self.fmt, block, format_info(self.fmt)["default_rule"], scales, zps)


def weight_quant(c: Candidate) -> TensorQuant:
    """How candidate ``c`` quantizes a Linear weight [out, in] (``Candidate.quantize_weight``)."""
    if "linear" not in c.kinds:
        raise ValueError(f"candidate {c.name!r} is for {'/'.join(c.kinds)} layers, not Linear weights")
    gran = {"tensor": "tensor", "channel": "row", "group": "group"}[c.weight_granularity]
    return TensorQuant(c.weight_format, gran, c.group_size)


def act_quant(c: Candidate, static_scale: Optional[float] = None) -> Optional[TensorQuant]:
    """How candidate ``c`` quantizes a Linear input flattened to [tokens, in] (``Candidate.quantize_act``);
    None for weight-only candidates. (Attention's layouts: ``calibration.attention``.)"""
    if "linear" not in c.kinds:
        raise ValueError(f"candidate {c.name!r} is for {'/'.join(c.kinds)} layers, not Linear inputs")
    if c.act_format is None:
        return None
    if c.act_static:
        if static_scale is None:
            raise ValueError(f"candidate {c.name!r} has static activation scales: a calibrated scale is needed")
        return TensorQuant(c.act_format, "tensor", scale=float(static_scale))
    return TensorQuant(c.act_format, "row" if c.act_granularity == "token" else "tensor")


_CORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def delta_sums(t: torch.Tensor, g: torch.Tensor, quants: Sequence[TensorQuant], sample_rows: int,
               num_threads: Optional[int] = None, use_core: Optional[bool] = None) -> torch.Tensor:
    """out[k, b, c] = Σ over rows of block b of g[k] ⊙ (Q_c(t) − t), float64 on t's device.

    t: [rows, cols]; g: [rows, cols] (one gradient) or [K, rows, cols]; row block b = rows [b·sample_rows,
    (b+1)·sample_rows). The C++ kernel runs for float32, bf16 and fp16 CPU tensors (the halves widened to float32,
    exactly; GIL released), the torch reference otherwise.
    """
    if t.dim() != 2:
        raise ValueError(f"t must be 2-D [rows, cols], got shape {tuple(t.shape)}")
    g3 = g.unsqueeze(0) if g.dim() == 2 else g
    if g3.dim() != 3 or g3.shape[1:] != t.shape:
        raise ValueError(f"g must have t's shape {tuple(t.shape)} (or [K, *that]), got {tuple(g.shape)}")
    rows, cols = t.shape
    if sample_rows <= 0 or rows % sample_rows:
        raise ValueError(f"sample_rows = {sample_rows} must be positive and divide rows = {rows}")
    if use_core is None:  # a bf16 / fp16 model's tensors go widened to float32 (exact): Q of the same values the
        # native modules quantize (they widen too), not Q rounded to the model's dtype
        use_core = t.device.type == "cpu" and t.dtype in _CORE_DTYPES and g3.dtype in _CORE_DTYPES
    if not use_core:
        from ..reference import delta_sums as ref
        return ref(t, g3, quants, sample_rows)
    from .. import _core
    tc = t.detach().float().contiguous()
    gc = g3.detach().float().contiguous()
    specs = [q.core_spec(rows, cols) for q in quants]
    threads = torch.get_num_threads() if num_threads is None else num_threads
    out = _core.sensitivity(tc.reshape(-1).numpy(), gc.reshape(-1).numpy(), rows, cols, g3.shape[0], sample_rows,
                            specs, threads)
    return torch.from_numpy(out)
