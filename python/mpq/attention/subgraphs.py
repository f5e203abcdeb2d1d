"""Routed attention's modules in the partition: each attention module's ``matmul_qk``, ``matmul_av``,
``k_cache`` and ``v_cache`` join the sub-graph that holds that module's own projections (q/k/v/o), after them in
execution order (q/k/v, matmul_qk, matmul_av, o_proj), so that an attention configuration is chosen — and on a
timed backend would be measured — jointly, as the Gaudi attention sub-graph of the seed method.

Ties: ``k_cache`` and ``v_cache`` take one choice: serving engines keep one KV cache format for K and V (one
``kv_cache_dtype``, one compressed-tensors ``kv_cache_scheme``). The two matmuls are free (INC configures each op).
An attention block then has 5 choice groups (q/k/v tied, o_proj, matmul_qk, matmul_av, the cache), e.g. 3⁵ = 243
configurations with two candidates per kind: above profile's ``max_configs`` (64) the configurations are a
random subset (``enumerate_configs``), which theoretical backends, whose gains add up per layer, do not need.
"""
from __future__ import annotations

from dataclasses import replace

from .interface import MODULE_NAMES
from .modules import KVCache, MatMul


def with_attention_layers(subgraphs: list, model) -> list:
    """``subgraphs`` with every attached MatMul / KVCache module placed as the module docstring says; an
    attention module whose projections lie in no sub-graph leaves its four modules out (not guessed)."""
    parents = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (MatMul, KVCache)):
            parents.setdefault(name.rpartition(".")[0], []).append(name)
    if not parents:
        return subgraphs
    out = []
    for sg in subgraphs:
        layers, ties = list(sg.layers), list(sg.ties)
        for parent, names in parents.items():
            own = [i for i, l in enumerate(layers) if l.rpartition(".")[0] == parent]
            if not own:
                continue
            order = {c: i for i, c in enumerate(MODULE_NAMES)}
            names = sorted(names, key=lambda n: order.get(n.rpartition(".")[2], 99))
            o_proj = [i for i in own if layers[i].endswith(".o_proj")]
            at = o_proj[0] if o_proj else own[-1] + 1  # before the output projection, else after the last one
            layers[at:at] = names
            kv = tuple(n for n in names if n.endswith(("k_cache", "v_cache")))
            if len(kv) == 2:
                ties.append(kv)
        out.append(replace(sg, layers=tuple(layers), ties=tuple(ties)))
    return out
