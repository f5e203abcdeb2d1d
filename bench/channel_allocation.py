"""Below the layer at equal bits (issue 20, item 7): does choosing a format per output channel, and multipoint
candidates (k points of int4 per channel), cut the held-out loss against choosing one format per layer?

SmolLM2-135M (or ``--model``), calibration 16 × 256 tokens spread over mpq's demo calibration text (as ``mpq run``
takes them); held-out: ``--eval-windows`` windows spread over eight plays neither saw. Candidates w8a16 and
w4a16_g64 (RTN; int4 in groups of 32 is lossless on SmolLM2, so groups of 64), and for "channel + multipoint" also
w4a16_g64_mp2 / _mp3 (2 and 3 greedy residual points of int4 per channel). Budget: the decoder's Linear weights at
nominal average bits (16 for a layer or row left alone, 8, 4, and k·4 for k points; no scales), lm_head in base
precision, as the peers count it (bench/_bit_budgets.py); each method gets the least first-order loss MSE that
saves those bytes (``mpq.select(min_gain=...)`` on nominal-byte gains), layer level with q/k/v and gate/up tied as
the profile's sub-graphs tie them, channel level one choice per output row. Each plan is applied with
``apply(mode="fake")`` and measured: mean over held-out windows of (ℓ − ℓ_base)² ± its standard error, and
perplexity.

    python bench/channel_allocation.py [--bits 4.5 6] [--eval-windows 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from _bit_budgets import nominal_decoder_gains
from _util import machine_line, print_table
from verified_budgets import CHECK_PLAYS

RTN = ("w8a16", "w4a16_g64")
POINTS = ("w4a16_g64_mp2", "w4a16_g64_mp3")
BITS = {"w8a16": 8, "w4a16_g64": 4, "w4a16_g64_mp2": 8, "w4a16_g64_mp3": 12}


def nominal_layer_gains(gains, bits_of):
    """The same nominal bytes per layer for the channel selection (which reads layer_gain / layer_bytes):
    gain = bytes saved against 16 bits, lm_head left in base (its candidates unavailable)."""
    shapes = gains.shapes["layers"]
    bits = np.array([16.0] + [float(bits_of[c]) for c in gains.candidates[1:]])
    names = list(gains.layer_names)
    weights = np.array([shapes[n][1] * shapes[n][2] for n in names], dtype=np.float64)
    nbytes = weights[:, None] * bits[None, :] / 8
    gain = weights[:, None] * (16 - bits[None, :]) / 8
    for i, n in enumerate(names):
        if "lm_head" in n:
            gain[i, 1:] = np.nan
    return dataclasses.replace(gains, layer_gain=gain, layer_bytes=nbytes)


def run(args):
    import mpq
    from mpq.application.swap import apply
    from mpq.data import lm_batches, shakespeare_texts, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses

    settings = RunSettings(model=None if args.model == "smollm2" else args.model)
    model, tok = load_model(settings)
    cal = spread_windows(tokenize(tok, demo_text("calibration")), args.seq_len, args.calib_windows)
    texts = shakespeare_texts(list(CHECK_PLAYS))
    per = -(-args.eval_windows // len(CHECK_PLAYS))
    held = torch.cat([spread_windows(tokenize(tok, texts[p]), args.seq_len, per) for p in CHECK_PLAYS])
    held = held[:args.eval_windows]
    batches = lm_batches(cal, args.batch_size)
    base = per_sample_losses(model, held, args.batch_size)
    n_dec = sum(m.weight.numel() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in n)

    def measure(plan):
        fake = apply(model, plan, mode="fake")
        loss = per_sample_losses(fake, held, args.batch_size)
        q = ((loss - base) ** 2).numpy()
        return float(q.mean()), float(q.std(ddof=1) / math.sqrt(q.size)), float(torch.exp(loss.mean()))

    tables, secs = {}, {}
    for kind, cands, gran in (("layer", RTN, "layer"), ("channel", RTN, "channel"),
                              ("channel + multipoint", RTN + POINTS, "channel")):
        t0 = time.perf_counter()
        tables[kind] = mpq.calibrate(model, batches, cands, progress=False, granularity=gran)
        secs[kind] = time.perf_counter() - t0
        print(f"# calibrated {kind}: {secs[kind]:.0f} s", flush=True)
    example = {"input_ids": cal[:1]}
    g_rtn = mpq.profile(model, example, RTN, backend="memory")
    g_pts = mpq.profile(model, example, RTN + POINTS, backend="memory")
    gains = {"layer": nominal_decoder_gains(g_rtn, BITS), "channel": nominal_layer_gains(g_rtn, BITS),
             "channel + multipoint": nominal_layer_gains(g_pts, BITS)}
    rows = [("base", "", 16.0, 0.0, 0.0, float(torch.exp(base.mean())), 0.0, "")]
    for bits in args.bits:
        need = (16 - bits) * n_dec / 8
        for kind in tables:
            t0 = time.perf_counter()
            try:
                if kind == "layer":
                    plan = mpq.select(tables[kind], gains[kind], min_gain=need, keep=["lm_head"])
                else:
                    plan = mpq.select(tables[kind], gains[kind], min_gain=need)
            except ValueError as e:
                print(f"# {kind} at {bits} bits: {e}")
                continue
            solve_ms = 1e3 * (time.perf_counter() - t0)
            mse, se, ppl = measure(plan)
            print(f"# {kind} at {bits} bits: predicted {plan.predicted_loss_mse:.3e}, measured {mse:.3e} ± "
                  f"{se:.1e}, ppl {ppl:.3f}", flush=True)
            rows.append((kind, describe(plan), bits, plan.predicted_loss_mse, mse, ppl, se, f"{solve_ms:.0f}"))
    return rows, secs


def describe(plan) -> str:
    """Which candidates the plan uses, by share of its layers (layer plan) or of its rows (channel plan)."""
    if hasattr(plan, "choice"):
        counts = np.bincount(plan.choice, minlength=len(plan.candidates))
        total = counts.sum()
        return ", ".join(f"{c} {100 * k / total:.0f}%" for c, k in zip(plan.candidates, counts) if k)
    counts = {}
    for c in plan.quantized.values():
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(f"{c} {k}" for c, k in sorted(counts.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--bits", type=float, nargs="+", default=[4.5, 6.0])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    rows, secs = run(args)
    print(f"\n## held-out loss MSE at equal nominal decoder bits ({args.eval_windows} windows of {args.seq_len} "
          "tokens over other plays)")
    print_table(["method", "plan", "avg bits", "predicted", "measured", "ppl", "± se", "solve ms"],
                [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows],
                ["", "", ".1f", ".3e", ".3e", ".3f", ".1e", ""])
    by = {(r[0], r[2]): r for r in rows}
    for bits in args.bits:
        lay = by.get(("layer", bits))
        for kind in ("channel", "channel + multipoint"):
            ch = by.get((kind, bits))
            if lay and ch:
                print(f"# {bits} bits: layer / {kind} measured loss MSE = {lay[4] / ch[4]:.2f} "
                      f"(goal at 4.5 bits: >= 2)")
    print("# calibration seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))


if __name__ == "__main__":
    main()
