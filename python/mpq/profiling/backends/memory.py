"""The ``memory`` backend: bytes of Linear weights saved by a configuration (gain = base bytes − candidate bytes).

Bytes of a Linear [N, K] in a candidate: N·K·bits/8 for the weight elements plus 4 bytes (fp32) per scale: one per
tensor, per output channel, or per group of ``group_size`` inputs; base: N·K times the model's element size.
Biases and activations are not counted (they do not change). A KV cache (``mpq.attention``'s ``k_cache`` /
``v_cache``) of shape [B, H_kv, context, head_dim] (the profiled example's batch and length) holds B·H_kv·context·
head_dim elements, plus 4 bytes per scale (one per tensor, per head, or per token and head); ``profile(...,
context=(B, length))`` counts that batch and context length instead. Attention's matmuls hold nothing."""
from __future__ import annotations

from typing import Optional

from ... import _core
from ...candidates import BASE, get_candidate
from .base import TheoreticalBackend


class MemoryBackend(TheoreticalBackend):
    name = "memory"
    unit = "bytes"
    kernels = {"*": "bytes"}

    def layer_cost(self, shape, candidate: str, *, device: Optional[str] = None, element_size: int = 4,
                   kind: str = "linear") -> float:
        if kind == "matmul":  # attention's Q·Kᵀ and P·V store nothing
            return 0.0
        if kind == "kv_cache":
            return _kv_bytes(shape, candidate, element_size)
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


def _kv_bytes(shape, candidate: str, element_size: int) -> float:
    b, h, ctx, d = shape
    elems = b * h * ctx * d
    if candidate == BASE:
        return float(elems * element_size)
    c = get_candidate(candidate)
    if "kv_cache" not in c.kinds:
        raise ValueError(f"candidate {candidate!r} does not quantize a KV cache")
    scales = {"tensor": 1, "head": h, "token": b * h * ctx}[c.act_granularity]
    return float(elems * _core.format_info(c.act_format)["bits"] / 8 + 4 * scales)


BACKEND = MemoryBackend()
