"""A compressed-tensors checkpoint: the Hugging Face folder that transformers (with compressed-tensors) and vLLM
load, its weights compressed by the compressed-tensors library itself.

How: the plan's ``quantization_config`` (``exporters.compressed_tensors_config``: one config group per candidate,
targets the exact layer names) is attached to a copy of the model by ``apply_quantization_config``; the scales it
initialises are then set to mpq's own (``mpq.formats.compute_scales`` of the weights, the plan's calibrated
activation scales for static candidates), so that the weights compressed-tensors stores dequantize to the
weights of ``mpq.apply(model, plan, mode="fake")``; ``ModelCompressor`` compresses them (W8A8 int8 and fp8 as
int8 / float8_e4m3fn tensors; weight-only int8 and int4 packed into int32 ``weight_packed``, as vLLM's WNA16
reads them), ``save_pretrained`` writes them and ``update_config`` the config, whose ``quantization_status`` is
then "compressed" and ``format`` "mixed-precision" when the plan mixes formats. Scales are stored in the
model's dtype, as compressed-tensors does: exact for a float32 model; a bf16 model gets bf16 scales, which round
mpq's float32 ones (and may move a value to the neighbouring grid point).

Dynamic activations are quantized at run time by the loader: vLLM's int8 per-token kernel divides by amax/127 as
mpq does; compressed-tensors' own reference path (transformers on CPU) by amax/127.5, a difference within one
int8 step. FP8 per-token scales (amax/448) agree.

Calibrated integers (GPTQ, optimized RTN: ``QuantizedWeights``): the layer's weight in the copy is replaced by
codes ⊙ scales and its ``weight_scale`` by the stored scales, so that compressed-tensors' round(w / scale)
gives back the stored codes (checked after compression: a layer whose packed integers differ is an error).
Optimized RTN's negative scales and codes at −8 are stored as they are: the int4 scheme is signed [−8, 7] and
dequantizes codes × scale. AWQ and SmoothQuant are refused: their per-input-channel divide has no place in a
compressed-tensors scheme, and mpq does not fold it into the preceding norm (per-layer choices cannot share a
fold).

Fused layers (q/k/v, gate/up, the experts of an MoE block) must share one candidate (``checks.fused_problems``).
"""
from __future__ import annotations

import torch

from ...candidates import Candidate
from ...formats import compute_scales
from ...models import copy_sharing_tensors
from ..exporters import compressed_tensors_config

FORMAT = "compressed-tensors"
STORES_CALIBRATED = True  # GPTQ's and optimized RTN's integers (checks.checked_layers)
_WEIGHTS = ("fp8_e4m3", "int8", "int4")   # compressed-tensors' 8-bit float is OCP E4M3 (max 448); ints symmetric
_ACTS = (None, "fp8_e4m3", "int8")


def unsupported(c: Candidate) -> str:
    """Why a compressed-tensors checkpoint cannot hold candidate ``c`` ("" when it can)."""
    if c.points > 1:
        return f"compressed-tensors has no multipoint scheme (a weight of {c.points} summed point tensors)"
    if c.algorithm in ("awq", "smoothquant"):
        return (f"{c.algorithm}'s per-input-channel divide has no place in a compressed-tensors scheme (mpq does "
                "not fold it into the preceding norm: per-layer choices cannot share a fold)")
    if c.weight_format == "fp8_e4m3_gaudi2":
        return ("Gaudi-2 FP8 saturates at ±240 with power-of-2 hardware scales; compressed-tensors' float8 is OCP "
                "E4M3 saturating at ±448, so the stored weights would not be the ones calibrated")
    if c.weight_format == "fp8_e5m2" or c.act_format == "fp8_e5m2":
        return "compressed-tensors has no FP8 E5M2 scheme (its 8-bit float is E4M3)"
    if c.weight_format in ("bf16", "fp16"):
        return (f"a plain cast to {c.weight_format} is not a compressed-tensors scheme (a checkpoint has one "
                "dtype for its unquantized weights)")
    if c.weight_format not in _WEIGHTS or c.act_format not in _ACTS:
        return f"no compressed-tensors scheme for weights {c.weight_format} with activations {c.act_format}"
    return ""


def write(model, plan, layers: dict[str, Candidate], folder: str, quantized_weights=None) -> None:
    """Writes the checkpoint of ``model`` under ``plan`` (checked: ``layers`` holds its quantized layers, and
    ``quantized_weights`` the integers of its calibrated ones) into the existing empty ``folder``."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config

    config = compressed_tensors_config(plan, weights_written=True)  # the integers go into the weights below
    config["quantization_status"] = QuantizationStatus.FROZEN.value  # scales set below, weights not yet compressed
    qmodel = copy_sharing_tensors(model)  # the library swaps in new tensors: no second copy of the weights
    apply_quantization_config(qmodel, QuantizationConfig.model_validate(config), show_progress=False)
    modules = dict(qmodel.named_modules())
    claimed = {n for n, m in modules.items() if getattr(m, "quantization_scheme", None) is not None}
    if claimed != set(layers):  # the config's targets must select the plan's layers, no more, no fewer
        raise RuntimeError(f"compressed-tensors matched {sorted(claimed ^ set(layers))[:5]} differently from the "
                           "plan's layers")
    # checks.checked_layers matched each entry to its weight already: no second hash of the weights
    stored = {name: quantized_weights[name, cand.name] for name, cand in layers.items() if cand.calibrated_weight}
    with torch.no_grad():
        for name, cand in layers.items():
            if name in stored:
                _set_stored(modules[name], stored[name])
            else:
                _set_scales(modules[name], cand, plan.act_scales.get(name))
    compressor = ModelCompressor.from_pretrained_model(qmodel)
    compressor.compress_model(qmodel)
    _check_compressed(modules, layers)
    _check_stored_codes(modules, stored, layers)
    qmodel.save_pretrained(folder)
    compressor.update_config(folder)


def _set_scales(module, cand: Candidate, act_scale) -> None:
    w = module.weight.detach()
    if cand.weight_granularity == "tensor":
        s, _ = compute_scales(w, cand.weight_format)
    elif cand.weight_granularity == "channel":
        s, _ = compute_scales(w, cand.weight_format, axis=0)
    else:
        s, _ = compute_scales(w, cand.weight_format, group_size=cand.group_size)
    _fill(module.weight_scale, s)
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.zero_()  # symmetric: compressed-tensors drops it when compressing
    if cand.act_static:
        _fill(module.input_scale, torch.tensor([act_scale], dtype=torch.float32))
        if hasattr(module, "input_zero_point"):
            module.input_zero_point.zero_()


def _set_stored(module, qw) -> None:
    """The calibrated weight: codes ⊙ scales as the weight (a new tensor: the copy shares the model's), its scales."""
    w = module.weight
    module.weight = torch.nn.Parameter(qw.dequantized().to(w.device, w.dtype), requires_grad=False)
    _fill(module.weight_scale, qw.scales)
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.zero_()


def _check_stored_codes(modules, stored, layers) -> None:
    """The integers compressed-tensors packed are the stored codes, layer by layer."""
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32
    for name, qw in stored.items():
        m = modules[name]
        if hasattr(m, "weight_packed"):
            codes = unpack_from_int32(m.weight_packed, layers[name].weight_bits, torch.Size(qw.codes.shape))
        else:
            codes = m.weight
        if not torch.equal(codes.to(torch.int8).cpu(), qw.codes):  # e.g. a bf16 model: codes × scale rounded
            raise ValueError(f"compressed-tensors would store other integers than the calibrated ones for {name} "
                             f"(its weight and scales are kept in the model's {m.weight_scale.dtype}); write the "
                             "checkpoint from the float32 model; nothing written")


def _fill(param: torch.Tensor, values: torch.Tensor) -> None:
    if param.numel() != values.numel():
        raise RuntimeError(f"compressed-tensors holds {param.numel()} scales where mpq computed {values.numel()}")
    param.copy_(values.reshape(param.shape).to(param.dtype))


def _check_compressed(modules, layers) -> None:
    """No config may claim a state the weights are not in: every planned layer holds its weight compressed."""
    loose = [n for n in layers
             if not (hasattr(modules[n], "weight_packed")
                     or getattr(getattr(modules[n], "weight", None), "dtype", None) in (torch.int8,
                                                                                       torch.float8_e4m3fn))]
    if loose:
        raise RuntimeError(f"compressed-tensors left the weights of {loose[:5]} uncompressed")
