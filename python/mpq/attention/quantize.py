"""Q(X) of an attention candidate for a MatMul input or a KV cache tensor, through ``mpq.fake_quantize`` (the
deployment quantizer): what calibration's δ measures and what a fake-quantized attention runs.

Scales (``Candidate``, kinds "matmul" / "kv_cache"): a matmul input per tensor, dynamic (one scale per sample)
or static (``scales`` = [scale]); a KV cache [B, H_kv, S, D] per (token, head) row of D values (dynamic), per
tensor (static, [scale]) or per K/V head (static, ``scales`` = one per head).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..candidates import Candidate


def quantize_attention_input(c: Candidate, x: torch.Tensor, scales: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Q_c(x) for x [B, ...] (a matmul input) or [B, H_kv, S, D] (a KV cache tensor)."""
    from ..formats import fake_quantize
    if "linear" in c.kinds:
        raise ValueError(f"candidate {c.name!r} is for Linear layers, not attention's matmuls or KV cache")
    fmt = c.act_format
    if c.act_static:
        if scales is None:
            raise ValueError(f"candidate {c.name!r} has static scales: pass the calibrated scales")
        if c.act_granularity == "head":
            if x.dim() != 4 or x.shape[1] != len(scales):
                raise ValueError(f"candidate {c.name!r}: {len(scales)} head scales for a tensor of shape "
                                 f"{tuple(x.shape)} (expected [B, H_kv, S, D])")
            return torch.stack([fake_quantize(x[:, h], fmt, scale=float(s)) for h, s in enumerate(scales)], 1)
        return fake_quantize(x, fmt, scale=float(scales[0]))
    if c.act_granularity == "token":  # one scale per (token, head) vector
        return fake_quantize(x.reshape(-1, x.shape[-1]), fmt, axis=0).reshape(x.shape)
    return fake_quantize(x.reshape(x.shape[0], -1), fmt, axis=0).reshape(x.shape)  # per tensor, per sample
