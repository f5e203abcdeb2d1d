"""Fake-quantized attention modules: what ``mpq.apply(mode="fake")`` installs for a plan's attention entries.

``FakeQuantMatMul`` computes Q(A) @ Q(B) and ``FakeQuantKVCache`` Q(K) (or Q(V)), each with the candidate's
quantizer (``quantize.quantize_attention_input``), the one calibration's δ measured, and the plan's calibrated
static scales: a matmul's [A's, B's], a KV cache's [tensor's] or one per K/V head. They subclass ``MatMul`` and
``KVCache``, so the routed attention function (``interface``) runs them where it runs the plain ones. Gradients
pass straight through, as ``FakeQuantLinear``'s.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..candidates import Candidate
from .modules import KVCache, MatMul
from .quantize import quantize_attention_input


def _straight_through(c: Candidate, x: torch.Tensor, scales) -> torch.Tensor:
    xd = x.detach()
    q = quantize_attention_input(c, xd, scales)
    return x + (q - xd) if x.requires_grad else q  # the values of Q(x), the gradient of x


def check_scales(c: Candidate, kind: str, scales, heads: Optional[int] = None) -> Optional[list]:
    """The static scales ``c`` needs on a ``kind`` layer as a list of floats (None for a dynamic candidate).
    @raises ValueError saying how many scales the layer takes and what was given."""
    if not c.act_static:
        return None
    want = (2, "[A's, B's] (one per input)") if kind == "matmul" else \
        (heads, f"one per K/V head ({heads})") if c.act_granularity == "head" else (1, "[the tensor's]")
    if not isinstance(scales, (list, tuple)):
        raise ValueError(f"candidate {c.name!r} takes a list of static scales, {want[1]}, got {scales!r}")
    if want[0] is not None and len(scales) != want[0]:
        raise ValueError(f"candidate {c.name!r} takes {want[1]} static scales, got {len(scales)}")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
               for s in scales):
        raise ValueError(f"candidate {c.name!r}: static scales must be positive finite numbers, got {list(scales)}")
    return [float(s) for s in scales]


class FakeQuantMatMul(MatMul):
    """y = Q(A) @ Q(B) with ``candidate``'s quantizer; ``scales`` [A's, B's] for a static candidate."""

    def __init__(self, candidate: Candidate, scales: Optional[Sequence[float]] = None, token_axes=(2, 3)):
        super().__init__(token_axes)
        self.candidate = candidate
        self.scales = None if scales is None else [float(s) for s in scales]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sa, sb = ([self.scales[0]], [self.scales[1]]) if self.scales is not None else (None, None)
        return torch.matmul(_straight_through(self.candidate, a, sa), _straight_through(self.candidate, b, sb))

    def extra_repr(self) -> str:
        return f"candidate={self.candidate.name}, scales={self.scales}, token_axes={self.token_axes}"


class FakeQuantKVCache(KVCache):
    """Q(K) (or Q(V)) [B, H_kv, S, D] with ``candidate``'s quantizer; ``scales`` [tensor's] or one per K/V head for
    a static candidate."""

    def __init__(self, candidate: Candidate, scales: Optional[Sequence[float]] = None):
        super().__init__()
        self.candidate = candidate
        self.scales = None if scales is None else [float(s) for s in scales]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _straight_through(self.candidate, x, self.scales)

    def extra_repr(self) -> str:
        return f"candidate={self.candidate.name}, scales={self.scales}"
