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
MoE experts: a stacked-experts module of a known layout runs, while calibrating, as one Linear pair per expert
(``mpq.experts``; entries ``<experts>.<e>.gate_up_proj`` / ``.down_proj``) whose rows are the tokens routed to
it; each row counts for its own sample (``calibration.experts``). A model with per-expert Linear lists (whose
rows only its own code routes) is calibrated one sample per forward pass, so that every row is that sample's.
Experts no calibration token reached, and expert modules of unknown layout (not calibrated), are warned about and
listed in the table's info.
Attention's two activation matmuls (Q·Kᵀ, P·V) and its KV cache are calibrated when a candidate applies to
them (``Candidate.kinds``: the ``mm_*`` and ``kv_*`` candidates): attention then runs through named modules for the
whole calibration (``mpq.attention``, ``calibration.attention``); a model whose attention cannot be routed is
calibrated Linear-only, with a warning and the reason in ``info["attention"]``.
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
from ..coverage import Coverage, measure
from ..formats import compute_scales
from ..models import batch_size, model_inputs, padding_mask, to_device, unpadded
from ..experts import routed_experts, routed_modules
from ..experts.layouts import linear_expert_lists
from ..quantizers import calibrated_weights
from . import experts as routed
from ..attention import KVCache, MatMul, layer_kind
from .attention import AttentionLayer, AttentionRanges, calibration_attention
from .devices import input_device, offloaded_weights_reloaded, weight_on
from .distributed import Ranks, describe
from .granularity import GroupSplit, parse_granularity
from .kernel import act_quant, delta_sums, weight_quant
from .points import weight_delta_parts, weight_terms
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
    """(name, module) of every ``nn.Linear`` (or of the named ones), in module order; while attention is routed
    (``mpq.attention.routed_attention``), its ``MatMul`` and ``KVCache`` modules too."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, MatMul, KVCache))]
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
            raise ValueError(f"not nn.Linear layers of the model (nor routed attention's matmul/cache modules): "
                             f"{missing}")
        found = [(n, by_name[n]) for n in wanted]
    if not found:
        raise ValueError(f"{type(model).__name__} has no quantizable layer (nn.Linear)")
    return found


def model_coverage(model: nn.Module, layers: Optional[Iterable[str]] = None, *, warn: bool = True,
                   left_out_why: str = "by layers=", stacklevel: int = 1) -> Coverage:
    """Which parameters of ``model`` calibrating (or profiling) ``layers`` (default: every quantizable layer)
    covers, by tensors and bytes, and which modules hold the rest (``mpq.coverage``); warns about unknown layouts
    (attributed ``stacklevel`` frames up: 1 = the caller)."""
    with routed_experts(model, warn=False):  # expert GEMMs are layers in the routed form (already routed: no-op)
        chosen = [n for n, _ in quantizable_layers(model, layers)]
        return measure(model, chosen, [n for n, _ in quantizable_layers(model)], warn=warn,
                       left_out_why=left_out_why, stacklevel=stacklevel + 1)


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
        self.routing_owner = None  # the RoutedExperts of an expert GEMM: its rows are routed tokens
        self.one_sample_rows = False  # a Linear of a per-expert list: any rows, all of the pass's one sample

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
        owner = layer.routing_owner
        self.row_samples = None if owner is None else routed.row_samples(owner, layer)

    def _samples(self, t: torch.Tensor, what: str):
        B = self.layer.run.batch_samples
        if self.row_samples is not None:
            return routed.by_sample(t, self.row_samples, B)
        if self.layer.one_sample_rows:
            if B != 1:
                raise ValueError(f"layer {self.layer.name}: a per-expert Linear in a batch of {B} samples")
            return t.reshape(1, -1, t.shape[-1])
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
                               .sum(1, dtype=torch.float64) for _, q, _ in L.calibrated], 2).cpu()  # [B, out, J]
            if L.run.groups:  # below the layer: the per-row sums by group (calibration.granularity)
                L.run.groups.add(L.index, [j for j, _, _ in L.calibrated], 0, L.run.groups.per_row_sums(L.index, res))
            res = res.sum(1)
            self._check(res, "weight sensitivity")
            L.run.add(L.index, [j for j, _, _ in L.calibrated], res, weight=True)
        if not L.w_quants:
            return None
        B, out_f, in_f = x.shape[0], w.shape[0], w.shape[1]
        chunk = max(1, GRAD_CHUNK_VALUES // max(1, out_f * in_f))
        res = torch.empty(B, len(L.w_quants), dtype=torch.float64)
        rows = L.run.groups.rows(L.index) if L.run.groups else out_f  # rows summed into one δ (granularity)
        terms = weight_terms(w, L.w_cands)  # W, and the residuals multipoint candidates quantize (calibration.points)
        for s in range(0, B, chunk):
            gw = torch.bmm(g[s:s + chunk].transpose(1, 2), x[s:s + chunk])  # per-sample ∂ℓ_n/∂W [k, out, in]
            part = weight_delta_parts(terms, L.w_quants, gw, rows).cpu()
            res[s:s + chunk] = part.sum(1)
            if L.run.groups:
                L.run.groups.add(L.index, L.w_idx, s, part)
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
        if self.row_samples is not None:  # Q over the expert's real rows, each row's sum to its sample
            res = routed.act_delta(x.float(), gx.detach().float(), L.a_quants, self.row_samples, B).cpu()
        else:
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
        self.mask = None  # the batch's padding mask (expert rows count unpadded tokens)
        self.routed_tokens = {}  # expert GEMM index -> calibration tokens it received
        self.groups: Optional[GroupSplit] = None  # granularity below the layer
        self.extra = None  # scores.ExtraScores when calibrate is asked for other score forms

    def start(self, index, samples):
        self.batch_index, self.batch_samples = index, samples
        if self.groups:
            self.groups.start(samples)
        if self.extra is not None:
            self.extra.start(samples)
        self.delta = np.zeros((samples, self.n_layers, self.n_cands))
        self.delta_w = np.zeros_like(self.delta)

    def add(self, layer, idx, values, weight):
        v = values.numpy()
        self.delta[:, layer, idx] += v
        if weight:
            self.delta_w[:, layer, idx] += v


def _static_scales(model, layers, batches, cands, device, ranks: Ranks, owners=None):
    """Per layer and static candidate: the per-tensor activation (scale, zero_point) from the range of the finite
    values the layer sees over all calibration batches (padded tokens excluded; every rank's batches); for
    attention's layers a list of them (``AttentionRanges.scales``), from the same pass."""
    lo = [math.inf] * len(layers)
    hi = [-math.inf] * len(layers)
    state = {"mask": None}

    def make_hook(i):
        owner = (owners or {}).get(i)

        def hook(module, args):
            x = args[0].detach()
            x = unpadded(x, state["mask"]) if owner is None else routed.unpadded_rows(x, owner, state["mask"])
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

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, (_, m) in enumerate(layers)
               if layer_kind(m) == "linear"]
    attention = AttentionRanges(layers, cands)
    handles += attention.register(state)
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
    a_lo, a_hi = attention.ranges()
    lo, hi = ranks.reduce_range(lo + a_lo, hi + a_hi)  # the Linear and attention ranges: one exchange
    scales = attention.scales(layers, cands, lo[len(layers):], hi[len(layers):])
    lo, hi = lo[:len(layers)], hi[:len(layers)]
    for i in range(len(layers)):
        if layer_kind(layers[i][1]) != "linear":
            continue
        rng = torch.tensor([lo[i] if math.isfinite(lo[i]) else 0.0, hi[i] if math.isfinite(hi[i]) else 0.0])
        for c in cands:
            if "linear" not in c.kinds:
                continue
            s, z = compute_scales(rng, c.act_format)
            scales[i, c.name] = (float(s[0]), float(z[0]))
    return scales


def calibrate(model: nn.Module, batches: Iterable, candidates=("fp8", "int8"),
              loss_fn: Optional[Callable] = None, progress: bool = True, *,
              layers: Optional[Iterable[str]] = None, granularity: str = "layer",
              scores: Sequence[str] = ("first_order",), quantizer_batches: Optional[Iterable] = None):
    """Per-layer loss sensitivity s[l, c] = mean_n δ[n,l,c]² of ``model`` on ``batches`` (module docstring).

    batches: an iterable of batches (kept in a list: a candidate with static activation scales needs a first
    forward pass over all of them to calibrate those scales): dicts
    (``input_ids``, ``attention_mask``, ``labels``: the model gets every entry but ``labels``), tensors (the
    model's input), or tuples (the first item is the input, the rest is for ``loss_fn``). The first dimension of
    every input is the sample.
    loss_fn(outputs, batch) → per-sample losses [B]; default: ``causal_lm_loss`` for Hugging Face causal LMs.
    candidates: names (or ``Candidate`` objects); each says which kinds of layer it applies to. The Linear ones
    (the default ``("fp8", "int8")``) calibrate every ``nn.Linear``; add attention candidates
    (``mpq.candidates.ATTENTION_CANDIDATES``: ``mm_fp8``, ``mm_fp8_static``, ``mm_fp8_gaudi2``, ``mm_int8``,
    ``mm_int8_static`` for ``…self_attn.matmul_qk`` / ``…matmul_av``; ``kv_fp8``, ``kv_fp8_gaudi2``,
    ``kv_fp8_head``, ``kv_fp8_token``, ``kv_int8_head``, ``kv_int8_token`` for ``…k_cache`` / ``…v_cache``) to calibrate attention
    too: a transformers model's attention is routed through those modules for the calibration and restored after
    (``mpq.attention.routed_attention``). A candidate is NaN (``info["unavailable"]`` says why) on the layers of
    another kind. Custom attention that cannot be routed: a warning, Linear layers only, and the reason in
    ``info["attention"]``; static attention scales are in ``info["attention_scales"]``.
    layers: names of the ``nn.Linear`` modules to calibrate (default: all; the routed attention modules too; expert
    GEMMs named as in the module doc).
    granularity: "layer" (a SensitivityTable), or "channel" / "group:G" (a ``ChannelTable``: the weight term of δ
    also per output row or per G rows, from the same pass; ``calibration.granularity``); Linear layers only.
    scores: the per-sample score forms to keep (``mpq.calibration.scores``): "first_order" (δ², the default and
    always kept), "per_token" (Σ_t δ_t²) and "elementwise" (ModelOpt's Σ (G ⊙ ΔY)²); the first one named is what
    the table's ``mse`` reports (and so what ``select`` optimises); ``table.with_score(name)`` switches. The
    extra forms cost about one more forward of every layer per candidate; routed attention modules get them too
    (``calibration.attention``).
    quantizer_batches: batches (as ``batches``) that the calibrated-weight candidates (GPTQ, AWQ, optimized RTN,
    SmoothQuant) fit their integers on, instead of ``batches``; δ is then measured on data the integers were not
    fitted to. Fitted and measured on the same batches, δ is biased low where an algorithm has many degrees of
    freedom: GPTQ (one per weight) fits the calibration inputs themselves, and on SmolLM2 its all-INT4 plan measured
    10.5× its prediction on held-out text against AWQ's 2.7× (bench/RESULTS.md). A quantizer batch that is also a
    sensitivity batch gets a warning. ``table.quantized_weights.data_fingerprint`` is the quantizer batches'.
    On every rank of an initialised torch.distributed process group (``mpq.calibration.distributed``), with the
    same arguments everywhere: each rank calibrates its share of the batches and every rank returns the table of
    all of them; a rank that differs, fails or dies makes every rank raise (naming it).
    A model dispatched by accelerate (``device_map``, CPU or disk offload) calibrates as the same model in one piece.
    ``table.info["coverage"]``: which parameters of the model the table covers (``model_coverage``).
    @raises ValueError on an unknown candidate, an empty batch iterator, a model without ``nn.Linear``, a loss_fn
    that does not return [B] losses, or a NaN/Inf loss or gradient (naming the layer and the batch).
    """
    ranks = Ranks.current(input_device(model))
    forms = check_scores(scores)
    with ranks.failures_shared(), routed_experts(model, warn=False) as unknown_experts:
        parse_granularity(granularity)  # ValueError before any work
        cands = get_candidates(candidates)
        with calibration_attention(model, cands) as attention:
            return _calibrate(model, batches, cands, loss_fn, progress, layers, ranks, attention, unknown_experts,
                              granularity, forms, quantizer_batches)


def _fit_batches(batches: list, data_fingerprint: str, quantizer_batches, cands) -> tuple[list, str]:
    """(the batches the calibrated-weight candidates fit on, their fingerprint; "" when no candidate is one).
    ``data_fingerprint``: that of ``batches``, already computed."""
    calibrated = any(c.calibrated_weight for c in cands)
    if quantizer_batches is None:
        return batches, data_fingerprint if calibrated else ""
    fit = list(quantizer_batches)
    if not fit:
        raise ValueError("calibrate: quantizer_batches is empty")
    shared = {fingerprint([b]) for b in fit} & {fingerprint([b]) for b in batches}
    if shared:
        warnings.warn(f"calibrate: {len(shared)} of the quantizer_batches are also sensitivity batches: δ of the "
                      "calibrated candidates is measured on data their integers were fitted to", stacklevel=4)
    return fit, fingerprint(fit) if calibrated else ""


def _calibrate(model, batches, cands, loss_fn, progress, layers, ranks: Ranks, attention,
               unknown_experts, granularity="layer", forms=("first_order",), quantizer_batches=None):
    named = quantizable_layers(model, layers)
    if layers is None:  # only the kinds of layer some candidate applies to (Linear-only candidates: Linears only)
        kinds = {k for c in cands for k in c.kinds}
        named = [(n, m) for n, m in named if layer_kind(m) in kinds]
        if not named:
            raise ValueError(f"none of the candidates {[c.name for c in cands]} applies to a layer of "
                             f"{type(model).__name__}" + (f" ({attention.info['reason']})" if attention.wanted and
                                                          attention.routed is None else ""))
    experts_modules = routed_modules(model)
    owner_of = {n: (p, m) for p, m in experts_modules.items() for n in m.entries(p)}
    # expert GEMMs (layer index) -> their RoutedExperts, and the name of that experts module
    owners = {i: owner_of[n][1] for i, (n, _) in enumerate(named) if n in owner_of}
    owner_names = {i: owner_of[n][0] for i, (n, _) in enumerate(named) if n in owner_of}
    listed = set(linear_expert_lists(model))
    batches = list(batches)
    if not batches:
        raise ValueError("calibrate: the batch iterator is empty")
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    loss_name = ("causal_lm_loss" if loss_fn is causal_lm_loss else
                 getattr(loss_fn, "__name__", type(loss_fn).__name__))
    sizes = [batch_size(b) for b in batches]
    # every rank hashes all the batches, not only its share: a rank whose batches differ anywhere (in another
    # rank's share too) is refused, and the table's fingerprint is the single process's (a sha256 of them all)
    data_fingerprint = fingerprint(batches)
    fit_batches, fit_fingerprint = _fit_batches(batches, data_fingerprint, quantizer_batches, cands)
    # the quantizer batches must agree across ranks too (every rank fits on all of them)
    seen = data_fingerprint if fit_batches is batches else data_fingerprint + fit_fingerprint
    ranks.check_same(lambda: describe(model, named, cands, sizes, seen, loss_name))
    shard = ranks.shard(batches)
    coverage = model_coverage(model, [n for n, _ in named], stacklevel=3)  # before any work: its warning first
    params = list(model.parameters())
    device = input_device(model)
    L, C = len(named), len(cands)

    # by name: accelerate gives an offloaded module a new parameter object each time it loads or unloads it
    saved_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    saved_modes = [(m, m.training) for m in model.modules()]
    handles = []
    run = _Run(L, C)
    if parse_granularity(granularity) is not None:
        not_linear = [n for n, m in named if layer_kind(m) != "linear"]
        if not_linear:  # their δ is all activation term: nothing to split by weight row
            raise ValueError(f"granularity {granularity!r} splits Linear weights by output row; attention's "
                             f"matmuls and KV cache ({not_linear[:3]}) have none: calibrate them at "
                             "granularity='layer'")
        run.groups = GroupSplit(granularity, [n for n, _ in named], [m.out_features for _, m in named], C)
    if any(f in EXTRA for f in forms):
        run.extra = ExtraScores(forms, L, C)  # Linear layers: scores.py; attention's: calibration/attention.py
    t0 = time.perf_counter()
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        static = [c for c in cands if c.act_static and not c.calibrated_weight]
        scales = (_static_scales(model, named, [b for _, b in shard], static, device, ranks, owners)
                  if static else {})
        # every rank solves the calibrated candidates on all batches: the same integers everywhere, no exchange
        linear = [i for i, (_, m) in enumerate(named) if layer_kind(m) == "linear"]
        qweights, unavailable, sq_static = calibrated_weights(
            model, [named[i] for i in linear], fit_batches, cands, device, fit_fingerprint)
        unavailable = {(linear[i], j): why for (i, j), why in unavailable.items()}  # back to indices of named
        sq_static = {(linear[i], j): sz for (i, j), sz in sq_static.items()}
        act_scales = np.full((L, C), np.nan, np.float32)
        act_zps = np.full((L, C), np.nan, np.float32)
        applicable = np.ones((L, C), bool)
        attention_scales = {}
        for i, (name, mod) in enumerate(named):
            if layer_kind(mod) != "linear":
                alayer = AttentionLayer(run, i, name, mod, cands, scales, unavailable)
                handles += alayer.register()
                for j, c in enumerate(cands):
                    if c.act_static and (i, c.name) in scales and (i, j) not in unavailable:
                        attention_scales.setdefault(name, {})[c.name] = [s for s, _ in scales[i, c.name]]
                    if (i, j) in unavailable:
                        applicable[i, j] = False
                continue
            w_idx, w_q, a_idx, a_q, pre = [], [], [], [], []
            for j, c in enumerate(cands):
                if not c.applies_to_kind("linear"):
                    unavailable[i, j] = f"a candidate for {'/'.join(c.kinds)} layers, not Linear"
                elif not c.applies_to(mod.weight) and not c.calibrated_weight:
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
            layer.routing_owner = owners.get(i)
            layer.one_sample_rows = name in listed
            layer.w_cands = [cands[j] for j in w_idx]
            handles.append(mod.register_forward_pre_hook(layer.pre))
            handles.append(mod.register_forward_hook(layer.post))

        deltas, deltas_w = [], []
        bar = _Progress(len(shard), progress and ranks.rank == 0 and sys.stderr.isatty())
        with torch.enable_grad(), offloaded_weights_reloaded(model):  # keeps offloading's memory saving
            for done, (bi, whole) in enumerate(shard):
                whole = to_device(whole, device)
                # per-expert Linear lists: one pass per sample, so that every row a Linear gets is that sample's
                for batch in routed.single_samples(whole, batch_size(whole)) if listed else [whole]:
                    run.start(bi, batch_size(batch))
                    run.mask = padding_mask(batch)
                    args, kwargs = model_inputs(batch)
                    outputs = model(*args, **kwargs)
                    losses = loss_fn(outputs, batch)
                    _check_losses(losses, run.batch_samples, bi)
                    if not losses.requires_grad:
                        raise ValueError(f"the losses of batch {bi} carry no gradient (computed under "
                                         "torch.no_grad, detached, or constant): calibration needs ∂ℓ/∂Y of "
                                         "every layer")
                    losses.sum().backward()
                    run.calls.clear()
                    deltas.append(run.delta)
                    deltas_w.append(run.delta_w)
                    if run.extra is not None:
                        run.extra.finish()
                bar.update(done + 1)
        empty = [np.zeros((0, L, C))]  # a rank with no batch (fewer batches than ranks)
        extra = run.extra.stacked() if run.extra is not None else []
        groups = [run.groups.local()] if run.groups else []
        experts = sorted(owners)
        tokens = np.array([run.routed_tokens.get(i, 0) for i in experts], np.int64)
        # every per-sample array and the experts' token counts in one exchange: one buffer, not one per kind
        delta, delta_w, *extra = ranks.gather_samples(
            (np.concatenate(deltas or empty), np.concatenate(deltas_w or empty), *extra, *groups), sizes,
            totals=(tokens,))
        routed_tokens = {i: int(n) for i, n in zip(experts, extra.pop())}
        group_delta = run.groups.mark(extra.pop(), applicable) if run.groups else None
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
    expert_info, unrouted, expert_warning = routed.expert_info(named, owner_names, routed_tokens, unknown_experts,
                                                                warned=set(coverage.unknown))
    if expert_warning:
        warnings.warn(f"calibrate: {expert_warning}", stacklevel=3)
    flat = [name for (name, _), zero in zip(named, ~measured.any(axis=(0, 2))) if zero and name not in unrouted]
    info = dict(model=type(model).__name__, loss=loss_name, seconds=time.perf_counter() - t0,
                layer_shapes=[list(m.weight.shape) if layer_kind(m) == "linear" else [] for _, m in named],
                coverage=coverage.to_dict())
    info.update(expert_info)
    if attention.info is not None:
        info["attention"] = dict(attention.info)
        if attention.routed is not None:
            not_called = attention.routed.not_called()
            if not_called:
                info["attention"]["not_called"] = not_called
        if attention_scales:
            info["attention_scales"] = attention_scales
    if ranks.distributed:
        info["ranks"] = ranks.size
    if listed:
        info["per_sample_passes"] = "per-expert Linear lists: one forward and backward pass per sample"
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
    table = SensitivityTable(tuple(n for n, _ in named), tuple(c.name for c in cands), delta, delta_w, act_scales,
                             np.nan_to_num(act_zps, nan=0.0), data_fingerprint, info,
                             quantized_weights=qweights if len(qweights) else None,
                             scores=dict(zip(run.extra.forms, extra)) if run.extra is not None else {}, score=forms[0])
    return table if run.groups is None else run.groups.channel_table(table, group_delta)


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
