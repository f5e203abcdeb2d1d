"""The named modules that routed attention computes through (``mpq.attention.interface``).

Transformers computes attention's two activation matmuls and feeds its KV cache inside functions, so there is
nothing to hook. Routed attention attaches these modules to every attention module instead, with the names
optimum-habana's Gaudi models give them and Intel Neural Compressor quantizes by (``…self_attn.matmul_qk``,
``…matmul_av``, ``…k_cache``, ``…v_cache``); calibration hooks them as it hooks ``nn.Linear``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..candidates import KINDS  # noqa: F401  (re-exported: the kinds ``layer_kind`` returns)


class MatMul(nn.Module):
    """y = A @ B for two activation inputs (Q·Kᵀ or P·V), batched over the leading dimensions.

    token_axes: the axis of A and of B that runs over tokens ([B, H, S, D] Q: 2; Kᵀ [B, H, D, S]: 3), so that
    static scales are calibrated on non-padded tokens only."""

    kind = "matmul"

    def __init__(self, token_axes=(2, 3)):
        super().__init__()
        self.token_axes = tuple(token_axes)
        self.calls = 0  # forwards so far: routed_attention tells attention modules that never ran through it

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.matmul(a, b)

    def extra_repr(self) -> str:
        return f"token_axes={self.token_axes}"


class KVCache(nn.Module):
    """The K or V states [B, H_kv, S, D] as they enter the cache (after RoPE, before GQA's repeat): the identity,
    so that a hook sees, and a quantizer replaces, what a quantized KV cache stores."""

    kind = "kv_cache"
    token_axes = (2,)
    head_axis = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def layer_kind(module: nn.Module) -> str:
    """"linear", "matmul" or "kv_cache": which candidates (``Candidate.kinds``) can quantize this module."""
    return getattr(module, "kind", "linear") if isinstance(module, (MatMul, KVCache)) else "linear"
