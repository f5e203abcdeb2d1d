"""The ``macs`` backend (theoretical): seconds a layer takes = MACs / peak MAC rate of its format on a device;
gain = Σ over the configuration's layers of MACs · (1/peak[base] − 1/peak[candidate]). Nominal vendor or ISA
figures, not measurements: they say what the hardware could do, not what a kernel achieves (on this project's
AVX2 CPU, int8 W8A8 through torch._int_mm is 5–50x *slower* than fp32 while the table says 2x faster).

Attention's matmuls (``mpq.attention``) count B·H·S_q·S_k·D MACs each, at the rate of their inputs' format;
the KV cache counts none.

Peak rates are MAC/s for one core (CPUs) or one device (accelerators). Weight-only candidates compute in the
activation precision, so they get the base rate (their gain is in memory, see the ``memory`` backend).
"""
from __future__ import annotations

from typing import Optional

from ...candidates import BASE, get_candidate
from .base import TheoreticalBackend

# device -> (base format, {format: MAC/s})
DEVICES = {
    # 2 FMA pipes x 8 fp32 lanes at ~2.5 GHz; int8 vpmaddubsw+vpmaddwd ≈ 2x fp32; no bf16/fp16/fp8 arithmetic
    "cpu-avx2": ("fp32", {"fp32": 40e9, "bf16": 40e9, "fp16": 40e9, "int8": 80e9, "fp8": 40e9}),
    # AVX-512 + VNNI: int8 4x fp32
    "cpu-avx512-vnni": ("fp32", {"fp32": 80e9, "bf16": 80e9, "fp16": 80e9, "int8": 320e9, "fp8": 80e9}),
    # H100 SXM dense: bf16 989 TFLOP/s, fp8 and int8 1979 TOP/s
    "h100": ("bf16", {"fp32": 33.5e12, "bf16": 494.5e12, "fp16": 494.5e12, "int8": 989.5e12, "fp8": 989.5e12}),
    # Gaudi 2: bf16 432 TFLOP/s, fp8 865 TFLOP/s
    "gaudi2": ("bf16", {"fp32": 108e12, "bf16": 216e12, "fp16": 216e12, "int8": 216e12, "fp8": 432.5e12}),
}
DEFAULT_DEVICE = "cpu-avx2"


def compute_format(candidate: str) -> str:
    """The arithmetic format a candidate's matmul runs in ("base" for weight-only)."""
    c = get_candidate(candidate)
    if c.act_format is None:
        return BASE
    f = c.act_format
    return "fp8" if f.startswith("fp8") else f


class MacsBackend(TheoreticalBackend):
    name = "macs"
    unit = "seconds"

    def meta(self, device: Optional[str] = None) -> dict:
        dev = device or DEFAULT_DEVICE
        return {"device": dev, "base_format": DEVICES[dev][0] if dev in DEVICES else None}

    def layer_cost(self, shape, candidate: str, *, device: Optional[str] = None, element_size: int = 4,
                   kind: str = "linear") -> float:
        dev = device or DEFAULT_DEVICE
        if dev not in DEVICES:
            raise ValueError(f"unknown macs device {dev!r}; known: {', '.join(DEVICES)}")
        if kind == "kv_cache":  # storage, no arithmetic: its format changes bytes (memory backend), not MACs
            return 0.0
        base, rates = DEVICES[dev]
        fmt = BASE if candidate == BASE else compute_format(candidate)
        m, k, n = shape  # an attention matmul: m = B·H·S_q rows, k and n from Q·Kᵀ (D, S_k) or P·V (S_k, D)
        points = 1 if candidate == BASE else get_candidate(candidate).points  # a multipoint weight: k matmuls
        return points * m * k * n / rates[base if fmt == BASE else fmt]


BACKEND = MacsBackend()
