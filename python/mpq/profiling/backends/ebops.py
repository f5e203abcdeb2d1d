"""The ``ebops`` backend: effective bit operations saved by a configuration (gain = base EBOPs − candidate EBOPs).

EBOPs of a Linear [N, K] on M tokens, as HGQ defines them: Σ over its M·K·N multiply-accumulates of the weight's
bits × the activation's bits. A candidate's weight bits are its weight format's; its activation bits are its
activation format's, or the model's own for a weight-only candidate (which leaves activations as they are); base:
the model's element bits for both. The count for hardware whose cost is bits (FPGAs, ASICs), where peers budget
bits and do not time anything."""
from __future__ import annotations

from typing import Optional

from ...candidates import BASE, get_candidate
from ...formats import format_info
from .base import TheoreticalBackend


class EbopsBackend(TheoreticalBackend):
    name = "ebops"
    unit = "bit operations"
    kernels = {"*": "bit operations"}

    def layer_cost(self, shape, candidate: str, *, device: Optional[str] = None, element_size: int = 4,
                   kind: str = "linear") -> float:
        if kind != "linear":
            raise ValueError(f"ebops counts Linear layers only, not {kind} layers")
        m, k, n = shape
        base_bits = 8 * element_size
        if candidate == BASE:
            return float(m * k * n * base_bits * base_bits)
        c = get_candidate(candidate)
        act_bits = base_bits if c.act_format is None else format_info(c.act_format)["bits"]
        return float(m * k * n * c.weight_bits * c.points * act_bits)  # k points: k products per MAC


BACKEND = EbopsBackend()
