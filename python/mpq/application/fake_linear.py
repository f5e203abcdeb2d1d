"""``FakeQuantLinear``: a Linear run with a candidate's quantizers in floating point (the "fake" mode of
``mpq.apply``; also each precision class of a channel-split Linear)."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import nn

from ..candidates import Candidate

__all__ = ["FakeQuantLinear"]


class FakeQuantLinear(nn.Module):
    """y = linear(Q_act(x / s), Q(W), b): Q(W) the candidate's RTN weight, or for a calibrated-weight candidate the
    stored integers times their scales (``quantized``), with s its per-input-channel factor (AWQ, SmoothQuant)."""

    def __init__(self, linear: nn.Linear, cand: Candidate, act_scale: Optional[float] = None, quantized=None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.candidate = cand
        w = linear.weight.detach()
        self.register_buffer("weight", cand.quantize_weight(w) if quantized is None else
                             quantized.dequantized().to(w.device, w.dtype))
        self.register_buffer("input_scale", None if quantized is None or quantized.input_scale is None else
                             quantized.input_scale.to(w.device, w.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.act_scale = act_scale

    def forward(self, x):
        if self.input_scale is not None:
            x = x / self.input_scale
        xd = x.detach()
        q = self.candidate.quantize_act(xd, self.act_scale)
        if x.requires_grad:  # straight-through: the values of Q(x), the gradient of x
            q = x + (q - xd)
        return F.linear(q, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, candidate={self.candidate.name}"
