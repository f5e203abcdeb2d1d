"""Calibrated-weight quantizers: GPTQ (error-compensating rounding), AWQ (activation-aware input-channel scaling),
optimized RTN (the full signed int range with searched group scales, as llama.cpp and AutoRound's opt-RTN) and
SmoothQuant (activation outliers migrated into the weights), the algorithms behind the candidates whose
``algorithm`` is not "rtn". Written here, after the published algorithms (Frantar et al. 2022, Lin et al. 2023,
Xiao et al. 2022): llm-compressor would replace the environment's transformers and compressed-tensors, and its
and auto-round's entry points quantize whole models sequentially, not one (layer, candidate) at a time.

How a predecessor-dependent algorithm fits per-layer choices. GPTQ minimises ‖X Wᵀ − X Q(W)ᵀ‖² with the
Hessian H = Σ x xᵀ of the layer's inputs; run sequentially, each layer's X comes from the model whose earlier
layers are already quantized. Here every layer's statistics come from ONE pass of the unquantized model over the
calibration batches: with mixed per-layer choices the predecessors' precision is unknown at calibration (it is
what selection decides), and the sensitivity table must hold one δ per (layer, candidate) whatever the other
layers run. So each (layer, candidate) is solved once, independently, from base inputs, and what the selector
predicts, ``apply`` runs and checkpoints store are those very integers. What this costs against sequential GPTQ
is measured by ``bench/gptq_base_vs_sequential.py`` (bench/RESULTS.md).

A candidate that cannot quantize a layer (its group size does not divide in_features, the layer saw no or only
non-finite calibration inputs) is unavailable there: the table marks it (``applicable`` False, the reason in
``info["unavailable"]``), never a silent RTN stand-in.
"""
from .awq import awq_scales
from .compute import calibrated_weights
from .gptq import gptq_quantize
from .input_stats import InputStats, collect_input_stats
from .ortn import optimized_rtn
from .smoothquant import smoothquant_scales

__all__ = ["InputStats", "awq_scales", "calibrated_weights", "collect_input_stats",
           "gptq_quantize", "optimized_rtn", "smoothquant_scales"]
