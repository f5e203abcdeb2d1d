"""Every calibrated (layer, candidate) weight from the input statistics of the unquantized model: the expensive
part, done once per (layer, candidate) in ``mpq.calibrate`` and saved (``QuantizedWeights``)."""
from __future__ import annotations

import math

import torch

from ..artifacts.quantized_weights import QuantizedWeight, QuantizedWeights, weight_sha256
from ..formats import compute_scales
from .awq import awq_scales
from .gptq import gptq_quantize
from .grid import rtn
from .input_stats import collect_input_stats
from .ortn import optimized_rtn
from .smoothquant import smoothquant_scales


def calibrated_weights(model, layers, batches, cands, device, data_fingerprint: str = ""):
    """(QuantizedWeights, unavailable {(layer index, candidate index): reason}, static {(i, j): (scale, zp)}) for
    the candidates of ``cands`` whose ``calibrated_weight`` is set, on ``layers`` [(name, module)]. ``static``
    holds the per-tensor activation scale of static SmoothQuant candidates: from the range of x / s, which is
    min/max over channels of each channel's own range divided by s_j (s > 0), exact without a second pass."""
    picked = [(j, c) for j, c in enumerate(cands) if c.calibrated_weight]
    unavailable, static, entries = {}, {}, {}
    if not picked:
        return QuantizedWeights({}, data_fingerprint), unavailable, static
    need_h = {i for i, (_, m) in enumerate(layers)
              if any(c.algorithm in ("gptq", "awq", "ortn") and c.applies_to(m.weight) for _, c in picked)}
    stats = collect_input_stats(model, layers, batches, device, need_h)
    for i, (name, mod) in enumerate(layers):
        st = stats[i].to("cpu")  # the solves run on the CPU, in float64 where it matters
        w = mod.weight.detach().to("cpu", torch.float32)
        sha = None
        for j, c in picked:
            if not c.applies_to(mod.weight):
                unavailable[i, j] = f"group size {c.group_size} does not divide in_features {mod.in_features}"
                continue
            why = st.problem()
            if why:
                unavailable[i, j] = why
                continue
            xs = None
            if c.algorithm == "gptq":
                codes, scales = gptq_quantize(w, st.hessian, c.weight_format, c.group_size)
            elif c.algorithm == "ortn":
                codes, scales = optimized_rtn(w, st.hessian, c.weight_format, c.group_size)
            elif c.algorithm == "awq":
                codes, scales, xs, _, _ = awq_scales(w, st.hessian, st.abs_mean, c.weight_format, c.group_size)
                if c.group_size:  # the full-range scale search, on the scaled weight and the inputs x / s it sees
                    codes, scales = optimized_rtn(w * xs, st.hessian / (xs[:, None] * xs[None, :]), c.weight_format,
                                                  c.group_size)
            else:
                xs = smoothquant_scales(w, st.abs_max)
                codes, scales = rtn(w * xs, c.weight_format, c.group_size)
                if c.act_static:
                    lo, hi = float((st.ch_min / xs).min()), float((st.ch_max / xs).max())
                    s, z = compute_scales(torch.tensor([lo, hi]), c.act_format)
                    static[i, j] = (float(s[0]), float(z[0]))
            sha = sha or weight_sha256(w)
            entries[name, c.name] = QuantizedWeight(codes, scales, xs, sha)
        if st.hessian is not None:
            st.hessian = None  # the largest temporary: freed layer by layer
    return QuantizedWeights(entries, data_fingerprint), unavailable, static


