"""Attention's matmuls and KV cache in ``mpq.profile`` (theoretical backends: ``macs``, ``memory``).

When attention candidates are profiled, the model's attention is routed for the profile
(``mpq.attention.routed_attention``), so that ``partition`` puts ``…matmul_qk``, ``…matmul_av``, ``…k_cache`` and
``…v_cache`` into their attention sub-graphs; a model whose attention cannot be routed gets a warning and the
Linear candidates only, as in ``calibrate``. Shapes, from the profiled phase's own run: a matmul A @ B as
[rows of A over all batch dimensions, K, N of B] (MACs = B·H·S_q·S_k·D), a KV cache as [B, H_kv, context, D]
(the context being the keys attention sees in that phase).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
from torch import nn

from ..attention import AttentionNotRoutable, KVCache, MatMul, check_routable, routed_attention
from ..candidates import get_candidate


def is_routed(model: nn.Module) -> bool:
    return any(isinstance(m, (MatMul, KVCache)) for m in model.modules())


@contextmanager
def profile_attention(model: nn.Module, cand_names):
    """Routes attention for the block and yields the candidates to profile (module docstring)."""
    try:
        check_routable(model)
    except AttentionNotRoutable as e:
        kept = tuple(c for c in cand_names if "linear" in get_candidate(c).kinds)
        if not kept:
            raise ValueError(f"profile: only attention candidates {list(cand_names)}, and {e}") from None
        warnings.warn(f"profile: attention candidates left out, profiling Linear layers only: {e}", stacklevel=4)
        yield kept
        return
    with routed_attention(model):
        yield tuple(cand_names)


def attention_shapes(model: nn.Module, names, run) -> dict:
    """{name: shape} of the routed MatMul / KVCache modules ``names`` in one ``run()`` (their first call)."""
    if not names:
        return {}
    named = dict(model.named_modules())
    seen, hooks = {}, []
    for n in names:
        def pre(m, args, n=n):
            if n in seen:
                return
            if isinstance(m, MatMul):
                a, b = args
                seen[n] = [int(np.prod(a.shape[:-1])), int(a.shape[-1]), int(b.shape[-1])]
            else:
                seen[n] = [int(v) for v in args[0].shape]
        hooks.append(named[n].register_forward_pre_hook(pre))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"attention modules not called in this phase: {missing[:5]}")
    return seen
