"""Calibration of attention's matmuls and KV cache (``mpq.attention``), beside the Linear layers of ``hooks``.

When a candidate applies to "matmul" or "kv_cache" layers, ``calibration_attention`` routes the model's attention
through named modules for the whole calibration (``mpq.attention.routed_attention``); a model whose attention
cannot be routed gets a warning and Linear-only calibration, with the reason in ``info["attention"]``.
For every routed module and sample n, from the same forward and backward pass as the Linear layers:

    MatMul  y = A @ B:   δ[n] = ⟨∂ℓ_n/∂A, Q(A) − A⟩ + ⟨∂ℓ_n/∂B, Q(B) − B⟩
    KVCache y = K:       δ[n] = ⟨∂ℓ_n/∂K, Q(K) − K⟩

summed by the same fused kernel (``kernel.delta_sums``) with the candidate's scales
(``mpq.attention.quantize``): a dynamic per-tensor matmul scale per sample is one scale per row of A viewed as
[B, numel/B]; a per-head static KV scale s_h enters as G ⊙ (Q(K) − K) = (G·s_h) ⊙ (Q₁(K/s_h) − K/s_h) with
unit scale. The other score forms (``calibrate(..., scores=...)``, ``scores.py``), when asked for, as for a
Linear: ``per_token`` Σ_t δ_t², δ_t the terms of δ at token t (query t of A and key t of B together: calibration
runs without a cache, so queries and keys are the same positions); ``elementwise`` Σ (G_Y ⊙ ΔY)², ΔY = Q(A) Q(B)
− AB = ΔA·Q(B) + A·ΔB for a matmul (G_Y from its output), ΔY = Q(K) − K for a cache (the identity).
Static scales are calibrated with the Linear ones, in the same pass over the same batches: from the range of the
finite values at non-padded tokens (the token axis of each input: ``MatMul.token_axes``).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..attention import AttentionNotRoutable, check_routable, layer_kind, routed_attention
from ..formats import compute_scales
from .kernel import TensorQuant, delta_sums


class AttentionState:
    """What calibration does about attention: ``routed`` (a RoutedAttention) or None, and ``info`` for the table."""

    def __init__(self, routed=None, reason=None, wanted=False):
        self.routed, self.wanted = routed, wanted
        self.info = None
        if routed is not None:
            self.info = {"routed": True, "attention_modules": len(routed.attention)}
        elif wanted:
            self.info = {"routed": False, "reason": reason}


@contextmanager
def calibration_attention(model, cands):
    """Routes attention for the block when a candidate applies to attention's layers (module docstring)."""
    if not any(k != "linear" for c in cands for k in c.kinds):
        yield AttentionState()
        return
    try:
        check_routable(model)
    except AttentionNotRoutable as e:
        warnings.warn(f"calibrate: attention candidates left out, calibrating Linear layers only: {e}", stacklevel=4)
        yield AttentionState(reason=str(e), wanted=True)
        return
    with routed_attention(model) as routed:
        yield AttentionState(routed, wanted=True)


def _tokens(x: torch.Tensor, axis: int, mask):
    """x's values by token, [n, ...] (batch and token axes merged): the non-padded tokens when the mask fits."""
    x = x.detach().movedim(axis, 1)
    if mask is not None and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, *x.shape[2:])


class AttentionRanges:
    """Static-scale calibration of the attention layers: per input (lo, hi) over all batches, per K/V head too."""

    def __init__(self, layers, cands):
        self.items = []  # (layer index, module, number of inputs, per-head?)
        for i, (_, m) in enumerate(layers):
            kind = layer_kind(m)
            mine = [c for c in cands if c.act_static and kind in c.kinds]
            if kind != "linear" and mine:
                self.items.append((i, m, 2 if kind == "matmul" else 1, any(c.act_granularity == "head" for c in mine)))
        self.lo, self.hi = {}, {}

    def register(self, state) -> list:
        return [m.register_forward_pre_hook(self._hook(i, m, heads, state)) for i, m, _, heads in self.items]

    def _merge(self, key, lo, hi):
        old_lo, old_hi = self.lo.get(key), self.hi.get(key)
        self.lo[key] = lo if old_lo is None else np.minimum(old_lo, lo)
        self.hi[key] = hi if old_hi is None else np.maximum(old_hi, hi)

    def _hook(self, i, m, heads, state):
        def hook(module, args):
            for k, x in enumerate(args):
                t = _tokens(x, m.token_axes[k], state["mask"]).float()
                if not t.numel():
                    continue
                finite = torch.isfinite(t)
                if not bool(finite.all()):
                    t = torch.where(finite, t, torch.zeros_like(t))  # max-abs scales: a 0 changes no range
                if heads:  # [n, H, D] (K/V with tokens first): one range per head
                    h = t.transpose(0, 1).reshape(t.shape[1], -1)
                    self._merge((i, k, "head"), h.amin(1).numpy().astype(np.float64), h.amax(1).numpy().astype(np.float64))
                a, b = torch.aminmax(t)
                self._merge((i, k, "tensor"), np.array([float(a)]), np.array([float(b)]))
        return hook

    def ranges(self) -> tuple[list, list]:
        """This rank's ranges (lo, hi), flat, for ``Ranks.reduce_range`` (with the Linear layers')."""
        keys = sorted(self.lo, key=str)
        return ([float(v) for k in keys for v in self.lo[k]], [float(v) for k in keys for v in self.hi[k]])

    def scales(self, layers, cands, lo: list, hi: list) -> dict:
        """(layer index, candidate name) → list of (scale, zero point): a matmul [A's, B's], a KV cache [tensor's]
        or one per head. ``lo``, ``hi``: ``ranges()`` reduced over the ranks (every rank's batches count)."""
        keys = sorted(self.lo, key=str)
        sizes = [len(self.lo[k]) for k in keys]
        ranges, at = {}, 0
        for k, n in zip(keys, sizes):
            ranges[k] = torch.tensor([[a if math.isfinite(a) else 0.0, b if math.isfinite(b) else 0.0]
                                      for a, b in zip(lo[at:at + n], hi[at:at + n])])
            at += n
        out = {}
        for i, m, n_in, _ in self.items:
            kind = layer_kind(m)
            for c in cands:
                if not (c.act_static and kind in c.kinds):
                    continue
                gran = "head" if c.act_granularity == "head" else "tensor"
                sz = []
                for k in range(n_in):
                    r = ranges.get((i, k, gran))
                    if r is None:  # the module never ran: no range, no scale (its δ stay zero, and are reported)
                        continue
                    s, z = compute_scales(r, c.act_format, axis=0)
                    sz += [(float(a), float(b)) for a, b in zip(s, z)]
                out[i, c.name] = sz
        return out


class AttentionLayer:
    """Hooks of one MatMul or KVCache: per input, which candidates quantize it how; δ go to ``run``."""

    def __init__(self, run, index, name, module, cands, scales, unavailable):
        self.run, self.index, self.name, self.module = run, index, name, module
        self.kind = layer_kind(module)
        self.n_inputs = 2 if self.kind == "matmul" else 1
        # per input: {"sample": [(j, TensorQuant)], "rows": [(j, TensorQuant)], "head": [(j, fmt, scales)]}
        self.plan = [{"sample": [], "rows": [], "head": []} for _ in range(self.n_inputs)]
        self.idx = []
        self._current = None  # the extra scores of the call between pre and post
        for j, c in enumerate(cands):
            if not c.applies_to_kind(self.kind):
                unavailable[index, j] = f"a candidate for {'/'.join(c.kinds)} layers, not {self.kind}"
                continue
            sz = scales.get((index, c.name)) if c.act_static else None
            if c.act_static and not sz:
                unavailable[index, j] = "no static scale: the module did not run in the calibration forward"
                continue
            self.idx.append(j)
            for k, plan in enumerate(self.plan):
                if c.act_granularity == "head":
                    plan["head"].append((j, c.act_format, torch.tensor([s for s, _ in sz], dtype=torch.float32)))
                elif c.act_static:
                    s, z = sz[k] if self.kind == "matmul" else sz[0]
                    plan["rows"].append((j, TensorQuant(c.act_format, "tensor", scale=s, zero_point=z)))
                elif c.act_granularity == "token":
                    plan["rows"].append((j, TensorQuant(c.act_format, "row")))
                else:
                    plan["sample"].append((j, TensorQuant(c.act_format, "row")))

    def register(self) -> list:
        if not self.idx:
            return []
        handles = [self.module.register_forward_pre_hook(self.pre)]
        if self.run.extra is not None:
            handles.append(self.module.register_forward_hook(self.post))
        return handles

    def pre(self, module, args):
        if len(args) != self.n_inputs or not all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
            raise ValueError(f"layer {self.name}: expected {self.n_inputs} floating-point input tensor(s)")
        scores = _CallScores(self, self.run.extra.forms) if self.run.extra is not None else None
        out = []
        for k, x in enumerate(args):
            xa = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            op = _Input(self, k, xa.detach(), scores)
            xa.register_hook(op.on_grad)
            self.run.calls.append(op)
            out.append(xa)
        self._current = scores
        return tuple(out)

    def post(self, module, args, y):
        scores, self._current = self._current, None
        if scores is not None and "elementwise" in scores.forms and isinstance(y, torch.Tensor) and y.requires_grad:
            scores.inputs = [a.detach() for a in args]
            y.register_hook(scores.on_grad_y)
        return None

    def input_deltas(self, k: int, x: torch.Tensor):
        """[(candidate column, Q(x) − x)] of input ``k`` (float32 ``x``), the quantizers δ's kernel sums with."""
        B, plan, out = x.shape[0], self.plan[k], []
        for j, q in plan["sample"]:
            out.append((j, q.apply(x.reshape(B, -1)).reshape(x.shape) - x))
        for j, q in plan["rows"]:
            out.append((j, q.apply(x.reshape(-1, x.shape[-1])).reshape(x.shape) - x))
        for j, fmt, s in plan["head"]:
            s4 = s.to(x.device).view(1, -1, 1, 1)
            unit = TensorQuant(fmt, "tensor", scale=1.0, zero_point=0.0)
            out.append((j, unit.apply((x / s4).reshape(-1, x.shape[-1])).reshape(x.shape) * s4 - x))
        return out


class _CallScores:
    """The extra score forms of one call: per_token waits for every input's gradient (its δ_t add up over the
    inputs before squaring); elementwise is computed from the output's gradient, the inputs held until then."""

    def __init__(self, layer: AttentionLayer, forms):
        self.layer, self.forms = layer, forms
        self.per_token = {}  # candidate column -> [B, T] float64, summed over the inputs seen so far
        self.pending = layer.n_inputs
        self.inputs = None

    def add_input(self, k: int, x: torch.Tensor, g: torch.Tensor) -> None:
        L = self.layer
        if "per_token" in self.forms:
            axis = L.module.token_axes[k]
            for j, dx in L.input_deltas(k, x):
                t = (g * dx).movedim(axis, 1).reshape(x.shape[0], x.shape[axis], -1).sum(-1, dtype=torch.float64)
                if j in self.per_token and self.per_token[j].shape != t.shape:
                    raise ValueError(f"layer {L.name}: its inputs run over {self.per_token[j].shape[1]} and "
                                     f"{t.shape[1]} tokens; the per_token score needs the same positions")
                self.per_token[j] = t if j not in self.per_token else self.per_token[j] + t
        self.pending -= 1
        if self.pending == 0 and self.per_token:
            self._add("per_token", {j: t.square().sum(-1) for j, t in self.per_token.items()})
            self.per_token = {}

    def on_grad_y(self, gy: torch.Tensor):
        L, inputs = self.layer, self.inputs
        self.inputs = None
        if inputs is None:
            return None
        g = gy.detach().float()
        xs = [a.to(g.device).float() for a in inputs]
        vals = {}
        if L.kind == "matmul":
            a, b = xs
            da, db = dict(L.input_deltas(0, a)), dict(L.input_deltas(1, b))
            for j in da:
                dy = torch.matmul(da[j], b + db[j]) + torch.matmul(a, db[j])  # Q(A)Q(B) − AB, no cancellation
                vals[j] = (g * dy).reshape(g.shape[0], -1).square().sum(-1, dtype=torch.float64)
        else:
            for j, dk in L.input_deltas(0, xs[0]):
                vals[j] = (g * dk).reshape(g.shape[0], -1).square().sum(-1, dtype=torch.float64)
        self._add("elementwise", vals)
        return None

    def _add(self, form: str, vals: dict) -> None:
        L = self.layer
        batch = L.run.extra.batch[form]
        for j, v in vals.items():
            v = v.cpu().numpy()
            if not np.isfinite(v).all():
                raise ValueError(f"non-finite {form} score in layer {L.name!r}, batch {L.run.batch_index}")
            batch[:, L.index, j] += v


class _Input:
    """One input of one call in the current batch; holds the tensor until its gradient arrives."""

    def __init__(self, layer: AttentionLayer, k: int, x: torch.Tensor, scores=None):
        self.layer, self.k, self.x, self.scores = layer, k, x, scores

    def on_grad(self, gx: torch.Tensor):
        L, x = self.layer, self.x
        self.x = None
        if x is None:
            return None
        run = L.run
        B = run.batch_samples
        if x.shape[0] != B:
            raise ValueError(f"layer {L.name}: input of shape {tuple(x.shape)} does not start with the batch's {B} "
                             "samples")
        g = gx.detach().float()
        x = x.to(g.device).float()
        plan = L.plan[self.k]
        rows2 = (x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
        per_sample = rows2[0].shape[0] // B
        if plan["sample"]:
            self._add(delta_sums(x.reshape(B, -1), g.reshape(B, -1), [q for _, q in plan["sample"]], 1),
                      [j for j, _ in plan["sample"]])
        if plan["rows"]:
            self._add(delta_sums(*rows2, [q for _, q in plan["rows"]], per_sample), [j for j, _ in plan["rows"]])
        for j, fmt, s in plan["head"]:  # G ⊙ (Q(K; s_h) − K) = (G·s_h) ⊙ (Q(K/s_h; 1) − K/s_h)
            s4 = s.to(x.device).view(1, -1, 1, 1)
            xs, gs = (x / s4).reshape(-1, x.shape[-1]), (g * s4).reshape(-1, g.shape[-1])
            self._add(delta_sums(xs, gs, [TensorQuant(fmt, "tensor", scale=1.0, zero_point=0.0)], per_sample), [j])
        if self.scores is not None:
            self.scores.add_input(self.k, x, g)
        return None

    def _add(self, res, idx):
        L = self.layer
        res = res.reshape(L.run.batch_samples, len(idx)).cpu()
        if not np.isfinite(res.numpy()).all():
            raise ValueError(f"non-finite activation sensitivity in layer {L.name!r}, batch {L.run.batch_index}: "
                             "the gradient or input of this layer holds NaN or Inf")
        L.run.add(L.index, idx, res, weight=False)
