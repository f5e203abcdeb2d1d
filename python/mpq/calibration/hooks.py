"""``mpq.calibrate``: per-layer loss sensitivity from one high-precision forward and backward pass per batch.

For every quantizable layer l (each ``nn.Linear``, called once or several times per forward), every candidate c
and every sample n (one row of the batch: one sequence of a causal LM):

    δ[n,l,c] = ⟨∂ℓ_n/∂W, Q_c(W) − W⟩ + ⟨∂ℓ_n/∂X_n, Q_c(X_n) − X_n⟩,   ∂ℓ_n/∂W = G_{Y,n}ᵀ X_n,  ∂ℓ_n/∂X_n = G_{Y,n} W
    s[l,c]   = mean_n δ[n,l,c]²

Q_c is the candidate's own quantizer (``mpq.candidates``): per-channel / per-tensor / grouped weights, per-token
dynamic or static per-tensor activation scales (calibrated first on the same batches, from the finite values of
non-padded tokens). How:
  * every parameter's ``requires_grad`` is switched off, so autograd computes only activation gradients and no
    weight gets ``.grad``; a forward pre-hook routes each Linear input through a private alias whose gradient is
    ∂ℓ/∂X of that call alone; a tensor hook on the output receives G_Y;
  * in the output's grad hook, per-sample weight gradients G_{Y,n}ᵀ X_n are formed a few samples at a time and
    dotted with Q_c(W) − W for all candidates by the fused kernel (``mpq.calib_kernel``); in the input's grad hook
    the same kernel sums G_X ⊙ (Q_c(X) − X) per sample. Only the δ scalars outlive a layer's backward.
  * The model runs in eval mode (dropout off; samples independent, so the gradient of Σ_n ℓ_n gives every
    ∂ℓ_n/∂Y_n). All flags and hooks are restored afterwards, also after an error; weights are never written.
  * Everything is computed in float32 (bf16/fp16 layers are upcast for the sums; Q still rounds on their grid).
Calibrated-weight candidates (GPTQ, AWQ, SmoothQuant: ``mpq.quantizers``) are solved first, once per (layer,
candidate), from one pass of the unquantized model; their δ use the stored integers' real ΔW (and Q of x / s),
and the table carries them (``table.quantized_weights``, saved on its own) for ``apply``.
Not covered: attention's two activation matmuls (Q·Kᵀ, P·V): transformers computes them in functions, not
modules, so there is nothing to hook; only ``nn.Linear`` layers are calibrated.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts.sensitivity_table import SensitivityTable
from ..candidates import Candidate, get_candidates
from ..formats import compute_scales
from ..models import batch_size, model_inputs, padding_mask, to_device, unpadded
from ..quantizers import calibrated_weights
from .devices import input_device, offloaded_weights_reloaded, weight_on
from .distributed import Ranks, describe
from .kernel import act_quant, delta_sums, weight_quant
from .scores import EXTRA, ExtraScores, check_scores

# per-sample weight gradients are formed this many values at a time (at least one sample): bounds the temporary
GRAD_CHUNK_VALUES = 1 << 22


# --- batches and losses ----------------------------------------------------------------------------------------


def causal_lm_loss(outputs, batch) -> torch.Tensor:
    """Per-sequence mean token cross-entropy [B] of a causal LM: logits[:, t] predict labels[:, t+1]; labels are
    ``batch["labels"]`` if given, else the input ids with padding (attention_mask == 0) ignored; -100 is ignored."""
    logits = getattr(outputs, "logits", None)
    if logits is None:
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("the default loss_fn needs a causal LM's logits [B, S, V]; pass loss_fn for other models")
    if isinstance(batch, Mapping):
        ids, labels, mask = batch.get("input_ids"), batch.get("labels"), batch.get("attention_mask")
    else:
        ids, labels, mask = (batch[0] if isinstance(batch, (tuple, list)) else batch), None, None
    if labels is None:
        if ids is None:
            raise ValueError("the default loss_fn needs input_ids or labels in the batch")
        labels = ids.clone()
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
    B, S, V = logits.shape
    tgt = labels[:, 1:].to(logits.device)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=-100,
                         reduction="none").view(B, S - 1)
    valid = (tgt != -100).to(ce.dtype)
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def fingerprint(batches: Sequence) -> str:
    """sha256 over every tensor of every batch (dtype, shape and bytes), in order."""
    h = hashlib.sha256()

    def feed(x, name=""):
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu").contiguous()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.view(torch.int16)
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
        elif isinstance(x, Mapping):
            for k in sorted(x, key=str):
                feed(x[k], f"{name}.{k}")
        elif isinstance(x, (tuple, list)):
            for i, v in enumerate(x):
                feed(v, f"{name}[{i}]")
        else:
            h.update(repr(x).encode())

    for b in batches:
        feed(b)
        h.update(b"|")
    return h.hexdigest()


def quantizable_layers(model: nn.Module, layers: Optional[Iterable[str]] = None) -> list:
    """(name, module) of every ``nn.Linear`` (or of the named ones), in module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layers is not None:
        if isinstance(layers, (str, bytes)):
            raise ValueError(f"layers must be a list of layer names, not the string {layers!r} (write [{layers!r}])")
        wanted = list(layers)
        repeated = sorted({n for n in wanted if wanted.count(n) > 1})
        if repeated:
            raise ValueError(f"layers names {repeated} more than once: each layer is calibrated once")
        by_name = dict(found)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"not nn.Linear layers of the model: {missing}")
        found = [(n, by_name[n]) for n in wanted]
    if not found:
        raise ValueError(f"{type(model).__name__} has no quantizable layer (nn.Linear)")
    return found


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0, self.last = total, enabled, time.monotonic(), 0.0

    def update(self, done: int):
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        el = now - self.t0
        eta = el / done * (self.total - done) if done else 0
        bar = "#" * int(30 * done / self.total)
        sys.stderr.write(f"\rcalibrate [{bar:<30}] {done}/{self.total} batches {el:6.1f}s eta {eta:5.0f}s")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# --- the pass --------------------------------------------------------------------------------------------------
class _Layer:
    """Hooks of one Linear: what to quantize and where its δ go."""

    def __init__(self, run, index, name, module, w_idx, w_quants, a_idx, a_quants, calibrated=()):
        self.run, self.index, self.name, self.module = run, index, name, module
        self.w_idx, self.w_quants, self.a_idx, self.a_quants = w_idx, w_quants, a_idx, a_quants
        # calibrated-weight candidates: (column j, QuantizedWeight, activation quantizer or None); their δ use the
        # stored integers' real ΔW and, for SmoothQuant, Q applied to x / s
        self.calibrated = list(calibrated)
        self.stack = []

    def pre(self, module, args):
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            raise ValueError(f"layer {self.name}: expected a floating-point input tensor")
        x = args[0]
        xa = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
        call = _Call(self, xa.detach())
        xa.register_hook(call.on_grad_x)
        self.stack.append(call)
        self.run.calls.append(call)
        return (xa,) + tuple(args[1:])

    def post(self, module, args, out):
        call = self.stack.pop()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(call.on_grad_y)


class _Call:
    """One call of a Linear in the current batch; holds its input until its backward is done."""

    def __init__(self, layer: _Layer, x: torch.Tensor):
        self.layer, self.x = layer, x

    def _samples(self, t: torch.Tensor, what: str):
        B = self.layer.run.batch_samples
        if t.dim() < 2 or t.shape[0] != B:
            raise ValueError(f"layer {self.layer.name}: {what} of shape {tuple(t.shape)} does not start with the "
                             f"batch's {B} samples (batch-first layouts only)")
        return t.reshape(B, -1, t.shape[-1])

    def _check(self, d: torch.Tensor, what: str):
        if not np.isfinite(d.numpy()).all():
            run = self.layer.run
            raise ValueError(f"non-finite {what} in layer {self.layer.name!r}, batch {run.batch_index}: the "
                             f"gradient or input of this layer holds NaN or Inf")

    def on_grad_y(self, gy: torch.Tensor):
        L = self.layer
        if not (L.w_quants or L.calibrated) or self.x is None:
            return None
        g = self._samples(gy.detach(), "output gradient").float()
        x = self._samples(self.x, "input").to(g.device).float()  # accelerate moves inputs inside forward
        w = weight_on(L.module, g.device, L.name).float()  # an offloaded weight is loaded again
        if L.run.extra is not None:  # the other score forms, only when asked (scores.py)
            L.run.extra.add_call(L, g, x, w)
        if L.calibrated:  # ⟨G_nᵀ X_n, ΔW⟩ = Σ_t g_t · (ΔW x_t): one matmul per candidate, no per-sample gradient formed
            # ΔW formed per call, not kept: one float32 copy per (layer, candidate) would outweigh the model
            res = torch.stack([(torch.matmul(x, (q.effective_weight().to(w.device) - w).t()) * g)
                               .sum((1, 2), dtype=torch.float64) for _, q, _ in L.calibrated], 1).cpu()
            self._check(res, "weight sensitivity")
            L.run.add(L.index, [j for j, _, _ in L.calibrated], res, weight=True)
        if not L.w_quants:
            return None
        B, out_f, in_f = x.shape[0], w.shape[0], w.shape[1]
        chunk = max(1, GRAD_CHUNK_VALUES // max(1, out_f * in_f))
        res = torch.empty(B, len(L.w_quants), dtype=torch.float64)
        for s in range(0, B, chunk):
            gw = torch.bmm(g[s:s + chunk].transpose(1, 2), x[s:s + chunk])  # per-sample ∂ℓ_n/∂W [k, out, in]
            res[s:s + chunk] = delta_sums(w, gw, L.w_quants, out_f).reshape(-1, len(L.w_quants)).cpu()
            del gw
        self._check(res, "weight sensitivity")
        L.run.add(L.index, L.w_idx, res, weight=True)
        return None

    def on_grad_x(self, gx: torch.Tensor):
        L = self.layer
        x, self.x = self.x, None  # the last use of the input
        act_pre = [(j, q, aq) for j, q, aq in L.calibrated if aq is not None]
        if not (L.a_quants or act_pre) or x is None:
            return None
        B = L.run.batch_samples
        x2 = self._samples(x, "input").float()
        g2 = self._samples(gx.detach(), "input gradient").float()
        rows = x2.shape[1]
        for j, q, aq in act_pre:  # G ⊙ (Q(x/s)·s − x) = (G·s) ⊙ (Q(x/s) − x/s)
            s = q.input_scale.to(x2.device)
            res = delta_sums((x2 / s).reshape(-1, x2.shape[-1]), (g2 * s).reshape(-1, g2.shape[-1]), [aq], rows)
            res = res.reshape(B, 1).cpu()
            self._check(res, "activation sensitivity")
            L.run.add(L.index, [j], res, weight=False)
        if not L.a_quants:
            return None
        res = delta_sums(x2.reshape(-1, x2.shape[-1]), g2.reshape(-1, g2.shape[-1]), L.a_quants, rows)
        res = res.reshape(B, len(L.a_quants)).cpu()
        self._check(res, "activation sensitivity")
        L.run.add(L.index, L.a_idx, res, weight=False)
        return None


class _Run:
    def __init__(self, n_layers, n_cands):
        self.n_layers, self.n_cands = n_layers, n_cands
        self.calls = []
        self.batch_index = -1
        self.batch_samples = 0
        self.delta = self.delta_w = None
        self.extra = None  # scores.ExtraScores when calibrate is asked for other score forms

    def start(self, index, samples):
        self.batch_index, self.batch_samples = index, samples
        if self.extra is not None:
            self.extra.start(samples)
        self.delta = np.zeros((samples, self.n_layers, self.n_cands))
        self.delta_w = np.zeros_like(self.delta)

    def add(self, layer, idx, values, weight):
        v = values.numpy()
        self.delta[:, layer, idx] += v
        if weight:
            self.delta_w[:, layer, idx] += v


def _static_scales(model, layers, batches, cands, device, ranks: Ranks):
    """Per layer and static candidate: the per-tensor activation (scale, zero_point) from the range of the finite
    values the layer sees over all calibration batches (padded tokens excluded; every rank's batches)."""
    lo = [math.inf] * len(layers)
    hi = [-math.inf] * len(layers)
    state = {"mask": None}

    def make_hook(i):
        def hook(module, args):
            x = args[0].detach()
            x = unpadded(x, state["mask"])
            if not x.numel():
                return
            a, b = (float(v) for v in torch.aminmax(x))
            if not (math.isfinite(a) and math.isfinite(b)):  # rare: only then pay for the finite-value filter
                x = x[torch.isfinite(x)]
                if not x.numel():
                    return
                a, b = float(x.min()), float(x.max())
            lo[i], hi[i] = min(lo[i], a), max(hi[i], b)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        with torch.no_grad():
            for b in batches:
                b = to_device(b, device)
                state["mask"] = padding_mask(b)
                args, kwargs = model_inputs(b)
                model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    lo, hi = ranks.reduce_range(lo, hi)
    scales = {}
    for i in range(len(layers)):
        rng = torch.tensor([lo[i] if math.isfinite(lo[i]) else 0.0, hi[i] if math.isfinite(hi[i]) else 0.0])
        for c in cands:
            s, z = compute_scales(rng, c.act_format)
            scales[i, c.name] = (float(s[0]), float(z[0]))
    return scales


def calibrate(model: nn.Module, batches: Iterable, candidates=("fp8", "int8"),
              loss_fn: Optional[Callable] = None, progress: bool = True, *,
              layers: Optional[Iterable[str]] = None, scores: Sequence[str] = ("first_order",)) -> SensitivityTable:
    """Per-layer loss sensitivity s[l, c] = mean_n δ[n,l,c]² of ``model`` on ``batches`` (module docstring).

    batches: an iterable of batches (kept in a list: a candidate with static activation scales needs a first
    forward pass over all of them to calibrate those scales): dicts
    (``input_ids``, ``attention_mask``, ``labels``: the model gets every entry but ``labels``), tensors (the
    model's input), or tuples (the first item is the input, the rest is for ``loss_fn``). The first dimension of
    every input is the sample.
    loss_fn(outputs, batch) → per-sample losses [B]; default: ``causal_lm_loss`` for Hugging Face causal LMs.
    layers: names of the ``nn.Linear`` modules to calibrate (default: all).
    scores: the per-sample score forms to keep (``mpq.calibration.scores``): "first_order" (δ², the default and
    always kept), "per_token" (Σ_t δ_t²) and "elementwise" (ModelOpt's Σ (G ⊙ ΔY)²); the first one named is what
    the table's ``mse`` reports (and so what ``select`` optimises); ``table.with_score(name)`` switches. The
    extra forms cost about one more forward of every layer per candidate.
    On every rank of an initialised torch.distributed process group (``mpq.calibration.distributed``), with the
    same arguments everywhere: each rank calibrates its share of the batches and every rank returns the table of
    all of them; a rank that differs, fails or dies makes every rank raise (naming it).
    A model dispatched by accelerate (``device_map``, CPU or disk offload) calibrates as the same model in one piece.
    @raises ValueError on an unknown candidate, an empty batch iterator, a model without ``nn.Linear``, a loss_fn
    that does not return [B] losses, or a NaN/Inf loss or gradient (naming the layer and the batch).
    """
    ranks = Ranks.current(input_device(model))
    forms = check_scores(scores)
    with ranks.failures_shared():
        return _calibrate(model, batches, candidates, loss_fn, progress, layers, ranks, forms)


def _calibrate(model, batches, candidates, loss_fn, progress, layers, ranks: Ranks, forms) -> SensitivityTable:
    cands: tuple[Candidate, ...] = get_candidates(candidates)
    named = quantizable_layers(model, layers)
    batches = list(batches)
    if not batches:
        raise ValueError("calibrate: the batch iterator is empty")
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    loss_name = ("causal_lm_loss" if loss_fn is causal_lm_loss else
                 getattr(loss_fn, "__name__", type(loss_fn).__name__))
    sizes = [batch_size(b) for b in batches]
    data_fingerprint = fingerprint(batches)
    ranks.check_same(lambda: describe(model, named, cands, sizes, data_fingerprint, loss_name))
    shard = ranks.shard(batches)
    params = list(model.parameters())
    device = input_device(model)
    L, C = len(named), len(cands)

    # by name: accelerate gives an offloaded module a new parameter object each time it loads or unloads it
    saved_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    saved_modes = [(m, m.training) for m in model.modules()]
    handles = []
    run = _Run(L, C)
    if any(f in EXTRA for f in forms):
        run.extra = ExtraScores(forms, L, C)
    t0 = time.perf_counter()
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        static = [c for c in cands if c.act_static and not c.calibrated_weight]
        scales = _static_scales(model, named, [b for _, b in shard], static, device, ranks) if static else {}
        # every rank solves the calibrated candidates on all batches: the same integers everywhere, no exchange
        qweights, unavailable, sq_static = calibrated_weights(
            model, named, batches, cands, device,
            data_fingerprint if any(c.calibrated_weight for c in cands) else "")
        act_scales = np.full((L, C), np.nan, np.float32)
        act_zps = np.full((L, C), np.nan, np.float32)
        applicable = np.ones((L, C), bool)
        for i, (name, mod) in enumerate(named):
            w_idx, w_q, a_idx, a_q, pre = [], [], [], [], []
            for j, c in enumerate(cands):
                if not c.applies_to(mod.weight) and not c.calibrated_weight:
                    unavailable[i, j] = f"group size {c.group_size} does not divide in_features {mod.in_features}"
                if (i, j) in unavailable:
                    applicable[i, j] = False
                    continue
                if c.calibrated_weight:
                    sz = sq_static.get((i, j))
                    if sz:
                        act_scales[i, j], act_zps[i, j] = sz
                    aq = None if c.act_format is None else _static_quant(c, sz) if c.act_static else act_quant(c)
                    pre.append((j, qweights[name, c.name], aq))
                    continue
                w_idx.append(j)
                w_q.append(weight_quant(c))
                if c.act_format is not None:
                    sz = scales.get((i, c.name))
                    if sz:
                        act_scales[i, j], act_zps[i, j] = sz
                    a_idx.append(j)
                    a_q.append(_static_quant(c, sz) if c.act_static else act_quant(c))
            layer = _Layer(run, i, name, mod, w_idx, w_q, a_idx, a_q, pre)
            handles.append(mod.register_forward_pre_hook(layer.pre))
            handles.append(mod.register_forward_hook(layer.post))

        deltas, deltas_w = [], []
        bar = _Progress(len(shard), progress and ranks.rank == 0 and sys.stderr.isatty())
        with torch.enable_grad(), offloaded_weights_reloaded(model):  # keeps offloading's memory saving
            for done, (bi, batch) in enumerate(shard):
                batch = to_device(batch, device)
                run.start(bi, batch_size(batch))
                args, kwargs = model_inputs(batch)
                outputs = model(*args, **kwargs)
                losses = loss_fn(outputs, batch)
                _check_losses(losses, run.batch_samples, bi)
                if not losses.requires_grad:
                    raise ValueError(f"the losses of batch {bi} carry no gradient (computed under torch.no_grad, "
                                     "detached, or constant): calibration needs ∂ℓ/∂Y of every layer")
                losses.sum().backward()
                run.calls.clear()
                deltas.append(run.delta)
                deltas_w.append(run.delta_w)
                if run.extra is not None:
                    run.extra.finish()
                bar.update(done + 1)
        empty = [np.zeros((0, L, C))]  # a rank with no batch (fewer batches than ranks)
        extra = run.extra.stacked() if run.extra is not None else []
        delta, delta_w, *extra = ranks.gather_samples(
            (np.concatenate(deltas or empty), np.concatenate(deltas_w or empty), *extra), sizes)
        for a in (delta, delta_w, *extra):
            a[:, ~applicable] = np.nan
    finally:
        for h in handles:
            h.remove()
        for call in run.calls:
            call.x = None
        run.calls.clear()
        for n, p in model.named_parameters():
            p.requires_grad_(saved_grad.get(n, p.requires_grad))
        for m, mode in saved_modes:
            m.training = mode
    measured = np.nan_to_num(delta, nan=0.0)
    if not measured.any():
        raise ValueError("every first-order loss change δ is zero: the losses do not depend on the layers (one-token "
                         "sequences, every label -100, or a loss of something else); a table of zeros would let "
                         "select quantize everything at a predicted loss of 0")
    flat = [name for (name, _), zero in zip(named, ~measured.any(axis=(0, 2))) if zero]
    info = dict(model=type(model).__name__, loss=loss_name, seconds=time.perf_counter() - t0,
                layer_shapes=[list(m.weight.shape) for _, m in named])
    if ranks.distributed:
        info["ranks"] = ranks.size
    if unavailable:  # said in the table: which candidate cannot run which layer, and why
        info["unavailable"] = {}
        for (i, j), why in sorted(unavailable.items()):
            info["unavailable"].setdefault(named[i][0], {})[cands[j].name] = why
    if len(qweights):
        info["quantized_weights"] = {"entries": len(qweights), "bytes": qweights.nbytes()}
    if flat:  # layers the loss does not see (unused, or their outputs cut off): say so, do not hide it
        warnings.warn(f"calibrate: every δ of layer(s) {flat[:5]}{' ...' if len(flat) > 5 else ''} is zero: the "
                      "loss does not depend on them, so their predicted loss is 0", stacklevel=3)
        info["zero_delta_layers"] = flat
    return SensitivityTable(tuple(n for n, _ in named), tuple(c.name for c in cands), delta, delta_w, act_scales,
                            np.nan_to_num(act_zps, nan=0.0), data_fingerprint, info,
                            quantized_weights=qweights if len(qweights) else None,
                            scores=dict(zip(run.extra.forms, extra)) if run.extra is not None else {}, score=forms[0])


def _static_quant(c: Candidate, sz):
    from .kernel import TensorQuant
    s, z = sz
    return TensorQuant(c.act_format, "tensor", scale=s, zero_point=z)


def _check_losses(losses, samples: int, batch_index: int) -> None:
    if not isinstance(losses, torch.Tensor):
        raise ValueError(f"loss_fn must return a tensor of per-sample losses, got {type(losses).__name__}")
    if losses.dim() != 1 or losses.shape[0] != samples:
        what = "a scalar" if losses.dim() == 0 else f"shape {tuple(losses.shape)}"
        raise ValueError(f"loss_fn returned {what}; it must return per-sample losses of shape [{samples}] "
                         f"(batch {batch_index}), e.g. reduction='none' and a mean over tokens")
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten().tolist()[:8]
        raise ValueError(f"non-finite loss in batch {batch_index}, sample(s) {idx}")
