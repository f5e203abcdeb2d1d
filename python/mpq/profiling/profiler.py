"""``mpq.profile``: the gain of every configuration of every sub-graph on one backend, as a ``GainTable``.

Phases: "prefill" runs the example input as given; "decode" runs one token: for a Hugging Face causal LM the
example is run once with a KV cache and the timed step is its last token again with that cache (cropped back after
each step); for other models the first sample of the batch (and, for integer token inputs [B, T], its last token).

Configurations: every combination of the sub-graph's choice groups (tied layers share one choice; a candidate
joins a group only when it applies to all of its layers). When there are more than ``max_configs``, a documented
subset is measured (see ``GainTable``) and the sub-graph is flagged ``subset``.

MoE experts run in their routed form (``mpq.experts``: one Linear pair per expert), so an expert GEMM's recorded
input holds the tokens the router sent it in the example: the ``macs`` backend (and a timed one) counts only the
active experts, as routed on the example input (top-k of E per token, measured, not assumed uniform); ``memory``
counts every expert's bytes, routed or not. An expert the example routes no token to gets a 0-row input.
"""
from __future__ import annotations

import inspect
import itertools
import math
import numbers
import os
import platform
import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..artifacts.gain_table import GainTable, SubgraphGains
from ..calibration.hooks import model_coverage
from ..attention import KVCache, MatMul, layer_kind
from ..candidates import BASE, get_candidate, get_candidates
from ..formats import compute_scales
from ..models import hf_kwargs, is_hf, run_example, split_example
from ..partitioning import Subgraph, partition
from .attention import attention_shapes, is_routed, profile_attention

__all__ = ["enumerate_configs", "make_runner", "profile"]

PHASES = ("prefill", "decode")


def enumerate_configs(sg: Subgraph, candidates: Sequence[str], applies=None, max_configs: int = 64,
                      seed: int = 0) -> tuple[np.ndarray, bool, str]:
    """Configurations of a sub-graph as rows of candidate indices (0 = base, j = candidates[j-1]) per layer.

    applies(layer, candidate) -> bool restricts a group's choices. Returns (configs [K, n_layers] int32, subset,
    note); row 0 is all-base."""
    if max_configs < 1:
        raise ValueError("max_configs must be >= 1")
    groups = sg.groups
    choices = []
    for g in groups:
        ok = [0] + [j for j, c in enumerate(candidates, 1) if applies is None or all(applies(l, c) for l in g)]
        choices.append(ok)
    pos = {l: i for i, l in enumerate(sg.layers)}

    def row(choice):
        r = np.zeros(len(sg.layers), dtype=np.int32)
        for g, j in zip(groups, choice):
            for l in g:
                r[pos[l]] = j
        return r

    total = int(np.prod([len(c) for c in choices]))
    skipped = [f"{c} on {','.join(g)}" for g, ok in zip(groups, choices) for j, c in enumerate(candidates, 1)
               if j not in ok]
    note = f"candidates not applicable: {'; '.join(skipped)}" if skipped else ""
    if total <= max_configs:
        rows = [row(ch) for ch in itertools.product(*choices)]
        return np.stack(rows), False, note
    picked: list[tuple] = [tuple(0 for _ in groups)]
    for gi, ok in enumerate(choices):                       # each group alone
        for j in ok[1:]:
            ch = [0] * len(groups)
            ch[gi] = j
            picked.append(tuple(ch))
    for j in range(1, len(candidates) + 1):                 # every group on the same candidate
        picked.append(tuple(j if j in ok else 0 for ok in choices))
    rng = np.random.default_rng(seed)
    seen = set()
    uniq = []
    for p in picked:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    tries = 0
    while len(uniq) < max_configs and tries < 50 * max_configs:
        tries += 1
        p = tuple(int(ok[rng.integers(len(ok))]) for ok in choices)
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    uniq = uniq[:max_configs]
    sub_note = (f"subset: {len(uniq)} of {total} configurations (all-base, each group alone, all groups on one "
                f"candidate, then seeded random; seed={seed})")
    return np.stack([row(p) for p in uniq]), True, "; ".join(x for x in (sub_note, note) if x)


def _first_tensor_arg(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    raise ValueError("the example input holds no tensor")


def make_runner(model: nn.Module, example_input, phase: str):
    """(run, description): ``run()`` performs one forward pass of the phase (no grad)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    args, kwargs = split_example(example_input)
    if phase == "prefill":
        kw = hf_kwargs(model, kwargs)

        def run():
            with torch.no_grad():
                return model(*args, **kw)
        return run, {"input": [list(t.shape) for t in list(args) + list(kwargs.values())
                               if isinstance(t, torch.Tensor)]}
    params = inspect.signature(model.forward).parameters
    cache_arg = next((a for a in ("past_key_values", "cache") if a in params), None)  # transformers 4 / 5
    if is_hf(model) and cache_arg is not None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise ValueError("decode on a Hugging Face model needs input_ids [B, T] as the example input")
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
        past = out.get("past_key_values") if "past_key_values" in out else out.get("cache")
        n = ids.shape[1]
        nxt = ids[:, -1:]
        if past is None or not hasattr(past, "crop") or not hasattr(past, "get_seq_length"):
            raise ValueError(f"decode: the model's cache ({type(past).__name__}) cannot be cropped back")

        def run():
            with torch.no_grad():
                r = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
            cur = past.get_seq_length()
            if cur > n:
                past.crop(-(cur - n))  # negative: drop that many tokens (transformers 4 and 5)
            return r
        return run, {"input": [list(nxt.shape)], "cache_tokens": int(n)}
    x = _first_tensor_arg(args, kwargs)
    if x.dtype in (torch.int64, torch.int32) and x.dim() >= 2:
        one = x[:1, -1:]
    else:
        one = x[:1]
    new_args = tuple(one if a is x else a for a in args)
    new_kwargs = {k: (one if v is x else v) for k, v in kwargs.items()}
    kw = hf_kwargs(model, new_kwargs)

    def run():
        with torch.no_grad():
            return model(*new_args, **kw)
    return run, {"input": [list(one.shape)]}


def record_inputs(model, layers, run, may_idle=()):
    """{layer: a copy of the input it receives in ``run()``} (the first call of each layer, or for an expert GEMM
    the rows of all its calls); a layer of ``may_idle`` (expert GEMMs) that ``run()`` does not call gets 0 rows."""
    named = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for l in layers:
        def pre(m, a, l=l):
            if l in may_idle:  # an expert is called once per layer call: all its rows of the pass together
                x = a[0].detach().reshape(-1, a[0].shape[-1])
                seen[l] = torch.cat([seen[l], x]) if l in seen else x.clone()
            elif l not in seen:
                seen[l] = a[0].detach().clone()
        hooks.append(named[l].register_forward_pre_hook(pre))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    for l in may_idle:
        if l in layers and l not in seen:
            w = named[l].weight
            seen[l] = w.new_zeros(0, w.shape[1])
    missing = [l for l in layers if l not in seen]
    if missing:
        raise ValueError(f"layers not called in this phase: {missing[:5]}")
    return seen


def profile(model: nn.Module, example_input, candidates: Sequence[str] = ("int8",), backend: str = "cpu",
            phase: str = "prefill", *, subgraphs: Optional[Sequence[Subgraph]] = None, repeats: int = 15,
            warmup: int = 2, max_configs: int = 64, per_layer: bool = True,
            act_scales: Optional[Mapping[str, Union[float, Mapping[str, float]]]] = None, seed: int = 0,
            threads: int = 1, device: Optional[str] = None,
            context: Optional[tuple[int, int]] = None) -> GainTable:
    """Profiles every configuration of every sub-graph (see module doc) and returns a GainTable.

    backend: "cpu" | "cuda" | "hpu" (timed) | "macs" | "memory" (theoretical). device: the ``macs`` peak table
    (default "cpu-avx2"). threads: intra-op threads while timing (1 by default: the machine is shared).
    act_scales: static activation scales for the static candidates, ``{candidate: {layer: scale}}`` (the
    calibrated ones: ``SensitivityTable.act_scales``); ``{layer: scale}`` is taken when exactly one of the
    candidates is static. A layer without one gets the scale of its candidate's activation format and scale rule
    (``compute_scales``) on its input in the example, which does not change the timing. seed: the random subset
    of configurations (when there are more than ``max_configs``) and which configurations share a timed pass
    (``profiling.timing``). context: (batch, length) of the KV cache whose bytes the ``memory`` row counts
    (every backend's ``layer_bytes``; the ``memory`` backend's gain): B·H_kv·length·head_dim elements per cache and
    its scales, for serving a batch of that many sequences of that length; default: the example's batch and length.
    Timed backends store in ``meta["additivity"]`` how well baseline − Σ sub-graph gains predicted the timed
    passes, each of which ran a random mix of configurations, and by how much the base sub-graphs ran slower in
    those passes than in the all-base one (summed; a cost of mixing that no single gain holds).
    @raises ValueError for a bad example input, unknown/unsupported candidates, bad phase, act_scales that name
            no static candidate of the profile or are ambiguous or not positive, a context that is not two
            positive integers;
            mpq.profiling.BackendUnavailable when the backend's hardware is absent.
    """
    from ..experts import routed_experts, routed_modules
    with routed_experts(model, warn=False):
        idle = frozenset(n for p, m in routed_modules(model).items() for n in m.entries(p))
        return _profile(model, example_input, candidates, backend, phase, subgraphs, repeats, warmup, max_configs,
                        per_layer, act_scales, seed, threads, device, idle, _checked_context(context))


def _checked_context(context) -> Optional[tuple[int, int]]:
    if context is None:
        return None
    if (not isinstance(context, (tuple, list)) or len(context) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in context)):
        raise ValueError(f"context must be (batch, length), two positive integers, got {context!r}")
    return int(context[0]), int(context[1])


def _profile(model, example_input, candidates, backend, phase, subgraphs, repeats, warmup, max_configs, per_layer,
             act_scales, seed, threads, device, may_idle, context=None) -> GainTable:
    from . import backends as B
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if repeats < 3:
        raise ValueError("repeats must be >= 3 (median and spread)")
    be = B.get_backend(backend)
    cand_names = tuple(c.name for c in get_candidates(candidates))
    not_linear = [c for c in cand_names if "linear" not in get_candidate(c).kinds]
    if not_linear:  # attention's matmuls and KV cache (mpq.attention): counted by macs and memory, not timed yet
        if be.name not in ("macs", "memory"):
            raise ValueError(f"backend {backend!r} does not measure attention's matmuls and KV cache "
                             f"({not_linear}); backend='macs' or 'memory' counts them")
        if not is_routed(model):
            with profile_attention(model, cand_names) as kept:
                return profile(model, example_input, kept, backend, phase, subgraphs=subgraphs, repeats=repeats,
                               warmup=warmup, max_configs=max_configs, per_layer=per_layer, act_scales=act_scales,
                               seed=seed, threads=threads, device=device, context=context)
    bad = {c: be.unsupported_reason(c) for c in cand_names if not be.supported(c)}
    if bad:
        raise ValueError(f"backend {backend!r} cannot run " + "; ".join(f"{c!r} ({why})" for c, why in bad.items()))
    scales = _keyed_act_scales(act_scales, cand_names) if be.timed else {}
    if be.timed:
        B.check_available(backend)
    if subgraphs is None:
        subgraphs = partition(model, example_input)
    else:
        run_example(model, example_input)
    named = dict(model.named_modules())
    for sg in subgraphs:
        for l in sg.layers:
            if not isinstance(named.get(l), (nn.Linear, MatMul, KVCache)):
                raise ValueError(f"sub-graph {sg.name!r}: layer {l!r} is not an nn.Linear of the model (nor a "
                                 "routed attention module)")
    layers = tuple(l for sg in subgraphs for l in sg.layers)
    kinds = {l: layer_kind(named[l]) for l in layers}
    linear = tuple(l for l in layers if kinds[l] == "linear")
    # of the model in its own dtypes, not of a backend's copy
    coverage = model_coverage(model, dict.fromkeys(layers), left_out_why="of the sub-graphs", stacklevel=3)
    table_cands = (BASE,) + cand_names

    def applies(l, c):  # the candidate's kind and grouping fit, and a kernel of the backend runs the layer's shape
        cand = get_candidate(c)
        if kinds[l] != "linear":
            return cand.applies_to_kind(kinds[l])
        return ("linear" in cand.kinds and cand.applies_to(named[l].weight)
                and (not be.timed or be.runs(named[l], c)))

    enum = [enumerate_configs(sg, cand_names, applies, max_configs, seed) for sg in subgraphs]
    configs = [e[0] for e in enum]

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        work, ex = be.prepare(model, example_input) if be.timed else (model, example_input)
        run, shape_info = make_runner(work, ex, phase)
        inputs = record_inputs(work, layers, run, may_idle)
        layer_shapes = {l: [int(np.prod(inputs[l].shape[:-1])), int(inputs[l].shape[-1]),
                            int(named[l].out_features)] for l in linear}
        layer_shapes.update(attention_shapes(work, [l for l in layers if kinds[l] != "linear"], run))
        if context is not None:  # the KV cache of the serving batch and length, not of the example
            for l in layers:
                if kinds[l] == "kv_cache":
                    _, h, _, d = layer_shapes[l]
                    layer_shapes[l] = [context[0], h, context[1], d]
        shapes = dict(shape_info, layers=layer_shapes)
        if context is not None:
            shapes["kv_context"] = list(context)
        if len(linear) < len(layers):  # routed attention's layers: their shapes are not weights' (avg_bits)
            shapes["attention_layers"] = {l: kinds[l] for l in layers if kinds[l] != "linear"}
        elem = next(iter(named[linear[0]].parameters())).element_size()
        memory = B.get_backend("memory")
        shared = shared_weights(model, linear)
        if shared and be.name == "memory":  # said where bytes are the gain; recorded in meta either way
            first = sorted(shared)[0]
            warnings.warn(f"profile: the weights of {sorted(shared)[:3]} share their memory with {shared[first]}: "
                          "quantizing them adds a quantized copy instead of saving bytes (counted so)", stacklevel=2)

        def layer_bytes(l, c):
            """Bytes that exist because layer l runs c. A weight whose storage another owner keeps (an
            embedding tied to lm_head, or an earlier layer) costs nothing in base: quantizing adds a copy."""
            if c == BASE and shared.get(l):
                return 0.0
            return memory.layer_cost(layer_shapes[l], c, element_size=elem, kind=kinds[l])

        lbytes = np.array([[layer_bytes(l, c) if c == BASE or applies(l, c) else np.nan for c in table_cands]
                           for l in layers])
        meta = dict(threads=threads, torch=torch.__version__, machine=platform.machine(),
                    processor=platform.processor(), repeats=repeats, warmup=warmup,
                    loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    kernels={c: be.kernel(c) for c in cand_names},
                    partition=sorted({sg.method for sg in subgraphs}), max_configs=max_configs, seed=seed,
                    coverage=coverage.to_dict())
        lgain = lspread = None
        if be.timed:
            sgs, baseline, lgain, lspread, checks = _timed(be, work, run, subgraphs, configs, table_cands, inputs,
                                                           scales, repeats, warmup, per_layer, layers, seed)
            meta.update(checks)
        else:
            sgs, baseline, lgain = _theoretical(
                subgraphs, configs, table_cands, layers,
                layer_bytes if be.name == "memory" else
                lambda l, c: be.layer_cost(layer_shapes[l], c, device=device, element_size=elem, kind=kinds[l]),
                applies)
        meta.update(be.meta(device))
        if be.timed:
            meta["base_format"] = be.base_format_of(work)
        if shared:
            meta["shared_weights"] = shared
    finally:
        torch.set_num_threads(old_threads)
    out = []
    for sg, (cfg, subset, note), (gain, spread, noisy, base_t) in zip(subgraphs, enum, sgs):
        out.append(SubgraphGains(sg.name, sg.layers, sg.ties, cfg, gain, spread, noisy, base_t, subset, note))
    return GainTable(backend, phase, table_cands, tuple(out), baseline, be.unit, shapes, meta, layers, lbytes,
                     lgain, lspread)


def _keyed_act_scales(act_scales, cand_names) -> dict[tuple[str, str], float]:
    """profile's ``act_scales`` as {(layer, candidate): scale}."""
    if not act_scales:
        return {}
    static = [c for c in cand_names if get_candidate(c).act_static]
    nested = [isinstance(v, Mapping) for v in act_scales.values()]
    if all(nested):
        stray = sorted(set(act_scales) - set(static))
        if stray:
            raise ValueError(f"act_scales has scales for {stray}, which are not static candidates of this profile "
                             f"(static: {static})")
        keyed = {(l, c): s for c, per_layer in act_scales.items() for l, s in per_layer.items()}
    elif any(nested):
        raise ValueError("act_scales mixes {candidate: {layer: scale}} and {layer: scale} entries")
    elif len(static) != 1:
        raise ValueError(f"act_scales {{layer: scale}} needs exactly one static candidate to belong to, and this "
                         f"profile has {len(static)} ({static}): pass {{candidate: {{layer: scale}}}}")
    else:
        keyed = {(l, static[0]): s for l, s in act_scales.items()}
    bad = {k: s for k, s in keyed.items() if isinstance(s, bool) or not isinstance(s, numbers.Real)
           or not (math.isfinite(s) and s > 0)}
    if bad:
        raise ValueError(f"act_scales must be positive finite numbers, got {bad}")
    return {k: float(s) for k, s in keyed.items()}


def shared_weights(model: nn.Module, layers) -> dict[str, list[str]]:
    """{layer: the other parameters whose storage its weight shares} for the layers whose weight memory another
    owner keeps: a parameter outside ``layers`` (lm_head tied to the embedding) or an earlier layer's weight."""
    owners: dict[tuple, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault((p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape)), []).append(name)
    order = {l: i for i, l in enumerate(layers)}
    named = dict(model.named_modules())
    out = {}
    for l in layers:
        w = named[l].weight
        mine = f"{l}.weight"
        others = [o for o in owners[(w.untyped_storage().data_ptr(), w.storage_offset(), tuple(w.shape))]
                  if o != mine]
        keepers = [o for o in others if o.rpartition(".")[0] not in order
                   or order[o.rpartition(".")[0]] < order[l]]
        if keepers:
            out[l] = keepers
    return out


def _theoretical(subgraphs, configs, table_cands, layers, cost, applies=None):
    sgs = []
    total = 0.0
    for sg, cfg in zip(subgraphs, configs):
        base = sum(cost(l, BASE) for l in sg.layers)
        vals = np.array([sum(cost(l, table_cands[j]) for l, j in zip(sg.layers, row)) for row in cfg])
        gain = base - vals
        sgs.append((gain, np.zeros_like(gain), np.zeros(len(gain), dtype=bool), float(base)))
        total += base
    lg = np.array([[cost(l, BASE) - cost(l, c)
                    if c == BASE or ((applies is None or applies(l, c)) and not _nan(cost, l, c)) else np.nan
                    for c in table_cands] for l in layers])
    return sgs, float(total), lg


def _nan(cost, l, c):
    try:
        return not np.isfinite(cost(l, c))
    except ValueError:
        return True


def _timed(backend, work, run, subgraphs, configs, table_cands, inputs, act_scales, repeats, warmup, per_layer,
           layers, seed):
    """Times on a TimedBackend; act_scales {(layer, candidate): scale} for the static candidates (the others get
    their format's own scale on the layer's recorded input)."""
    from .kernel_choice import choose, shape_key
    from .timing import additivity_check, gains_from_times, time_callable, time_in_model
    named = dict(work.named_modules())
    clock = backend.clock()
    modules, chosen, timed_shapes = {}, {}, {}
    for sg, cfg in zip(subgraphs, configs):
        for li, l in enumerate(sg.layers):
            for j in sorted(set(cfg[:, li].tolist()) - {0}):
                c = table_cands[j]
                cand = get_candidate(c)
                scale = act_scales.get((l, c)) if cand.act_static else None
                if cand.act_static and scale is None:
                    scale = float(compute_scales(inputs[l], cand.act_format)[0][0])

                def make(impl, lin=named[l], c=c, scale=scale):
                    return backend.make_module(lin, c, scale, impl)

                key = shape_key(named[l], inputs[l], c, scale)
                if key in timed_shapes:  # a layer of a shape already measured runs what won there
                    modules[(l, c)] = make(timed_shapes[key].implementation)
                else:
                    timed_shapes[key], modules[(l, c)] = choose(make, backend.implementations(c, named[l]),
                                                                inputs[l], clock, repeats, warmup)
                chosen.setdefault(l, {})[c] = timed_shapes[key].implementation
    seg, base_whole, passes, base_mixed = time_in_model(work, run, subgraphs, configs, table_cands, modules, clock,
                                                        repeats, warmup, seed)
    sgs = [gains_from_times(t) for t in seg]
    baseline = float(np.median(base_whole))
    # every mixed pass ran a plan: its whole-model time against baseline − Σ sub-graph gains checks that the
    # segments tile the forward pass and that the gains add up (stored in meta)
    check = additivity_check(base_whole, [g[0] for g in sgs], passes)
    # what a gain does not hold: base sub-graphs run slower among quantized neighbours than in the base model
    check["base_slower_in_mixed_passes_s"] = float(sum(np.median(m - t[0]) for m, t in zip(base_mixed, seg)))
    lgain = lspread = None
    if per_layer:
        lgain = np.full((len(layers), len(table_cands)), np.nan)
        lspread = np.full_like(lgain, np.nan)
        for li, l in enumerate(layers):
            x = inputs[l]
            cands = [j for j, c in enumerate(table_cands) if j and (l, c) in modules]
            fns = [lambda m=named[l]: m(x)] + [lambda m=modules[(l, table_cands[j])]: m(x) for j in cands]
            t = time_callable(fns, repeats, warmup, clock)
            g, s, _, _ = gains_from_times(t)
            lgain[li, 0] = lspread[li, 0] = 0.0
            for k, j in enumerate(cands, 1):
                lgain[li, j], lspread[li, j] = g[k], s[k]
    checks = {"additivity": check}
    if any(impl is not None for per in chosen.values() for impl in per.values()):
        # what apply(mode="native") must install to run what was timed, and what the choice was made on
        checks["implementations"] = chosen
        checks["implementation_timings"] = [
            {"candidate": k[0], "rows": k[1], "in_features": k[2], "out_features": k[3], "chosen": ch.implementation,
             "seconds": dict(ch.seconds)} for k, ch in timed_shapes.items() if ch.seconds]
    return sgs, baseline, lgain, lspread, checks
