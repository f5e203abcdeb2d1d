"""An Intel Neural Compressor (Gaudi FP8) folder: the FP8 JSON of ``exporters.inc_config`` and the measurement
files that INC's QUANTIZE step reads in place of its own MEASURE run, so that INC quantizes from mpq's calibration.

Files (INC 3.x, neural_compressor/torch/algorithms/fp8_quant: ``Fp8cfg.parse`` names them from
``dump_stats_path``, ``save_measurements`` writes them, ``load_measurements`` reads the .npz):
  inc_fp8.json                     ``FP8Config.from_json_file`` reads it; ``dump_stats_path`` = this folder's
                                   ``measure/inc`` (absolute)
  measure/inc_hooks_maxabs.npz     ``np.savez`` of {"GlobalRank": None, "LocalRank": None, "Mode": "DynamicRange",
                                   "NumSamples": n, "Nodes": {module: {"inputs": [[[max|x|]]], "params": {"weight":
                                   [[max|W|]]}}}} as float32 arrays (a pickled object array: INC's own format)
  measure/inc_hooks_maxabs.json    the same as lists; measure/inc_hooks_maxabs_mod_list.json the module names
max|x| is over the calibration batches given (padded tokens excluded, as mpq's static scales are), max|W| over
the weight. Attention's ``…matmul_qk`` / ``…matmul_av`` (INC's ``Matmul``: two inputs) and ``…k_cache`` /
``…v_cache`` (``KVCache``) that the plan quantizes (mm_fp8_gaudi2, kv_fp8_gaudi2) are measured with attention
routed (``mpq.attention``), per input over the non-padded tokens, without params. Every Linear and attention
module the plan does not quantize is in the blocklist, and modules INC could patch besides them have no
measurement and stay in high precision (``ignore_modules_wo_measures``), as the plan keeps them. One file set for one card: with several ranks INC looks for ``_RANK_WORLD`` files of the
sharded model, which are not written.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ...artifacts.plan import Plan
from ...attention.modules import KVCache, MatMul
from ...candidates import BASE, Candidate
from ...models import batch_size, model_inputs, padding_mask, to_device, unpadded
from ..exporters import INC_CANDIDATES, inc_config

FORMAT = "inc"
CONFIG_FILE = "inc_fp8.json"
MEASURE_BASE = os.path.join("measure", "inc")   # INC appends "_hooks_maxabs" (its observer) to dump_stats_path


def unsupported(c: Candidate) -> str:
    if c.name in INC_CANDIDATES:
        return ""
    return (f"INC's FP8 quantization runs {sorted(INC_CANDIDATES)} (per-tensor Gaudi-2 FP8 with hardware scales) "
            "and keeps the rest in BF16")


def write(model: nn.Module, plan: Plan, layers: dict[str, Candidate], folder: str, final_folder: str,
          batches) -> None:
    if batches is None:
        raise ValueError("an inc checkpoint needs the calibration batches (batches=...): INC's quantize step reads "
                         "each quantized module's input max-abs, which mpq measures on them")
    amax, samples = input_maxabs(model, layers, batches)
    missing = [n for n in layers if not all(math.isfinite(a) for a in np.atleast_1d(amax[n]))]
    if missing:
        raise ValueError(f"the calibration batches never reached layer(s) {missing[:5]} (no finite input seen): "
                         "no measurement to give INC")
    modules = dict(model.named_modules())
    nodes = {}
    for n in layers:
        if isinstance(modules[n], (MatMul, KVCache)):  # INC's Matmul (2 inputs) / KVCache (1): no parameters
            nodes[n] = {"inputs": [np.array([[a]], np.float32) for a in amax[n]]}
            continue
        w = modules[n].weight.detach()
        nodes[n] = {"inputs": [np.array([[amax[n]]], np.float32)],
                    "params": {"weight": np.array([[float(w.abs().max())]], np.float32)}}
    record = {"NumSamples": samples, "GlobalRank": None, "LocalRank": None, "Mode": "DynamicRange", "Nodes": nodes}
    os.makedirs(os.path.join(folder, os.path.dirname(MEASURE_BASE)))
    base = os.path.join(folder, MEASURE_BASE) + "_hooks_maxabs"
    with open(base + ".npz", "wb") as f:
        np.savez(f, record)
    as_lists = dict(record, Nodes={n: {"inputs": [a.tolist() for a in v["inputs"]],
                                       **({"params": {k: a.tolist() for k, a in v["params"].items()}}
                                          if "params" in v else {})}
                                   for n, v in nodes.items()})
    _write_json(base + ".json", as_lists)
    _write_json(base + "_mod_list.json", list(nodes))
    # every Linear the plan leaves in high precision is blocked, also those a bare mapping does not name
    full = {n: BASE for n, m in modules.items() if isinstance(m, (nn.Linear, MatMul, KVCache))}
    full.update({n: c.name for n, c in layers.items()})
    config = inc_config(Plan(full, float("nan"), float("nan")))
    config["dump_stats_path"] = os.path.join(final_folder, MEASURE_BASE)
    config["ignore_modules_wo_measures"] = True
    _write_json(os.path.join(folder, CONFIG_FILE), config)


def input_maxabs(model: nn.Module, layers: Mapping[str, Candidate], batches) -> tuple[dict[str, float], int]:
    """({layer: max |x| of its input over the batches}, number of samples), padded tokens excluded; a routed
    attention MatMul / KVCache has a list, one per input, its tokens on its ``token_axes``."""
    modules = dict(model.named_modules())
    amax = {n: [-math.inf] * (2 if isinstance(modules[n], MatMul) else 1)
            if isinstance(modules[n], (MatMul, KVCache)) else -math.inf for n in layers}
    state = {"mask": None}

    def finite_amax(x) -> float:
        x = x[torch.isfinite(x)]
        return float(x.abs().max()) if x.numel() else -math.inf

    def hook_for(name):
        def hook(module, args):
            if isinstance(module, (MatMul, KVCache)):
                for k, x in enumerate(args):
                    x = unpadded(x.detach().movedim(module.token_axes[k], 1), state["mask"])
                    amax[name][k] = max(amax[name][k], finite_amax(x))
                return
            amax[name] = max(amax[name], finite_amax(unpadded(args[0].detach(), state["mask"])))
        return hook

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in layers]
    samples = 0
    try:
        with torch.no_grad():
            for b in batches:
                b = to_device(b, device)
                state["mask"] = padding_mask(b)
                args, kwargs = model_inputs(b)
                model(*args, **kwargs)
                samples += batch_size(b)
    finally:
        for h in handles:
            h.remove()
    return amax, samples


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
