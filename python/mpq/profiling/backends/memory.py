"""The ``memory`` backend: bytes of Linear weights saved by a configuration (gain = base bytes − candidate bytes).

Bytes of a Linear [N, K] in a candidate: N·K·bits/8 for the weight elements plus 4 bytes (fp32) per scale: one per
tensor, per output channel, or per group of ``group_size`` inputs; base: N·K times the model's element size.
Biases and activations are not counted (they do not change)."""
from __future__ import annotations

from ...candidates import get_candidate

NAME = "memory"
UNIT = "bytes"
kernels = {"*": "bytes"}


def available():
    return True, ""


def supported(candidate: str) -> bool:
    return True


def layer_bytes(n: int, k: int, candidate: str, base_element_size: int = 4) -> float:
    if candidate == "base":
        return float(n * k * base_element_size)
    c = get_candidate(candidate)
    elems = n * k * c.weight_bits / 8
    if c.weight_granularity == "tensor":
        scales = 1
    elif c.weight_granularity == "channel":
        scales = n
    else:
        scales = n * (k // c.group_size)
    return float(elems + 4 * scales)
