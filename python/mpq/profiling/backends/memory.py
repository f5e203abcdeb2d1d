"""The ``memory`` backend: bytes of Linear weights saved by a configuration (gain = base bytes − candidate bytes).

Bytes of a Linear [N, K] in a candidate: N·K·bits/8 for the weight elements plus 4 bytes (fp32) per scale: one per
tensor, per output channel, or per group of ``group_size`` inputs; base: N·K times the model's element size.
Biases and activations are not counted (they do not change)."""
from __future__ import annotations

from typing import Optional

from ...candidates import BASE, get_candidate
from .base import TheoreticalBackend


class MemoryBackend(TheoreticalBackend):
    name = "memory"
    unit = "bytes"
    kernels = {"*": "bytes"}

    def layer_cost(self, shape, candidate: str, *, device: Optional[str] = None, element_size: int = 4) -> float:
        _, k, n = shape
        if candidate == BASE:
            return float(n * k * element_size)
        c = get_candidate(candidate)
        elems = n * k * c.weight_bits / 8
        if c.weight_granularity == "tensor":
            scales = 1
        elif c.weight_granularity == "channel":
            scales = n
        else:
            scales = n * (k // c.group_size)
        return float(c.points * (elems + 4 * scales))  # a multipoint weight stores every point's codes and scales


BACKEND = MemoryBackend()
