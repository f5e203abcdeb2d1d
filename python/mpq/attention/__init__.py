"""Attention's activation matmuls and KV cache as quantizable modules.

``routed_attention(model)`` runs a transformers model's attention through transformers' attention interface with
an mpq implementation (``interface``) that computes Q·Kᵀ and P·V through named ``MatMul`` modules and passes K and
V through ``KVCache`` modules as they enter the cache (``modules``), attached to each attention module and removed
afterwards (``routing``). With nothing quantized the logits are the model's eager attention's. ``mpq.apply``
(fake mode) installs their quantizing subclasses (``fake_quant``) in a routed copy of the model.
"""
from .fake_quant import FakeQuantKVCache, FakeQuantMatMul
from .interface import IMPLEMENTATION, routed_attention_forward
from .modules import KINDS, KVCache, MatMul, layer_kind
from .routing import AttentionNotRoutable, RoutedAttention, attention_modules, check_routable, routed_attention

__all__ = ["IMPLEMENTATION", "KINDS", "AttentionNotRoutable", "FakeQuantKVCache", "FakeQuantMatMul", "KVCache", "MatMul", "RoutedAttention",
           "attention_modules", "check_routable", "layer_kind", "routed_attention", "routed_attention_forward"]
