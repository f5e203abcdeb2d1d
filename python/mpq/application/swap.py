"""Apply a plan (or a {layer: candidate} mapping) to a model: a new model, the input untouched.

mode="fake": every chosen Linear becomes a ``FakeQuantLinear``: y = linear(Q_act(x), Q(W), b) with the candidate's
own ``quantize_weight`` / ``quantize_act`` (``mpq.fake_quantize``), for accuracy.
mode="native": every chosen Linear becomes the real low-precision kernel that the timing backend of its device
measures, for speed: ``native_cpu`` on the CPU (``cpu`` backend), ``native_cuda`` on a CUDA device (``cuda``
backend: torch._scaled_mm, torch._int_mm).
Static-activation candidates need calibrated scales: a Plan carries them (``Plan.act_scales``, from the
SensitivityTable it was selected from); a bare mapping takes ``act_scales={layer: float}``.

Attention (``mpq.attention``): a mapping that quantizes ``…self_attn.matmul_qk`` / ``…matmul_av`` / ``…k_cache`` /
``…v_cache`` (``mm_*``, ``kv_*`` candidates) gets, in fake mode, a model whose attention stays routed: its copy's
configs run ``mpq_routed`` attention and the mapped MatMul / KVCache modules are ``FakeQuantMatMul`` /
``FakeQuantKVCache`` with the candidate's quantizer and the plan's static scales (a list per layer), the same Q
calibration measured; the input model gets its own attention back. Native mode refuses them: no kernel of mpq
runs attention's matmuls or KV cache in low precision.

MoE experts: a mapping that names expert GEMMs (``<experts>.<e>.gate_up_proj`` / ``.down_proj``, as calibrate
names them) gets a model whose stacked-experts modules of known layout are ``mpq.experts.RoutedExperts`` (one Linear
pair per expert, the same forward), so each expert's slice runs as its own fake-quantized or native Linear.

A fake model is a deep copy: it may be trained (straight-through gradients), which must not touch the input. A
native model is for inference: its untouched layers share their weights' memory with the input model
(``copy_sharing_tensors``), so that applying a plan to an 8B model costs the quantized layers, not a second
model, and the unquantized layers run from the very memory the input model runs from (a deep copy of SmolLM2 ran
1–15 ms apart from the original in prefill on this project's CPU: bench/RESULTS.md).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Mapping, Optional

from torch import nn

from ..artifacts.channel_plan import ChannelPlan
from ..attention.fake_quant import FakeQuantKVCache, FakeQuantMatMul, check_scales
from ..attention.interface import MODULE_NAMES as ATTENTION_LAYERS
from ..attention.modules import KVCache, MatMul, layer_kind
from ..candidates import BASE, Candidate, get_candidate
from ..experts import find_experts, routed_experts
from ..models import copy_sharing_tensors, set_module
from .fake_linear import FakeQuantLinear

__all__ = ["FakeQuantLinear", "apply", "plan_mapping"]

CHANNEL_PLAN_ONLY_APPLIES = ("a ChannelPlan (a candidate per output-row group) has no export or checkpoint format "
                             "here (their schemes give one format per layer): mpq.apply runs it, one kernel per "
                             "precision class")


def plan_mapping(plan_or_mapping) -> dict[str, str]:
    """A {layer: candidate name} dict from a mapping or any object with a ``.mapping`` dict."""
    if isinstance(plan_or_mapping, ChannelPlan):
        raise ValueError(CHANNEL_PLAN_ONLY_APPLIES)
    m = getattr(plan_or_mapping, "mapping", plan_or_mapping)
    if not isinstance(m, Mapping):
        raise ValueError(f"expected a {{layer: candidate}} mapping or a Plan with .mapping, "
                         f"got {type(plan_or_mapping).__name__}")
    out = {}
    for k, v in m.items():
        name = v.name if isinstance(v, Candidate) else v
        if not isinstance(k, str) or not isinstance(name, str):
            raise ValueError(f"mapping entries must be layer name -> candidate name, got {k!r}: {v!r}")
        out[k] = name
    return out


def apply(model: nn.Module, plan_or_mapping, mode: str = "fake", *,
          act_scales: Optional[Mapping[str, float]] = None, quantized_weights=None) -> nn.Module:
    """A copy of ``model`` with each mapped Linear (and attention matmul / KV cache) replaced (see module doc).
    Layers mapped to "base" or absent stay as they are. A ``ChannelPlan`` runs one kernel per precision class of each
    layer (``channel_split``). Calibrated-weight candidates (GPTQ, AWQ, SmoothQuant) run the integers calibration chose:
    pass ``quantized_weights`` (``table.quantized_weights`` or ``QuantizedWeights.load``).
    @raises ValueError for unknown layers, non-Linear layers, unknown candidates, a candidate without a native
    kernel on the layer's device (CPU or CUDA; attention's layers have none), a static candidate without its entry
    in ``act_scales`` (attention's: a list of the right length), a calibrated-weight candidate whose integers
    ``quantized_weights`` lacks or computed from another weight, or attention entries on a model whose attention
    cannot be routed (``mpq.attention.AttentionNotRoutable``)."""
    if mode not in ("fake", "native"):
        raise ValueError(f"mode must be 'fake' or 'native', got {mode!r}")
    if isinstance(plan_or_mapping, ChannelPlan):  # below the layer: one kernel per precision class
        from .channel_split import apply_channels
        return apply_channels(model, plan_or_mapping, mode)
    mapping = plan_mapping(plan_or_mapping)
    experts = tuple(f"{n}." for n in find_experts(model)[0])
    attention = {k: c for k, c in mapping.items() if k.rpartition(".")[2] in ATTENTION_LAYERS and c != BASE}
    if attention and mode == "native":
        layer, cname = next(iter(attention.items()))
        raise ValueError(f"layer {layer!r}: candidate {cname!r} quantizes attention's matmuls / KV cache, which have "
                         "no native kernel in mpq (mode='native' runs Linear kernels only): apply it with "
                         "mode='fake', or map attention's layers to 'base'")
    # expert GEMMs and attention's matmuls / cache exist as modules in the routed forms only: the copy keeps them,
    # the input model gets its own back
    with contextlib.ExitStack() as routed:
        if any(k.startswith(experts) for k in mapping):
            routed.enter_context(routed_experts(model, warn=False))
        if attention:
            from ..attention import routed_attention
            routed.enter_context(routed_attention(model))
        return _apply(model, plan_or_mapping, mapping, mode, act_scales, quantized_weights)


def _apply(model, plan_or_mapping, mapping, mode, act_scales, quantized_weights):
    # every name of every module: one module held under two attributes (``self.b = self.a``) has both names
    modules = dict(model.named_modules(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}  # one pass: a module's every name, by identity
    for n, m in modules.items():
        names_of.setdefault(id(m), []).append(n)
    aliases = {name: names_of[id(mod)] for name, mod in modules.items()}
    for layer, cname in mapping.items():
        for other in aliases.get(layer, ()):
            if other != layer and mapping.get(other, cname) != cname:
                raise ValueError(f"layers {layer!r} and {other!r} are one module, mapped to {cname!r} and "
                                 f"{mapping[other]!r}: one module runs one candidate")
    if act_scales is None:  # a Plan carries the scales its static candidates were calibrated with
        act_scales = getattr(plan_or_mapping, "act_scales", None)
    act_scales = dict(act_scales or {})
    # the CPU implementations the profile timed (a Plan from a cpu-backend GainTable): installed as timed
    implementations = dict(getattr(plan_or_mapping, "implementations", None) or {})
    checked, attention = {}, {}
    for layer, cname in mapping.items():
        if layer not in modules and layer.rpartition(".")[2] in ATTENTION_LAYERS and cname == BASE:
            continue  # routed attention's modules (mpq.attention) exist only while routed
        if layer not in modules:
            raise ValueError(f"layer {layer!r} is not a module of the model")
        if isinstance(modules[layer], (MatMul, KVCache)):
            if cname != BASE:
                attention[layer] = _checked_attention(layer, modules, cname, act_scales)
            continue
        if not isinstance(modules[layer], nn.Linear):
            raise ValueError(f"layer {layer!r} is a {type(modules[layer]).__name__}, not an nn.Linear")
        if cname == BASE:
            continue
        cand = get_candidate(cname)
        if "linear" not in cand.kinds:
            raise ValueError(f"layer {layer!r}: candidate {cname!r} is for attention's {cand.kinds[0]} layers, "
                             "not an nn.Linear")
        if cand.act_static and layer not in act_scales:
            raise ValueError(f"layer {layer!r}: candidate {cname!r} has static activation scales; "
                             f"pass act_scales={{{layer!r}: scale}}")
        if cand.act_static and not _positive_finite(act_scales[layer]):
            raise ValueError(f"layer {layer!r}: the static activation scale of {cname!r} must be a positive "
                             f"finite number, got {act_scales[layer]!r}")
        if not cand.applies_to(modules[layer].weight):
            raise ValueError(f"layer {layer!r}: candidate {cname!r} does not apply (group size "
                             f"{cand.group_size} vs in_features {modules[layer].in_features})")
        checked[layer] = cand
    stored = {}
    for layer, cand in checked.items():
        if cand.calibrated_weight:
            if quantized_weights is None:
                raise ValueError(f"layer {layer!r}: candidate {cand.name!r} runs integers chosen in calibration: "
                                 "pass quantized_weights= (the calibration's table.quantized_weights)")
            stored[layer] = quantized_weights.get_for(layer, cand.name, modules[layer].weight)
    if mode == "native":
        for layer, cand in checked.items():
            problem = _native_problem(modules[layer].weight.device.type, cand.name, implementations.get(layer))
            if problem:
                raise ValueError(f"layer {layer!r}: {problem}")
    new = copy.deepcopy(model) if mode == "fake" else copy_sharing_tensors(model)
    new_modules = dict(new.named_modules(remove_duplicate=False))
    done = set()
    for layer, cand in checked.items():
        if layer in done:  # another name of a module already replaced
            continue
        lin = new_modules[layer]
        scale = act_scales.get(layer) if cand.act_static else None
        if mode == "fake":
            repl = FakeQuantLinear(lin, cand, scale, stored.get(layer))
        elif lin.weight.device.type == "cpu":
            from .cpu_kernels import native_linear
            repl = native_linear(lin, cand.name, scale, implementations.get(layer), quantized=stored.get(layer))
        else:
            from .native_cuda import make_module
            repl = make_module(lin, cand.name, scale)
        for name in aliases[layer]:  # every attribute that holds the module gets the replacement
            set_module(new, name, repl)
            done.add(name)
    for layer, (cand, scales) in attention.items():  # the copy is routed (made inside routed_attention)
        old = new_modules[layer]
        set_module(new, layer, FakeQuantMatMul(cand, scales, old.token_axes) if isinstance(old, MatMul)
                   else FakeQuantKVCache(cand, scales))
    return new


def _checked_attention(layer, modules, cname, act_scales):
    """(candidate, its static scales or None) for a routed MatMul / KVCache ``layer``. @raises ValueError."""
    cand = get_candidate(cname)
    kind = layer_kind(modules[layer])
    if kind not in cand.kinds:
        raise ValueError(f"layer {layer!r} is attention's {kind}: candidate {cname!r} is for "
                         f"{'/'.join(cand.kinds)} layers")
    if not cand.act_static:
        return cand, None
    if layer not in act_scales:
        raise ValueError(f"layer {layer!r}: candidate {cname!r} has static scales; a Plan from select carries "
                         f"them, a mapping needs act_scales={{{layer!r}: [scales]}}")
    config = getattr(modules.get(layer.rpartition(".")[0]), "config", None)
    heads = getattr(config, "num_key_value_heads", None) if kind == "kv_cache" else None
    try:
        return cand, check_scales(cand, kind, act_scales[layer], heads if isinstance(heads, int) else None)
    except ValueError as e:
        raise ValueError(f"layer {layer!r}: {e}") from None


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _native_problem(device_type: str, candidate: str, implementation: Optional[str]) -> str:
    """Why ``candidate`` (with the timed ``implementation``, if any) cannot run natively on this device type;
    "" when it can."""
    if device_type == "cpu":
        from . import cpu_kernels
        if implementation is not None:
            ok, reason = cpu_kernels.admission(implementation, candidate)
            return "" if ok else (f"candidate {candidate!r} was timed with {implementation!r}, which cannot run "
                                  f"on this machine: {reason}")
        if not cpu_kernels.implementations(candidate):
            return (f"candidate {candidate!r} has no native CPU kernel (native CPU kernels: "
                    f"{', '.join(cpu_kernels.CPU_KERNELS)})")
        reason = cpu_kernels.why_not(candidate)
        return f"candidate {candidate!r} cannot run natively on this CPU: {reason}" if reason else ""
    if device_type == "cuda":
        from .native_cuda import kernels
        return "" if candidate in kernels else (f"candidate {candidate!r} has no CUDA kernel (CUDA kernels: "
                                                f"{', '.join(kernels)})")
    return f"candidate {candidate!r} has no native {device_type} kernel (native kernels exist on cpu and cuda)"
