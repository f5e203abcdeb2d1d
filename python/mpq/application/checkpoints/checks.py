"""What every checkpoint writer checks before it writes anything: the plan's layers exist and are nn.Linear, its
candidates are known and fit their layers, static candidates have their calibrated scale, and the format can
express each candidate. Every problem of a plan is reported at once, in one error that lists the layers."""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

from torch import nn

from ...artifacts.plan import Plan
from ...attention.modules import KVCache, MatMul, layer_kind
from ...candidates import BASE, Candidate, get_candidate
from ..swap import plan_mapping

# sibling Linears that serving engines load as one fused matrix (vLLM's packed_modules_mapping: qkv_proj,
# gate_up_proj; Mixtral's w1/w3 experts), and the experts of one mixture-of-experts block (one FusedMoE layer)
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"))
_EXPERT = re.compile(r"^((?:.*\.)?experts)\.\d+\.")


def as_plan(plan_or_mapping) -> Plan:
    """A Plan (its activation scales kept) from a Plan or a bare {layer: candidate} mapping."""
    if isinstance(plan_or_mapping, Plan):
        return plan_or_mapping
    return Plan(plan_mapping(plan_or_mapping), float("nan"), float("nan"))


def checked_layers(model: nn.Module, plan: Plan, fmt: str, unsupported: Callable[[Candidate], str], *,
                   act_scales: bool = True, fused: bool = False, attention: bool = False,
                   stores_calibrated: bool = False, quantized_weights=None) -> dict[str, Candidate]:
    """{layer: Candidate} of the plan's quantized layers, in model order. @raises ValueError listing every layer
    the model or ``fmt`` cannot take, and why (``unsupported(candidate)``: why ``fmt`` cannot express it, or "").
    ``act_scales``: static candidates need the plan's calibrated scale (the format stores it); ``fused``: fused
    layers must share one candidate (``fused_problems``); ``attention``: the model is routed and the format stores
    attention's MatMul / KVCache modules too (INC's measurements); ``stores_calibrated``: the writer stores the
    integers of calibrated-weight candidates, which ``quantized_weights`` must then hold for the model's weight."""
    modules = dict(model.named_modules())
    problems: dict[str, list[str]] = {}  # reason -> layers
    out = {}
    for layer, cname in plan_mapping(plan).items():
        if cname == BASE:  # routed attention's layers at base: nothing to store (select's plans list them)
            if layer not in modules and layer.rpartition(".")[2] not in ("matmul_qk", "matmul_av", "k_cache",
                                                                          "v_cache"):
                problems.setdefault("not a module of the model", []).append(layer)
            continue
        reason = _layer_problem(modules.get(layer), layer, cname, plan.act_scales if act_scales else None,
                                attention, stores_calibrated)
        if not reason:
            cand = get_candidate(cname)
            reason = unsupported(cand)
            reason = f"{cname}: {reason}" if reason else ""
        if not reason and cand.calibrated_weight:
            reason = _stored_problem(modules[layer], layer, cname, quantized_weights)
        if reason:
            problems.setdefault(reason, []).append(layer)
        else:
            out[layer] = get_candidate(cname)
    if fused:
        problems.update(fused_problems(model, plan))
    if problems:
        refuse(fmt, problems)
    order = {n: i for i, n in enumerate(modules)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def _layer_problem(module: Optional[nn.Module], layer: str, cname: str,
                   act_scales: Optional[Mapping[str, float]], attention: bool = False,
                   stores_calibrated: bool = False) -> str:
    if module is None and layer.rpartition(".")[2] in ("matmul_qk", "matmul_av", "k_cache", "v_cache"):
        return ("attention's matmul / KV cache (mpq.attention): this checkpoint writer stores Linears only (inc "
                "measures them); mpq.export writes the compressed-tensors config with its kv_cache_scheme")
    if module is None:
        return "not a module of the model"
    if attention and isinstance(module, (MatMul, KVCache)):
        try:
            cand = get_candidate(cname)
        except ValueError as e:
            return str(e)
        kind = layer_kind(module)
        return "" if kind in cand.kinds else f"{cname}: a candidate for {'/'.join(cand.kinds)} layers, not {kind}"
    if not isinstance(module, nn.Linear):
        return f"a {type(module).__name__}, not an nn.Linear"
    try:
        cand = get_candidate(cname)
    except ValueError as e:
        return str(e)
    if cand.calibrated_weight and not stores_calibrated:  # round-to-nearest writers would store other integers
        return (f"{cname}: its integers were chosen in calibration (GPTQ, AWQ, optimized RTN, SmoothQuant) and this "
                "checkpoint writer stores round-to-nearest weights only")
    if not cand.applies_to(module.weight):
        return f"{cname}: group size {cand.group_size} does not divide in_features {module.in_features}"
    if cand.act_static and act_scales is not None and layer not in act_scales:
        return (f"{cname}: a static activation scale is needed and the plan has none (plans from mpq select carry "
                "them; a bare mapping cannot)")
    return ""


def _stored_problem(module: nn.Module, layer: str, cname: str, quantized_weights) -> str:
    """Why the calibrated integers of (layer, cname) cannot be stored ("" when they can)."""
    if quantized_weights is None:
        return (f"{cname}: its integers were chosen in calibration: pass quantized_weights= (the calibration's "
                "table.quantized_weights; mpq apply --quantized-weights)")
    try:
        quantized_weights.get_for(layer, cname, module.weight)
    except ValueError as e:
        return str(e)
    return ""


def refuse(fmt: str, problems: Mapping[str, list]) -> None:
    """@raises ValueError: the format, then per reason the layers it concerns (the first 6 named)."""
    parts = []
    for reason, layers in problems.items():
        shown = ", ".join(layers[:6]) + (f" and {len(layers) - 6} more" if len(layers) > 6 else "")
        parts.append(f"{shown} ({reason})")
    raise ValueError(f"a checkpoint in the {fmt} format cannot hold this plan; nothing written: " + "; ".join(parts))


def fused_groups(names) -> list[tuple[str, ...]]:
    """Groups of Linear names that a serving engine loads as one fused layer: present siblings of one parent
    named as in ``FUSED_SIBLINGS`` (e.g. q/k/v), and every Linear under the experts of one MoE block."""
    names = list(names)
    present = set(names)
    groups: dict[tuple, list[str]] = {}
    for n in names:
        expert = _EXPERT.match(n)
        if expert:
            groups.setdefault(("experts", expert.group(1)), []).append(n)
            continue
        parent, _, leaf = n.rpartition(".")
        for i, siblings in enumerate(FUSED_SIBLINGS):
            if leaf in siblings and sum(f"{parent}.{s}" in present for s in siblings) > 1:
                groups.setdefault((i, parent), []).append(n)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def fused_problems(model: nn.Module, plan: Plan) -> dict[str, list[str]]:
    """{reason: groups} for the fused groups (``fused_groups``) to which the plan gives different candidates.
    Refused, not promoted: engines run one scheme per fused layer, and promoting the group to one candidate would
    ship a plan other than the one whose loss was predicted."""
    mapping = plan_mapping(plan)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    problems = {}
    for group in fused_groups(linears):
        chosen = {n: mapping.get(n, BASE) for n in group}
        if len(set(chosen.values())) > 1:
            experts = bool(_EXPERT.match(group[0]))
            text = ", ".join(f"{n if experts else n.rpartition('.')[2]}={c}" for n, c in chosen.items())
            reason = ("serving engines run the experts of one MoE block as one layer with one scheme (refused, not "
                      "promoted: give them one candidate; mpq select does not tie experts, which see different "
                      "tokens)" if experts else
                      "serving engines fuse these layers into one and run one scheme for all of them (refused, not "
                      "promoted: give them one candidate, as mpq select does)")
            problems.setdefault(reason, []).append(f"{_common_prefix(group)} [{text}]")
    return problems


def _common_prefix(names) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for items in zip(*parts):
        if len(set(items)) > 1:
            break
        common.append(items[0])
    return ".".join(common)


def hf_model(model: nn.Module, fmt: str) -> None:
    """@raises ValueError when ``model`` is not a Hugging Face model (the format's checkpoint is one)."""
    if not (callable(getattr(model, "save_pretrained", None)) and getattr(model, "config", None) is not None):
        raise ValueError(f"a checkpoint in the {fmt} format is a Hugging Face folder: the model must be a transformers "
                         f"PreTrainedModel (with save_pretrained and config), got {type(model).__name__}")
