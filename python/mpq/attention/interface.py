"""The attention function that routed attention registers with transformers' ``AttentionInterface``.

It computes what the models' own ``eager_attention_forward`` computes — scores Q·Kᵀ·scaling, Gemma-2's logit
soft-capping, the additive mask transformers built (causal, sliding window, padding), gpt-oss's attention sinks,
softmax in float32 (float64 for a float64 model), dropout in training only, P·V — but every step that a quantized model changes runs through
the named modules attached to the attention module (``mpq.attention.modules``): ``k_cache`` and ``v_cache`` on K
and V as they come from the cache update (before GQA repeats them), ``matmul_qk`` on (Q, Kᵀ) and ``matmul_av`` on
(P, V). The mask function registered under the same name is transformers' ``eager_mask`` (a float mask, as eager
attention gets).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .modules import KVCache, MatMul

IMPLEMENTATION = "mpq_routed"
MODULE_NAMES = ("matmul_qk", "matmul_av", "k_cache", "v_cache")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, D] → [B, H_kv·n_rep, S, D], each K/V head repeated for its n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def routed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             softcap=None, s_aux=None, **kwargs):
    """Attention of ``module`` on query [B, H, Sq, D], key/value [B, H_kv, Sk, D] → ([B, Sq, H, D], P)."""
    parts = [getattr(module, n, None) for n in MODULE_NAMES]
    if not (isinstance(parts[0], MatMul) and isinstance(parts[1], MatMul) and isinstance(parts[2], KVCache)
            and isinstance(parts[3], KVCache)):
        raise ValueError(f"{type(module).__name__} called mpq's routed attention without its matmul_qk, matmul_av, "
                         "k_cache and v_cache modules: route attention with mpq.attention.routed_attention(model)")
    if kwargs.get("position_bias") is not None:  # T5-style biases are not in eager_attention_forward's contract
        raise ValueError(f"{type(module).__name__}: routed attention does not support position_bias")
    matmul_qk, matmul_av, k_cache, v_cache = parts
    if scaling is None:
        scaling = module.head_dim ** -0.5
    key, value = k_cache(key), v_cache(value)
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{type(module).__name__}: {query.shape[1]} query heads are not a multiple of "
                         f"{key.shape[1]} key/value heads")
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)

    scores = matmul_qk(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores + mask
        if scores.requires_grad and mask.is_floating_point():
            # a query that may see no key (a left-padded position): s + finfo.min rounds to finfo.min for every
            # key, so the row is uniform whatever s is, and its true derivative is 0; autograd's softmax backward
            # would pass a gradient that the float computation does not have. Same values, no gradient.
            # (no data-dependent branch on it: torch.export captures this function too)
            dead = (mask <= torch.finfo(mask.dtype).min / 2).all(-1, keepdim=True)
            scores = torch.where(dead, scores.detach(), scores)
    if s_aux is not None:  # attention sinks: one extra logit per head, in the softmax, dropped after it
        sinks = s_aux.reshape(1, -1, 1, 1).expand(query.shape[0], -1, query.shape[-2], -1)
        combined = torch.cat([scores, sinks], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1].to(value.dtype)
    else:
        # float32 as eager attention (float64 in a float64 model, where eager's float32 would lose precision)
        probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = matmul_av(probs, value)
    return out.transpose(1, 2).contiguous(), probs


_registered = False


def register() -> None:
    """Registers the attention function and its mask function with transformers (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(IMPLEMENTATION, routed_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
    _registered = True
