"""Export a Plan to the configuration files that runtimes read.

targets:
  "mpq"                 the Plan's own JSON (``Plan.save``)
  "inc"                 Intel Neural Compressor FP8 config for Gaudi (``FP8Config.from_json_file``): the quantized
                        layers (Linears, attention's ``…matmul_qk`` / ``…matmul_av`` / ``…k_cache`` / ``…v_cache``
                        as optimum-habana names them) go in ``allowlist.names``, those that stay high precision in
                        ``blocklist.names``, as anchored, escaped regexes (INC matches names with ``re.search``, so
                        ``layers.1`` would also block ``layers.10``)
  "compressed-tensors"  a ``quantization_config`` (``config_groups`` + ``ignore``, and ``kv_cache_scheme`` when the plan
                        quantizes the KV cache: one scheme for every layer) for llm-compressor / vLLM. A config
                        without weights: its ``quantization_status`` is "initialized" (no scale computed, no weight
                        compressed); ``mpq.save_quantized`` writes the checkpoint, "compressed"
  "torchao"             an ``FqnToConfig`` in torchao's ``config_to_dict`` form (``config_from_dict`` reads it).
                        torchao's int4 weight-only scheme picks asymmetric per-group parameters, so it runs a close
                        relative of mpq's symmetric ``w4a16``, not the identical quantizer the sensitivity measured.
A candidate the target cannot run is refused with the list of those it can.
"""
from __future__ import annotations

import re
from typing import Callable, Union

from ..artifacts.io import write_json
from ..artifacts.plan import Plan
from ..candidates import BASE, Candidate, get_candidate

TARGETS = ("mpq", "inc", "compressed-tensors", "torchao")


def export(plan_or_mapping: Union[Plan, dict], target: str, path) -> dict:
    """Writes the config for ``target`` to ``path`` and returns it as a dict."""
    from .swap import plan_mapping
    if not isinstance(plan_or_mapping, Plan):
        plan_mapping(plan_or_mapping)  # a ChannelPlan is refused with the reason
    plan = plan_or_mapping if isinstance(plan_or_mapping, Plan) else Plan(dict(plan_or_mapping), float("nan"),
                                                                            float("nan"))
    builders: dict[str, Callable[[Plan], dict]] = {"mpq": Plan.to_dict, "inc": inc_config,
                                                   "compressed-tensors": compressed_tensors_config,
                                                   "torchao": torchao_config}
    if target not in builders:
        raise ValueError(f"unknown export target {target!r}; known: {', '.join(TARGETS)}")
    config = builders[target](plan)
    write_json(path, config)
    return config


def anchored(name: str) -> str:
    """A regex that matches exactly this module name, whichever of search/match/fullmatch the reader uses."""
    return "^" + re.escape(name) + "$"


# --- Intel Neural Compressor (Gaudi FP8) ----------------------------------------------------------------------
# candidate -> INC scale_method whose scales equal mpq's quantizer. INC patches modules by type: Linear, and in
# optimum-habana's Gaudi models the attention modules ``…self_attn.matmul_qk`` / ``…matmul_av`` (type ``Matmul``,
# both inputs with a static per-tensor scale) and ``…k_cache`` / ``…v_cache`` (type ``KVCache``, one static scale
# per tensor) -- the names routed attention gives mpq's MatMul / KVCache modules (``mpq.attention``).
INC_CANDIDATES = {"fp8_gaudi2": "maxabs_hw", "mm_fp8_gaudi2": "maxabs_hw", "kv_fp8_gaudi2": "maxabs_hw"}


def inc_config(plan: Plan) -> dict:
    """INC's FP8 config: the quantized layers in ``allowlist.names`` (so that INC patches no Matmul, KVCache or
    Softmax the plan does not name), the high-precision ones in ``blocklist.names``, each an anchored regex."""
    used = {c for c in plan.mapping.values() if c != BASE}
    unsupported = used - set(INC_CANDIDATES)
    if unsupported:
        raise ValueError(f"INC FP8 export runs {sorted(INC_CANDIDATES)} (and base = BF16) only; this plan uses "
                         f"{sorted(unsupported)}")
    methods = {INC_CANDIDATES[c] for c in used} or {"maxabs_hw"}
    return {
        "mode": "QUANTIZE",
        "observer": "maxabs",
        "scale_method": methods.pop(),
        "allowlist": {"types": [], "names": [anchored(n) for n, c in plan.mapping.items() if c != BASE]},
        "blocklist": {"types": [], "names": [anchored(n) for n, c in plan.mapping.items() if c == BASE]},
        "dump_stats_path": "./inc_output/measure",
    }


# --- compressed-tensors -----------------------------------------------------------------------------------------
def _ct_args(fmt: str, strategy: str, group_size=None, dynamic=False) -> dict:
    is_float = fmt.startswith("fp8")
    args = {"num_bits": 8 if fmt in ("fp8_e4m3", "int8") else 4 if fmt == "int4" else None,
            "type": "float" if is_float else "int", "symmetric": True, "strategy": strategy, "dynamic": dynamic}
    if args["num_bits"] is None:
        raise KeyError(fmt)
    if group_size:
        args["group_size"] = group_size
    return args


def _ct_scheme(c: Candidate) -> dict:
    strategy = {"tensor": "tensor", "channel": "channel", "group": "group"}[c.weight_granularity]
    scheme = {"weights": _ct_args(c.weight_format, strategy, c.group_size)}
    if c.act_format is not None:
        scheme["input_activations"] = _ct_args(c.act_format, c.act_granularity, dynamic=not c.act_static)
        scheme["format"] = "float-quantized" if c.act_format.startswith("fp8") else "int-quantized"
    else:
        scheme["format"] = "pack-quantized"
    return scheme


def refuse_calibrated(plan: Plan, target: str) -> None:
    """A config names a scheme, and the runtime would quantize by round-to-nearest: a calibrated-weight candidate
    (GPTQ, AWQ, SmoothQuant) would then run other integers than the ones the plan was selected with."""
    calibrated = sorted({c for c in plan.mapping.values() if c != BASE and get_candidate(c).calibrated_weight})
    if calibrated:
        raise ValueError(f"{target} export writes a config, not weights: candidates {calibrated} run integers "
                         "chosen in calibration, which a config cannot carry (write a checkpoint with the "
                         "QuantizedWeights instead)")


# KV cache candidate -> compressed-tensors' kv_cache_scheme (a QuantizationArgs)
CT_KV_SCHEMES = {
    "kv_fp8": ("fp8_e4m3", "tensor", False), "kv_fp8_head": ("fp8_e4m3", "attn_head", False),
    "kv_fp8_token": ("fp8_e4m3", "token", True), "kv_int8_head": ("int8", "attn_head", False),
    "kv_int8_token": ("int8", "token", True),
}
ATTENTION_LAYERS = ("matmul_qk", "matmul_av", "k_cache", "v_cache")  # mpq.attention's (no torch imported here)


def _kv_cache_scheme(plan: Plan) -> "dict | None":
    """The one kv_cache_scheme of the plan's KV cache entries (None when it quantizes none). @raises ValueError
    naming the layers when they differ (compressed-tensors has one scheme for the whole model), or for a matmul
    entry or a cache candidate compressed-tensors has no scheme for."""
    attention = {n: c for n, c in plan.mapping.items() if n.rpartition(".")[2] in ATTENTION_LAYERS}
    matmuls = sorted(n for n, c in attention.items() if c != BASE and n.endswith(("matmul_qk", "matmul_av")))
    if matmuls:
        raise ValueError(f"compressed-tensors has no scheme for attention's matmuls (Q·Kᵀ, P·V), which this plan "
                         f"quantizes: {_some(matmuls)}; map them to base")
    by_candidate: dict[str, list] = {}
    for n, c in attention.items():
        if n.endswith(("k_cache", "v_cache")):
            by_candidate.setdefault(c, []).append(n)
    quantized = sorted(c for c in by_candidate if c != BASE)
    if not quantized:
        return None
    if len(by_candidate) > 1:
        raise ValueError("compressed-tensors holds one kv_cache_scheme for the whole model, and this plan runs the "
                         "KV cache differently per layer: " + "; ".join(f"{c}: {_some(sorted(by_candidate[c]))}"
                                                                         for c in sorted(by_candidate)))
    if quantized[0] not in CT_KV_SCHEMES:
        raise ValueError(f"compressed-tensors has no kv_cache_scheme for candidate {quantized[0]!r} (supported: "
                         f"{', '.join(CT_KV_SCHEMES)})")
    fmt, strategy, dynamic = CT_KV_SCHEMES[quantized[0]]
    return _ct_args(fmt, strategy, dynamic=dynamic)


def _some(names: list, n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def compressed_tensors_config(plan: Plan, weights_written: bool = False) -> dict:
    """config_groups and ignore for the Linears; ``kv_cache_scheme`` when the plan quantizes the KV cache (one for
    every layer: ``_kv_cache_scheme``); attention's entries name no module of the checkpoint's model, so they are in
    neither list. ``weights_written``: for a checkpoint, whose stored weights carry calibrated integers (a config
    alone refuses them)."""
    if not weights_written:
        refuse_calibrated(plan, "compressed-tensors")
    multipoint = sorted({c for c in plan.mapping.values() if c != BASE and get_candidate(c).points > 1})
    if multipoint:
        raise ValueError(f"compressed-tensors has no multipoint scheme (weights that are sums of points): "
                         f"{multipoint}")
    kv_scheme = _kv_cache_scheme(plan)
    groups, by_candidate = {}, {}
    linears = {n: c for n, c in plan.mapping.items() if n.rpartition(".")[2] not in ATTENTION_LAYERS}
    for name, c in linears.items():
        if c != BASE:
            by_candidate.setdefault(c, []).append(name)
    for i, (cname, layers) in enumerate(sorted(by_candidate.items())):
        try:
            scheme = _ct_scheme(get_candidate(cname))
        except KeyError:
            raise ValueError(f"compressed-tensors export has no scheme for candidate {cname!r} (supported: fp8, "
                             "fp8_static, int8, int8_static, w8a16, w4a16, w4a16_g128)") from None
        groups[f"group_{i}"] = {"targets": ["re:" + anchored(n) for n in layers], **scheme}
    formats = {g["format"] for g in groups.values()}
    config = {"quant_method": "compressed-tensors", "quantization_status": "initialized",
              "format": formats.pop() if len(formats) == 1 else "mixed-precision", "config_groups": groups,
              "ignore": [n for n, c in linears.items() if c == BASE]}
    if kv_scheme is not None:
        config["kv_cache_scheme"] = kv_scheme
    return config


# --- torchao ----------------------------------------------------------------------------------------------------
def _ao(type_name: str, version: int, **data) -> dict:
    return {"_type": type_name, "_version": version, "_data": data}


TORCHAO_CONFIGS = {
    "int8": lambda: _ao("Int8DynamicActivationInt8WeightConfig", 2,
                        granularity=_ao("PerRow", 1, dim=-1)),
    "w8a16": lambda: _ao("Int8WeightOnlyConfig", 2),
    "w4a16": lambda: _ao("Int4WeightOnlyConfig", 2, group_size=32),
    "w4a16_g128": lambda: _ao("Int4WeightOnlyConfig", 2, group_size=128),
    "fp8": lambda: _ao("Float8DynamicActivationFloat8WeightConfig", 2, granularity=_ao("PerRow", 1, dim=-1)),
}


def torchao_config(plan: Plan) -> dict:
    unsupported = {c for c in plan.mapping.values() if c != BASE and c not in TORCHAO_CONFIGS}
    if unsupported:
        raise ValueError(f"torchao export runs {sorted(TORCHAO_CONFIGS)} only; this plan uses {sorted(unsupported)}")
    fqn = {name: (TORCHAO_CONFIGS[c]() if c != BASE else None) for name, c in plan.mapping.items()}
    return _ao("FqnToConfig", 1, fqn_to_config=fqn)
