"""``routed_attention(model)``: run a transformers model's attention through mpq's named modules, then restore it.

Which modules are attention: those whose class's ``forward`` dispatches through transformers'
``ALL_ATTENTION_FUNCTIONS`` (every model written for the attention interface does; the same test transformers
uses to decide whether ``set_attn_implementation`` can work). Each gets four child modules (``matmul_qk``,
``matmul_av``: ``MatMul``; ``k_cache``, ``v_cache``: ``KVCache``), and every transformers config in the model gets
``_attn_implementation = "mpq_routed"`` (``mpq.attention.interface``). On exit — also after an error — the
configs get their own implementation back and the four modules are removed.

A model that cannot be routed (no transformers config, custom attention code that does not call the interface,
modules already named ``matmul_qk``) raises ``AttentionNotRoutable`` with the reason, before anything changes.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from .interface import IMPLEMENTATION, MODULE_NAMES, register
from .modules import KVCache, MatMul


class AttentionNotRoutable(ValueError):
    """The model's attention cannot run through transformers' attention interface; ``str(e)`` says why."""


_uses_interface: dict = {}


def _dispatches_through_interface(cls) -> bool:
    if cls not in _uses_interface:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        _uses_interface[cls] = "ALL_ATTENTION_FUNCTIONS" in src
    return _uses_interface[cls]


def attention_modules(model: nn.Module) -> dict:
    """name → module of every attention module that dispatches through ``ALL_ATTENTION_FUNCTIONS``."""
    return {n: m for n, m in model.named_modules()
            if type(m).forward is not nn.Module.forward and _dispatches_through_interface(type(m))}


def _configs(model: nn.Module) -> list:
    """Every transformers config of the model (its own, its sub-configs, those of its submodules), once each."""
    from transformers import PretrainedConfig
    seen, out = set(), []
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        c = stack.pop()
        if not isinstance(c, PretrainedConfig) or id(c) in seen:
            continue
        seen.add(id(c))
        out.append(c)
        stack.extend(getattr(c, k, None) for k in getattr(c, "sub_configs", {}) or {})
    return out


def check_routable(model: nn.Module) -> dict:
    """The attention modules routed attention would route (``attention_modules``).
    @raises AttentionNotRoutable naming the reason."""
    name = type(model).__name__
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise AttentionNotRoutable("routing attention needs transformers: pip install 'mpq-ptq[hf]'") from None
    if not _configs(model):
        raise AttentionNotRoutable(f"{name} has no transformers config (config._attn_implementation): its "
                                   "attention cannot be switched to mpq's implementation")
    found = attention_modules(model)
    if not found:
        raise AttentionNotRoutable(f"no module of {name} computes attention through transformers' attention "
                                   "interface (ALL_ATTENTION_FUNCTIONS): custom attention code cannot be routed")
    for n, m in found.items():
        taken = [c for c in MODULE_NAMES if hasattr(m, c)]
        if taken:
            raise AttentionNotRoutable(f"attention module {n} already has {taken} (already routed, or a model "
                                       "with its own matmul modules)")
    return found


@dataclass
class RoutedAttention:
    """What ``routed_attention`` attached: attention module name → its four modules."""

    attention: dict = field(default_factory=dict)

    def layers(self) -> list:
        """(name, module) of every attached MatMul / KVCache, in module order: ``…self_attn.matmul_qk`` etc."""
        return [(f"{n}.{c}", getattr(m, c)) for n, m in self.attention.items() for c in MODULE_NAMES]

    def not_called(self) -> list:
        """Attention modules whose attention never ran through the routed function so far."""
        return [n for n, m in self.attention.items() if m.matmul_qk.calls == 0]


@contextmanager
def routed_attention(model: nn.Module):
    """Within the block, ``model``'s attention runs through ``…matmul_qk``, ``…matmul_av``, ``…k_cache`` and
    ``…v_cache`` modules (module docstring); yields a ``RoutedAttention``. @raises AttentionNotRoutable."""
    found = check_routable(model)
    register()
    configs = _configs(model)
    saved = [(c, c._attn_implementation_internal) for c in configs]
    attached = []
    try:
        for m in found.values():
            for c, mod in zip(MODULE_NAMES, (MatMul((2, 3)), MatMul((2, 2)), KVCache(), KVCache())):
                m.add_module(c, mod)
                attached.append((m, c))
        for c in configs:
            c._attn_implementation_internal = IMPLEMENTATION
        yield RoutedAttention(found)
    finally:
        for c, impl in saved:
            c._attn_implementation_internal = impl
        for m, c in attached:
            del m._modules[c]
