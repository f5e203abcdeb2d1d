"""Partition a model into sequential sub-graphs: segments of the dataflow between points that the model's main
stream passes through as one value, so that time gains inside a segment are measured jointly and gains across
segments add up.

How (``method="export"``): the model is captured with ``torch.export`` (non-strict; module names kept through the
``nn_module_stack`` metadata). A node is *heavy* when a model parameter or a floating-point model input is among
its ancestors: that is the main stream. Values computed from integer inputs and buffers alone (attention masks, rotary cos/sin, positions) are side
inputs that every block reads; they are not counted, because otherwise no cut point would exist in a transformer.
A *cut* lies after node i when exactly one heavy value produced at or before i is read after i. Linear layers
(``nn.Linear`` modules; the only quantizable layers) between two cuts form one sub-graph; segments without a Linear
are merged into the following sub-graph (the last into the previous). A Linear called in several segments merges
them. Linear layers of one sub-graph that read the same input value (q/k/v, gate/up) are tied to one choice,
because runtimes fuse them.

Both methods: Linear layers that hold one weight tensor (a Parameter shared by two modules, or views of the same
storage) are tied too, since a weight stored once can be stored in only one format; the sub-graphs from the first
to the last of them merge into one, as for a Linear called in several segments.

MoE experts: a stacked-experts module of known layout is partitioned as its routed form (``mpq.experts``), one
Linear pair per expert (traced densely, every expert on every token, for export); its 2·E entries are tied to one
choice by default (``experts="tied"``) or left free (``experts="per_expert"``): ``mpq.experts.ties``.

Fallback (``method="fallback"``): when the model cannot be captured, a warning says why and the partition is one
sub-graph per block of the first ``nn.ModuleList`` holding Linear layers (decoder layers), plus one per Linear
outside it; ties come from Linear layers that received the very same input tensor in one forward pass.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .models import hf_kwargs, run_example, split_example

__all__ = ["Subgraph", "partition"]


@dataclass(frozen=True)
class Subgraph:
    """One sequential segment of the model.

    name: a readable label (the common module prefix of its layers, made unique).
    layers: the ``nn.Linear`` module names (as in ``model.named_modules()``) in execution order; while attention
    is routed (``mpq.attention.routed_attention``), each attention module's matmul and cache modules too, in its
    attention sub-graph (``mpq.attention.subgraphs``).
    ties: groups of layers (each of size ≥ 2) that must take the same candidate.
    start: the module whose forward pre-hook marks the start of the segment when timing it inside the model.
    method: "export" or "fallback".
    """

    name: str
    layers: tuple[str, ...]
    ties: tuple[tuple[str, ...], ...] = ()
    start: str = ""
    method: str = "export"

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The choice groups in order of their first layer: tied groups and single layers."""
        tied = {l: g for g in self.ties for l in g}
        out, seen = [], set()
        for l in self.layers:
            g = tied.get(l, (l,))
            if g[0] not in seen:
                seen.add(g[0])
                out.append(g)
        return tuple(out)


class _Wrap(nn.Module):
    """Returns the first tensor of the model's output, so that export accepts any output structure."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *args, **kwargs):
        return _first_tensor(self.m(*args, **kwargs))


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        for v in out.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(out, (tuple, list)):
        for v in out:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _linear_names(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _unique_names(prefixes: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for p in prefixes:
        counts[p] = counts.get(p, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for p in prefixes:
        if counts[p] > 1:
            seen[p] = seen.get(p, 0) + 1
            out.append(f"{p}#{seen[p]}")
        else:
            out.append(p)
    return out


def _common_prefix(names: tuple[str, ...]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    if len(names) == 1:
        return names[0]
    return ".".join(common) or "root"


def partition(model: nn.Module, example_input, *, method: str = "auto", experts: str = "tied") -> list[Subgraph]:
    """Sequential sub-graphs of ``model`` for ``example_input`` (tensor, tuple of args or dict of kwargs).

    method: "auto" (export, else fallback with a warning), "export" (errors if capture fails) or "fallback".
    experts: "tied" (one choice per experts module) or "per_expert" (module doc).
    @raises ValueError when the example does not run through the model or the model has no nn.Linear layer.
    """
    from .experts import routed_experts, routed_modules
    from .experts.ties import EXPERT_CHOICES, expert_ties
    if experts not in EXPERT_CHOICES:
        raise ValueError(f"experts must be one of {EXPERT_CHOICES}, got {experts!r}")
    with routed_experts(model, warn=False):
        entries = {n: m.entries(n) for n, m in routed_modules(model).items()}
        subgraphs = _partition(model, example_input, method)
    if not entries:
        return subgraphs
    return [Subgraph(sg.name, sg.layers, _joined(expert_ties(sg.layers, sg.ties, entries, experts), sg.layers),
                     sg.start, sg.method) for sg in subgraphs]


def _partition(model: nn.Module, example_input, method: str) -> list[Subgraph]:
    if method not in ("auto", "export", "fallback"):
        raise ValueError(f"method must be auto, export or fallback, got {method!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    linears = _linear_names(model)
    if not linears:
        raise ValueError("the model has no nn.Linear layer: nothing to partition")
    run_example(model, example_input)  # a bad example is a clear error before any capture attempt
    from .attention.subgraphs import with_attention_layers  # routed attention's modules, when attached
    if method in ("auto", "export"):
        try:
            return with_attention_layers(
                _tie_shared_weights(_partition_export(model, example_input, linears), linears), model)
        except Exception as e:  # noqa: BLE001
            if method == "export":
                raise RuntimeError(f"torch.export could not capture the model: {type(e).__name__}: {e}") from e
            warnings.warn(f"mpq.partition: torch.export could not capture the model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); falling back to one sub-graph per block "
                          f"or per layer", RuntimeWarning, stacklevel=3)
    return with_attention_layers(_tie_shared_weights(_partition_fallback(model, example_input, linears), linears),
                                 model)


def _weight_key(w: torch.Tensor):
    """Equal for two tensors that are the same memory: one Parameter, or equal views of one storage."""
    ptr = w.untyped_storage().data_ptr()
    if ptr == 0:  # meta or empty storage: no address to compare, only the object
        return ("object", id(w))
    return (w.device.type, ptr, w.storage_offset(), tuple(w.shape), tuple(w.stride()))


def _tie_shared_weights(subgraphs: list[Subgraph], linears: dict[str, nn.Linear]) -> list[Subgraph]:
    """Ties the Linear layers that share a weight, merging the sub-graphs that lie between them."""
    holders: dict = {}
    for name in (l for sg in subgraphs for l in sg.layers):
        holders.setdefault(_weight_key(linears[name].weight), []).append(name)
    shared = [names for names in holders.values() if len(names) > 1]
    if not shared:
        return subgraphs
    where = {l: i for i, sg in enumerate(subgraphs) for l in sg.layers}
    spans: list[list[int]] = []  # [first, last] sub-graph index of each merged run, overlapping runs joined
    for lo, hi in sorted((min(where[l] for l in g), max(where[l] for l in g)) for g in shared):
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    run_of = {i: (lo, hi) for lo, hi in spans for i in range(lo, hi + 1)}
    out: list[Subgraph] = []
    taken = {sg.name for i, sg in enumerate(subgraphs) if i not in run_of}
    for i, sg in enumerate(subgraphs):
        if i not in run_of:
            out.append(sg)
            continue
        lo, hi = run_of[i]
        if i != lo:
            continue
        members = subgraphs[lo:hi + 1]
        layers = tuple(l for m in members for l in m.layers)
        groups = [list(t) for m in members for t in m.ties] + [g for g in shared if g[0] in layers]
        name = sg.name if hi == lo else _common_prefix(layers)
        k, base = 1, name
        while name in taken:
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        out.append(Subgraph(name, layers, _joined(groups, layers), sg.start, sg.method))
    return out


def _joined(groups: list[list[str]], layers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Groups that share a layer joined into one, each in layer order, ordered by their first layer."""
    parent = {l: l for g in groups for l in g}

    def find(l):
        while parent[l] != l:
            parent[l] = parent[parent[l]]
            l = parent[l]
        return l

    for g in groups:
        for l in g[1:]:
            parent[find(l)] = find(g[0])
    joined: dict[str, list[str]] = {}
    for l in layers:
        if l in parent:
            joined.setdefault(find(l), []).append(l)
    return tuple(tuple(g) for g in joined.values() if len(g) > 1)


def _partition_export(model, example_input, linears) -> list[Subgraph]:
    args, kwargs = split_example(example_input)
    kwargs = hf_kwargs(model, kwargs)
    was_training = model.training
    model.eval()
    try:
        ep = torch.export.export(_Wrap(model), args, kwargs, strict=False)
    finally:
        model.train(was_training)
    graph = ep.graph
    sig = ep.graph_signature
    params = set(sig.inputs_to_parameters)
    user_inputs = set(sig.user_inputs)
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    heavy: set = set()
    for n in nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            if n.name in params or (n.name in user_inputs and isinstance(val, torch.Tensor)
                                    and val.is_floating_point()):
                heavy.add(n)
            continue
        if any(a in heavy for a in n.all_input_nodes):
            heavy.add(n)

    def module_of(n) -> Optional[str]:
        stack = n.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = list(stack.values())[-1][0]
        for pre in ("m.", "L__self___m."):
            if path.startswith(pre):
                return path[len(pre):]
        return "" if path in ("m", "") else path

    # heavy compute values: last-use index of each
    compute = [n for n in nodes if n.op not in ("placeholder", "output")]
    last_use = {}
    for n in nodes:
        if n in heavy and n.op != "output" and n.name not in params:  # parameters are available everywhere
            last_use[n] = max((index[u] for u in n.users), default=index[n])
    # sweep: number of heavy values live across the boundary after node i
    events = [0] * (len(nodes) + 1)
    for n, lu in last_use.items():
        if lu > index[n]:
            events[index[n]] += 1
            events[lu] -= 1
    live, cut_after = 0, []
    for i, n in enumerate(nodes):
        live += events[i]
        if n.op not in ("placeholder", "output") and live == 1 and n in heavy:
            cut_after.append(i)
    cuts = sorted(set(cut_after))

    def segment_of(i: int) -> int:
        import bisect
        return bisect.bisect_left(cuts, i)  # number of cuts strictly before node i

    # linear nodes
    lin_nodes = []
    for n in compute:
        if n.op == "call_function" and n.target in (torch.ops.aten.linear.default,):
            name = module_of(n)
            if name in linears:
                lin_nodes.append((n, name))
    if not lin_nodes:
        raise RuntimeError("no nn.Linear call found in the captured graph")
    seg_layers: dict[int, list] = {}
    layer_segs: dict[str, set] = {}
    for n, name in lin_nodes:
        s = segment_of(index[n])
        layer_segs.setdefault(name, set()).add(s)
    # merge segment ranges of layers called in several segments
    seg_ids = sorted({s for ss in layer_segs.values() for s in ss})
    parent = {s: s for s in seg_ids}

    def find(s):
        while parent[s] != s:
            s = parent[s]
        return s

    for ss in layer_segs.values():
        lo, hi = min(ss), max(ss)
        for s in seg_ids:
            if lo <= s <= hi:
                parent[find(s)] = find(lo)
    for n, name in lin_nodes:
        root = find(segment_of(index[n]))
        lst = seg_layers.setdefault(root, [])
        if name not in [x[1] for x in lst]:
            lst.append((n, name))
    ordered = sorted(seg_layers)
    # node ranges: sub-graph j spans (end of segment of j-1, end of its own segment]
    bounds = []
    for j, s in enumerate(ordered):
        members = [k for k in seg_ids if find(k) == s]
        last_seg = max(members)
        end = cuts[last_seg] if last_seg < len(cuts) else len(nodes) - 1
        bounds.append(end)
    # segments before the first Linear (embedding, masks, convolutions) belong to no sub-graph
    first_seg = min(k for k in seg_ids if find(k) == ordered[0])
    starts = [cuts[first_seg - 1] + 1 if first_seg > 0 else 0] + [b + 1 for b in bounds[:-1]]
    first_index: dict[str, int] = {}
    for n in compute:
        m = module_of(n)
        if m and m not in first_index:
            first_index[m] = index[n]
    prefixes, raw = [], []
    for j, s in enumerate(ordered):
        lst = seg_layers[s]
        layers = tuple(name for _, name in lst)
        by_input: dict = {}
        for n, name in lst:
            by_input.setdefault(n.args[0], []).append(name)
        ties = tuple(tuple(g) for g in by_input.values() if len(g) > 1)
        start = ""
        for i in range(starts[j], bounds[j] + 1):
            n = nodes[i]
            if n.op in ("placeholder", "output"):
                continue
            m = module_of(n)
            if m and starts[j] <= first_index.get(m, -1) <= bounds[j]:
                start = m
                break
        if not start:
            start = layers[0]
        prefixes.append(_common_prefix(layers))
        raw.append((layers, ties, start))
    names = _unique_names(prefixes)
    return [Subgraph(nm, l, t, st, "export") for nm, (l, t, st) in zip(names, raw)]


def _partition_fallback(model, example_input, linears) -> list[Subgraph]:
    # execution order and input identity of each Linear
    order: list[str] = []
    inputs: dict[str, int] = {}
    keep: list = []  # holds the input tensors alive, so that their ids stay unique
    hooks = []
    for name, mod in linears.items():
        def pre(m, a, name=name):
            if name not in inputs:
                order.append(name)
                inputs[name] = id(a[0]) if a else 0
                keep.append(a)
        hooks.append(mod.register_forward_pre_hook(pre))
    try:
        run_example(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    block_list = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and any(isinstance(c, nn.Linear) for c in mod.modules()):
            block_list = name
            break
    groups: list[tuple[str, list[str]]] = []
    for lname in order:
        key = lname
        if block_list is not None and lname.startswith(block_list + "."):
            idx = lname[len(block_list) + 1:].split(".")[0]
            key = f"{block_list}.{idx}"
        if groups and groups[-1][0] == key:
            groups[-1][1].append(lname)
        else:
            groups.append((key, [lname]))
    names = _unique_names([g[0] for g in groups])
    out = []
    for nm, (_, layers) in zip(names, groups):
        by_input: dict = {}
        for l in layers:
            by_input.setdefault(inputs[l], []).append(l)
        ties = tuple(tuple(g) for g in by_input.values() if len(g) > 1)
        out.append(Subgraph(nm, tuple(layers), ties, layers[0], "fallback"))
    return out
