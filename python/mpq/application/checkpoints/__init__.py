"""Checkpoints, not only configs: ``save_quantized(model, plan, folder, format)`` writes what a runtime loads.

formats:
  "compressed-tensors"  a Hugging Face folder with the weights compressed by compressed-tensors (int8 / fp8 per
                        channel or tensor, int4 packed groups) and a mixed-precision ``quantization_config``:
                        transformers (with compressed-tensors) and vLLM load it (``compressed_tensors``)
  "inc"                 Intel Neural Compressor's FP8 JSON and the per-module max-abs measurement files its
                        QUANTIZE step reads instead of measuring again (``inc``; needs ``batches``), attention's
                        matmuls and KV cache included (measured with attention routed: ``mpq.attention``)
  "torchao"             a Hugging Face folder of the model quantized by torchao's ``quantize_`` (``torchao``)
Every folder also holds ``mpq_plan.json``, the plan it was written from. Before anything is written the plan is
checked whole: a layer the format cannot express (or the model does not have, or a static candidate without
its calibrated scale) is an error that lists every such layer and why. The folder is built beside its target and
renamed into place: an error leaves nothing written, and an existing non-empty folder is never touched.
"""
from __future__ import annotations

import contextlib
import os

from torch import nn

from ...artifacts.io import write_json
from ...candidates import BASE
from ..exporters import ATTENTION_LAYERS
from . import checks, compressed_tensors, inc, torchao
from .folder import atomic_folder, check_target

FORMATS = ("compressed-tensors", "inc", "torchao")
PLAN_FILE = "mpq_plan.json"
_WRITERS = {"compressed-tensors": compressed_tensors, "inc": inc, "torchao": torchao}

__all__ = ["FORMATS", "save_quantized"]


def save_quantized(model: nn.Module, plan_or_mapping, folder, format: str, *, batches=None,
                   tokenizer=None, quantized_weights=None) -> str:
    """Writes ``model`` under the plan (a Plan, or a {layer: candidate} mapping; absent layers stay as they are)
    as a ``format`` checkpoint into ``folder`` (new, or an empty folder) and returns its absolute path.
    ``batches``: calibration batches (as for ``mpq.calibrate``), needed by "inc". ``tokenizer``: saved beside the
    Hugging Face formats' weights when given. ``quantized_weights``: the calibration's ``table.quantized_weights``,
    whose integers "compressed-tensors" stores for the GPTQ and optimized-RTN candidates of the plan (the same
    integers calibration measured and ``mpq.apply`` runs). The model is not modified.
    @raises ValueError for an unknown format, a plan the format cannot hold (every such layer listed), or a
    folder in the way; nothing is written then."""
    if format not in _WRITERS:
        raise ValueError(f"unknown checkpoint format {format!r}; known: {', '.join(FORMATS)}")
    writer = _WRITERS[format]
    target = check_target(folder)
    plan = checks.as_plan(plan_or_mapping)
    if format != "inc":
        checks.hf_model(model, format)
    # INC measures attention's matmuls and KV cache too: they exist as modules while attention is routed
    attention = format == "inc" and any(n.rpartition(".")[2] in ATTENTION_LAYERS and c != BASE
                                        for n, c in checks.plan_mapping(plan).items())
    with contextlib.ExitStack() as routed:
        if attention:
            from ...attention import routed_attention
            routed.enter_context(routed_attention(model))
        return _save(model, plan, target, format, writer, batches, tokenizer, attention, quantized_weights)


def _save(model, plan, target, format, writer, batches, tokenizer, attention, quantized_weights) -> str:
    # INC computes its scales from the measurements written, not from the plan's; engines fuse only for CT
    stores = getattr(writer, "STORES_CALIBRATED", False)
    layers = checks.checked_layers(model, plan, format, writer.unsupported, act_scales=format != "inc",
                                   fused=format == "compressed-tensors", attention=attention,
                                   stores_calibrated=stores, quantized_weights=quantized_weights)
    if not layers:
        raise ValueError(f"the plan quantizes no layer: a {format} checkpoint of it would claim a quantization the "
                         "weights are not in; nothing written")
    with atomic_folder(target) as tmp:
        if format == "inc":
            inc.write(model, plan, layers, tmp, target, batches)
        else:
            writer.write(model, plan, layers, tmp, *([quantized_weights] if stores else []))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        write_json(os.path.join(tmp, PLAN_FILE), plan.to_dict())
    return target
