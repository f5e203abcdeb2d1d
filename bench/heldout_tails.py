"""Where does a held-out loss MSE come from? Random plans are measured on the calibration windows themselves
(in sample) and on held-out windows, with the per-sequence squared loss changes kept: the largest sequence's
share of the sum, the effective number of sequences (Σ q)² / Σ q², and the mean without the largest one. The
calibration is run twice, on the first windows of the calibration text and on windows spread evenly over it, to
see whether a calibration set that covers the whole text predicts the held-out figure better.

    python bench/heldout_tails.py [--model smollm2|FOLDER|FILE.gguf] [--cal 16] [--held-out 48] [--plans 10]
                                  [--seq-len 128] [--candidates int8,w8a16]

Held-out windows are spread evenly over mpq's demo evaluation text; calibration windows come from its demo
calibration text.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mpq.application.swap import apply
from mpq.calibration import calibrate
from mpq.data import lm_batches, spread_windows, token_windows, tokenize
from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses

from _util import machine_line, random_plans
from fidelity import spearman


def concentration(q: np.ndarray) -> tuple[float, float, float]:
    """(largest share of Σ q, effective samples, mean without the largest)"""
    return float(q.max() / q.sum()), float(q.sum() ** 2 / (q ** 2).sum()), float(np.sort(q)[:-1].mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--cal", type=int, default=16)
    p.add_argument("--held-out", type=int, default=48)
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--candidates", default="int8,w8a16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(machine_line())
    model, tok = load_model(RunSettings(model=None if args.model == "smollm2" else args.model))
    cands = [c for c in args.candidates.split(",") if c]
    cal_ids = tokenize(tok, demo_text("calibration"))
    cal = {"first": token_windows(cal_ids, args.seq_len, args.cal), "spread": spread_windows(cal_ids, args.seq_len,
                                                                                               args.cal)}
    held = spread_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.held_out)
    tables = {}
    for name, w in cal.items():
        t0 = time.perf_counter()
        tables[name] = calibrate(model, lm_batches(w, args.batch_size), cands, progress=False)
        print(f"# calibration on the {name} {args.cal} windows: {time.perf_counter() - t0:.0f} s", flush=True)
    layers = tables["first"].layers
    plans = random_plans(layers, cands, args.plans, args.seed)
    base = {"held": per_sample_losses(model, held, args.batch_size)}
    base.update({n: per_sample_losses(model, w, args.batch_size) for n, w in cal.items()})
    rows = []
    for plan in plans:
        q = apply(model, plan, mode="fake")
        sq = {"held": ((per_sample_losses(q, held, args.batch_size) - base["held"]) ** 2).numpy()}
        sq.update({n: ((per_sample_losses(q, w, args.batch_size) - base[n]) ** 2).numpy() for n, w in cal.items()})
        del q
        rows.append((plan, sq))
    print(f"# {len(plans)} random plans of {len(layers)} layers ({', '.join(cands)}); {args.cal} calibration "
          f"windows, {args.held_out} held-out windows of {args.seq_len} tokens")
    print("| plan layers | predicted (first) | in sample (first) | predicted (spread) | in sample (spread) | "
          "held out | largest share | effective samples | held out without the largest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for plan, sq in rows:
        share, ess, rest = concentration(sq["held"])
        print(f"| {len(plan)} | {tables['first'].predicted_mse(plan):.2e} | {sq['first'].mean():.2e} | "
              f"{tables['spread'].predicted_mse(plan):.2e} | {sq['spread'].mean():.2e} | {sq['held'].mean():.2e} | "
              f"{share:.2f} | {ess:.1f} | {rest:.2e} |")
    print("| summary over plans | Spearman vs held out | median held out / predicted | median in sample / predicted |")
    print("|---|---|---|---|")
    held_mse = np.array([sq["held"].mean() for _, sq in rows])
    for name, t in tables.items():
        pred = np.array([t.predicted_mse(pl) for pl, _ in rows])
        ins = np.array([sq[name].mean() for _, sq in rows])
        print(f"| calibration on the {name} windows | {spearman(pred, held_mse):.3f} | "
              f"{np.median(held_mse / pred):.2f} | {np.median(ins / pred):.2f} |")


if __name__ == "__main__":
    main()
