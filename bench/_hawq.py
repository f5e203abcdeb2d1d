"""HAWQ-V3-style allocator, a baseline of bench/selection_quality.py (issue 20, item 6).

HAWQ (Dong et al., V2 NeurIPS 2020, V3 ICML 2021) scores a layer l at a format c by
Ω_l(c) = Tr(H_l) / n_l · ‖Q_c(W_l) − W_l‖², H_l the Hessian of the training loss with respect to W_l's n_l
weights, and chooses formats by an integer program over Σ Ω under a size / BOPs / latency limit. Here:

* ``hutchinson_traces``: Tr(H_l) of the mean per-sample calibration loss (mpq's causal_lm_loss, the ℓ_n that
  calibration uses) by Hutchinson's estimator E_z[zᵀHz], one Rademacher z over all scored layers at a time
  (restricted per layer), on each calibration batch; Hz by double backward (exact; a transformers model runs its
  eager attention meanwhile, as torch's fused CPU attention has no double backward) or by central differences
  of gradients, (g(W + εz) − g(W − εz)) / 2ε.
* ``hawq_table``: Ω as the cost of a SensitivityTable, so that the same exact MCKP solver (``mpq.select``) and the
  same budget choose the plan — HAWQ-V3's ILP with more than two formats. ΔW is each candidate's deployed weight
  (the calibrated integers of GPTQ / AWQ candidates, from ``table.quantized_weights``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mpq.artifacts import SensitivityTable
from mpq.candidates import get_candidates


def hutchinson_trace(loss_of: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], probes: int,
                     generator: torch.Generator, method: str = "double_backward",
                     eps: float = 1e-3) -> np.ndarray:
    """[len(params)] Hutchinson estimates of Tr(∂²L/∂p²) for each tensor p of ``params`` (its own diagonal block
    of the Hessian), L = ``loss_of()``, averaged over ``probes`` Rademacher draws. The params must require grad.
    method "double_backward": Hz = ∂(gᵀz)/∂p, exact; "finite_difference": Hz ≈ (g(p + εz) − g(p − εz)) / 2ε with
    ε = eps · rms(p) per tensor (the params are restored exactly afterwards)."""
    if method not in ("double_backward", "finite_difference"):
        raise ValueError(f"method must be 'double_backward' or 'finite_difference', got {method!r}")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    acc = np.zeros(len(params))

    def draw():
        return [torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8).to(p.dtype).mul_(2).sub_(1)
                for p in params]

    if method == "double_backward":
        grads = torch.autograd.grad(loss_of(), params, create_graph=True)
        for k in range(probes):
            zs = draw()
            hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=k < probes - 1)
            acc += [float((h.double() * z.double()).sum()) for h, z in zip(hz, zs)]
        return acc / probes
    steps = [eps * float(p.detach().double().square().mean().sqrt()) or eps for p in params]
    saved = [p.detach().clone() for p in params]
    try:
        for _ in range(probes):
            zs = draw()
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, s, z, h in zip(params, saved, zs, steps):
                        p.copy_(s + sign * h * z)
                sides.append(torch.autograd.grad(loss_of(), params))
            acc += [float(((gp.double() - gm.double()) * z.double()).sum() / (2 * h))
                    for gp, gm, z, h in zip(sides[0], sides[1], zs, steps)]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return acc / probes


def hutchinson_traces(model: nn.Module, layers: Sequence[str], batches: Sequence, probes: int = 8, seed: int = 0,
                      method: str = "double_backward", loss_fn=None) -> np.ndarray:
    """[len(layers)] Tr(H_l) of the weight of each named Linear: the mean over ``batches`` (dicts of input_ids /
    attention_mask) of the Hutchinson estimate of the Hessian of that batch's mean per-sample loss, ``probes``
    draws per batch. Only those weights require grad meanwhile; flags and training mode are restored."""
    from mpq.calibration import causal_lm_loss
    loss_fn = loss_fn or causal_lm_loss
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in layers]
    all_params = list(model.parameters())
    saved_flags = [p.requires_grad for p in all_params]
    was_training = model.training
    gen = torch.Generator().manual_seed(seed)
    total = np.zeros(len(layers))
    config = getattr(model, "config", None)
    saved_attn = getattr(config, "_attn_implementation", None)
    try:
        if method == "double_backward" and saved_attn not in (None, "eager"):
            config._attn_implementation = "eager"  # torch's fused CPU attention has no double backward
        model.eval()
        for p in all_params:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                def loss_of(batch=batch):
                    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    return loss_fn(out, batch).mean()
                total += hutchinson_trace(loss_of, weights, probes, gen, method)
    finally:
        if saved_attn is not None:
            config._attn_implementation = saved_attn
        for p, g in zip(all_params, saved_flags):
            p.requires_grad_(g)
            p.grad = None
        model.train(was_training)
    return total / len(batches)


def deployed_weight(layer: str, candidate, weight: torch.Tensor, quantized_weights=None) -> Optional[torch.Tensor]:
    """The weight a candidate runs for a Linear, as the unscaled input sees it: RTN's Q(W), or a calibrated
    candidate's stored integers (``QuantizedWeight.effective_weight``); None where it does not apply."""
    if not candidate.applies_to(weight):
        return None
    if not candidate.calibrated_weight:
        return candidate.quantize_weight(weight)
    if quantized_weights is None or (layer, candidate.name) not in quantized_weights:
        return None
    return quantized_weights.get_for(layer, candidate.name, weight).effective_weight().to(weight.dtype)


def hawq_table(model: nn.Module, traces: np.ndarray, layers: Sequence[str], like: SensitivityTable) -> SensitivityTable:
    """A SensitivityTable whose .mse is Ω_l(c) = max(Tr(H_l), 0) / n_l · ‖Q_c(W_l) − W_l‖² for ``layers`` (the rest
    and unavailable candidates: NaN, as in the calibration's table). A negative trace estimate (a non-convex
    point, or noise) is clipped to 0: HAWQ's score assumes a positive curvature."""
    modules = dict(model.named_modules())
    cands = get_candidates(like.candidates)
    qw = like.quantized_weights
    mse = np.full((len(like.layers), len(cands)), np.nan)
    for t, name in zip(traces, layers):
        w = modules[name].weight.detach()
        for j, c in enumerate(cands):
            q = deployed_weight(name, c, w, qw)
            if q is not None:
                mse[like.layers.index(name), j] = max(float(t), 0.0) / w.numel() * \
                    float((q.double() - w.double()).square().sum())
    delta = np.sqrt(mse)[None]  # one "sample": .mse = mean_n δ² reproduces Ω
    return SensitivityTable(like.layers, like.candidates, delta, np.zeros_like(delta), like.act_scales,
                            like.act_zero_points, like.data_fingerprint, {"score": "hawq Tr(H)/n·‖ΔW‖²"})
