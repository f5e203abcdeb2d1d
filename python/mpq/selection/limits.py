"""What a selection is held to: the one objective among a loss budget and a required gain, and an average-bits
limit as the weight bytes it allows (``avg_bits``), shared by the layer-level (``selector``) and the row-group
(``channels``) selections."""
from __future__ import annotations

import math
from typing import Mapping, Optional

from ..artifacts.gain_table import GainTable
from ..candidates import BASE

__all__ = ["avg_bits", "loss_or_gain_objective", "memory_of_bits", "timed_weights"]


def avg_bits(gains: GainTable, mapping: Mapping[str, str]) -> float:
    """Average bits per weight of the GainTable's layers under ``mapping`` (absent layers: base): 8 Σ bytes / Σ
    weights, the bytes as the memory backend counts them, scales included (int4 in groups of 128 with fp32
    scales is 4.25 bits, where ModelOpt's effective bits and AutoRound's avg_bits count 4), so that a limit on it
    is a limit on what the weights occupy. @raises ValueError without ``layer_bytes`` and layer shapes."""
    layers, weights = timed_weights(gains)
    col = {c: j for j, c in enumerate(gains.candidates)}
    idx = {l: i for i, l in enumerate(gains.layers)}
    total = sum(float(gains.layer_bytes[idx[l], col[mapping.get(l, BASE)]]) for l in layers)
    return 8 * total / weights


def timed_weights(gains: GainTable) -> tuple[list, int]:
    """(the weight-holding layers of the sub-graphs, their number of weights). @raises ValueError without shapes."""
    shapes = (gains.shapes or {}).get("layers") or {}
    attention = (gains.shapes or {}).get("attention_layers") or {}  # matmuls and KV cache hold no weight
    layers = [l for sg in gains.subgraphs for l in sg.layers if l not in attention]
    missing = [l for l in layers if l not in shapes]
    if gains.layer_bytes is None or missing:
        raise ValueError("average bits need per-layer bytes and shapes in the GainTable (a table from mpq.profile; "
                         f"missing shapes: {missing[:3]})")
    return layers, sum(int(shapes[l][1]) * int(shapes[l][2]) for l in layers)


def memory_of_bits(gains: GainTable, max_memory: Optional[float], max_avg_bits: Optional[float]):
    """``max_avg_bits`` as the bytes it allows the timed layers' weights (``avg_bits``)."""
    if max_avg_bits is None:
        return max_memory
    if max_memory is not None:
        raise ValueError("give max_memory or max_avg_bits, not both (they limit the same bytes)")
    if isinstance(max_avg_bits, bool) or not isinstance(max_avg_bits, (int, float)) or \
            not math.isfinite(max_avg_bits) or max_avg_bits <= 0:
        raise ValueError(f"max_avg_bits must be a positive number of bits per weight, got {max_avg_bits!r}")
    return max_avg_bits * timed_weights(gains)[1] / 8


def loss_or_gain_objective(max_loss_mse, max_loss_rmse, min_gain, target_speedup):
    given = {k: v for k, v in dict(max_loss_mse=max_loss_mse, max_loss_rmse=max_loss_rmse, min_gain=min_gain,
                                   target_speedup=target_speedup).items() if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of max_loss_mse, max_loss_rmse, min_gain, target_speedup; got "
                         f"{sorted(given) or 'none'}")
    (kind, value), = given.items()
    value = float(value)
    if not math.isfinite(value) or (kind != "min_gain" and value < 0):
        raise ValueError(f"{kind} must be a finite{' non-negative' if kind != 'min_gain' else ''} number, got {value}")
    return kind, value
