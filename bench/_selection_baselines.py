"""Baselines of bench/selection_quality.py (issue 6, item 5): the plans mpq's selection is compared against.

* ``greedy_keep``: uniform int8, then the most sensitive choice groups (by s[l, int8], largest first) are kept in
  base precision one by one while the predicted gain stays at or above the target.
* ``fisher_scores`` / ``fisher_table``: a ModelOpt-AutoQuantize-style score per layer and candidate,
  Σ_n Σ (G_Y ⊙ ΔY)², ΔY = Q(X) Q(W)ᵀ − X Wᵀ, G_Y = ∂ℓ_n/∂Y, as a SensitivityTable-like cost for the same solver.
* ``random_plan``: random per-sub-graph configurations until the predicted gain meets the target.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpq.candidates import get_candidates
from mpq.artifacts import GainTable
from mpq.artifacts import SensitivityTable


# --- shared helpers ----------------------------------------------------------------------------------------------
def rows_gain(gains: GainTable, rows: Sequence[int]) -> float:
    return float(sum(sg.gain[k] for sg, k in zip(gains.subgraphs, rows)))


def rows_mapping(gains: GainTable, rows: Sequence[int]) -> dict:
    """{layer: candidate} of the non-base layers of one configuration row per sub-graph."""
    out = {}
    for i, k in enumerate(rows):
        out.update(gains.config_mapping(i, int(k)))
    return out


def _find_row(sg, want: np.ndarray) -> Optional[int]:
    hit = np.nonzero((sg.configs == want[None, :]).all(axis=1))[0]
    return int(hit[0]) if len(hit) else None


# --- 2. uniform int8, greedy keep --------------------------------------------------------------------------------
def greedy_keep(table: SensitivityTable, gains: GainTable, need: float, cand: str = "int8",
                to: str = "base") -> tuple[dict, dict]:
    """All timed layers on ``cand``; then choice groups (tie groups of the GainTable, or single layers), most
    sensitive first by max_l s[l, cand] over the group, move to ``to`` (default: back to base) one by one if the
    predicted gain stays ≥ ``need`` (a group whose move would break the target, or whose configuration was not
    measured, is skipped and the next one is tried). Returns (mapping of non-base layers, info)."""
    ci = table.candidates.index(cand)
    gci = gains.candidates.index(cand)
    to_ci = gains.candidates.index(to)
    s = table.mse[:, ci]
    lidx = {n: i for i, n in enumerate(table.layers)}
    cur = []           # per sub-graph: current config vector
    rows = []
    groups = []        # (sensitivity, sub-graph index, layers of the group)
    for i, sg in enumerate(gains.subgraphs):
        v = np.full(len(sg.layers), gci, dtype=sg.configs.dtype)
        r = _find_row(sg, v)
        if r is None:
            raise ValueError(f"sub-graph {sg.name}: all-{cand} was not measured")
        cur.append(v)
        rows.append(r)
        tied = {l: g for g in sg.ties for l in g}
        seen = set()
        for l in sg.layers:
            g = tied.get(l, (l,))
            if g in seen:
                continue
            seen.add(g)
            groups.append((max(float(s[lidx[x]]) for x in g), i, g))
    total = rows_gain(gains, rows)
    if total < need:
        raise ValueError(f"all-{cand} predicts {total:g} < target {need:g}")
    groups.sort(key=lambda t: -t[0])
    kept, skipped_unmeasured, skipped_target = [], 0, 0
    for sens, i, g in groups:
        sg = gains.subgraphs[i]
        v = cur[i].copy()
        for l in g:
            v[sg.layers.index(l)] = to_ci
        r = _find_row(sg, v)
        if r is None:
            skipped_unmeasured += 1
            continue
        new_total = total - float(sg.gain[rows[i]]) + float(sg.gain[r])
        if new_total < need:
            skipped_target += 1
            continue
        cur[i], rows[i], total = v, r, new_total
        kept.extend(g)
    return rows_mapping(gains, rows), dict(kept=len(kept), skipped_unmeasured=skipped_unmeasured,
                                           skipped_target=skipped_target)


# --- 3. ModelOpt-AutoQuantize-style Fisher score -----------------------------------------------------------------
@torch.no_grad()
def _delta_y_scores(x, g, w, qws, cands, n_samples):
    """Per sample Σ (G ⊙ ΔY)² for every candidate: [B, C] float64."""
    y = F.linear(x, w)
    out = torch.zeros(n_samples, len(cands), dtype=torch.float64)
    for j, (c, qw) in enumerate(zip(cands, qws)):
        if qw is None:
            out[:, j] = float("nan")
            continue
        dy = F.linear(c.quantize_act(x), qw) - y
        out[:, j] = (g * dy).square().reshape(n_samples, -1).sum(dim=1, dtype=torch.float64)
    return out


def fisher_scores(model: nn.Module, layers: Sequence[str], batches: Sequence, candidates: Sequence[str],
                  loss_fn=None, quantized_weights=None) -> np.ndarray:
    """[N, L, C] per-sample Σ (G_Y ⊙ ΔY)² of every layer and candidate over ``batches`` (dicts of input_ids /
    attention_mask), with ``loss_fn(outputs, batch)`` → per-sample losses (default: mpq's causal_lm_loss, the
    same ℓ_n as calibration). Calibrated-weight candidates (GPTQ, AWQ) use their stored integers from
    ``quantized_weights`` (a candidate without an entry for a layer: NaN). No weight gets .grad; flags and hooks
    are restored afterwards."""
    from _hawq import deployed_weight
    from mpq.calibration import causal_lm_loss
    loss_fn = loss_fn or causal_lm_loss
    cands = get_candidates(candidates)
    sq = [c.name for c in cands if c.algorithm == "smoothquant"]
    if sq:  # their activations are quantized after the migration, which ΔY here does not model
        raise ValueError(f"fisher_scores does not model SmoothQuant candidates: {sq}")
    modules = dict(model.named_modules())
    params = list(model.parameters())
    saved_grad = [p.requires_grad for p in params]
    was_training = model.training
    qws = []
    for name in layers:
        w = modules[name].weight.detach()
        qws.append([deployed_weight(name, c, w, quantized_weights) for c in cands])
    state = {"acc": None, "n": 0}
    handles = []

    def make_hook(i, mod):
        def hook(module, args, out):
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return
            x = args[0].detach()

            def on_grad(g):
                state["acc"][:, i, :] += _delta_y_scores(x, g.detach(), mod.weight.detach(), qws[i], cands,
                                                         state["n"])
            out.register_hook(on_grad)
        return hook

    def embed_hook(module, args, out):  # parameters are frozen: start the graph at the embeddings' output
        return out.detach().requires_grad_(True)

    out_scores = []
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        handles.append(model.get_input_embeddings().register_forward_hook(embed_hook))
        for i, name in enumerate(layers):
            handles.append(modules[name].register_forward_hook(make_hook(i, modules[name])))
        with torch.enable_grad():
            for batch in batches:
                n = int(batch["input_ids"].shape[0])
                state["acc"] = torch.zeros(n, len(layers), len(cands), dtype=torch.float64)
                state["n"] = n
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                losses = loss_fn(outputs, batch)
                losses.sum().backward()
                out_scores.append(state["acc"].numpy().copy())
                del outputs, losses
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(params, saved_grad):
            p.requires_grad_(g)
        model.train(was_training)
    assert all(p.grad is None for p in params), "a weight got .grad"
    return np.concatenate(out_scores)


def fisher_table(scores: np.ndarray, like: SensitivityTable) -> SensitivityTable:
    """A SensitivityTable whose .mse is mean_n score[n, l, c] (δ = √score), for ``mpq.select``."""
    delta = np.sqrt(scores)
    return SensitivityTable(like.layers, like.candidates, delta, np.zeros_like(delta), like.act_scales,
                            like.act_zero_points, like.data_fingerprint, {"score": "fisher Σ(G⊙ΔY)²"})


# --- 4. random plans ---------------------------------------------------------------------------------------------
def random_plan(gains: GainTable, need: float, rng: np.random.Generator) -> tuple[dict, float]:
    """Sub-graphs in random order each get a random measured configuration with positive gain until the
    predicted total meets ``need``; if one pass is not enough, random sub-graphs are moved to random
    configurations of higher gain until it is. Returns (mapping of non-base layers, predicted gain)."""
    subs = gains.subgraphs
    rows = [0] * len(subs)
    total = 0.0
    for i in rng.permutation(len(subs)):
        if total >= need:
            break
        pos = np.nonzero(subs[i].gain > 0)[0]
        if len(pos):
            rows[i] = int(rng.choice(pos))
            total += float(subs[i].gain[rows[i]])
    while total < need:
        up = [i for i in range(len(subs)) if (subs[i].gain > subs[i].gain[rows[i]]).any()]
        if not up:
            raise ValueError(f"target {need:g} is beyond the fastest plan")
        i = int(rng.choice(up))
        better = np.nonzero(subs[i].gain > subs[i].gain[rows[i]])[0]
        k = int(rng.choice(better))
        total += float(subs[i].gain[k] - subs[i].gain[rows[i]])
        rows[i] = k
    return rows_mapping(gains, rows), rows_gain(gains, rows)
