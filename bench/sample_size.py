"""How many calibration and measurement sequences does a ranking of plans need? One calibration of N_max
sequences gives the per-sample δ, so the table of every smaller size n is its first n samples (no recalibration).
Random plans are measured on two disjoint held-out sets of H sequences each: their agreement (Spearman of
measured A against measured B) says whether the measurement itself can rank the plans, and the prediction of each
calibration size is compared with measured A.

    python bench/sample_size.py [--model smollm2|FOLDER|FILE.gguf] [--sizes 8 16 32 64] [--held-out 32]
                                [--plans 30] [--seq-len 128] [--candidates int8,w8a16]

Calibration text: mpq's demo calibration text; held-out sets: consecutive windows of the demo evaluation text.
Reported per size: Spearman of predicted (Σ s) and of the cross-term prediction against measured A, the median
measured/predicted ratio, and the calibration's seconds (measured once at N_max, per sequence).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mpq.application.swap import apply
from mpq.artifacts import SensitivityTable
from mpq.calibration import calibrate
from mpq.data import lm_batches, token_windows, tokenize
from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses

from _util import machine_line, random_plans
from fidelity import spearman


def subset(table: SensitivityTable, n: int) -> SensitivityTable:
    return SensitivityTable(table.layers, table.candidates, table.delta[:n], table.delta_weight[:n],
                            table.act_scales, table.act_zero_points, table.data_fingerprint, table.info)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--held-out", type=int, default=32, help="sequences in each of the two held-out sets")
    p.add_argument("--plans", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--candidates", default="int8,w8a16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(machine_line())
    model, tok = load_model(RunSettings(model=None if args.model == "smollm2" else args.model))
    cands = [c for c in args.candidates.split(",") if c]
    n_max = max(args.sizes)
    cal = token_windows(tokenize(tok, demo_text("calibration")), args.seq_len, n_max)
    ev = token_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, 2 * args.held_out)
    held = [ev[:args.held_out], ev[args.held_out:]]
    t0 = time.perf_counter()
    table = calibrate(model, lm_batches(cal, args.batch_size), cands, progress=False)
    cal_s = time.perf_counter() - t0
    plans = random_plans(table.layers, cands, args.plans, args.seed)
    base = [per_sample_losses(model, h, args.batch_size) for h in held]
    measured = [[], []]
    for plan in plans:
        q = apply(model, plan, mode="fake")
        for i, h in enumerate(held):
            measured[i].append(float(((per_sample_losses(q, h, args.batch_size) - base[i]) ** 2).mean()))
        del q
    a, b = np.array(measured[0]), np.array(measured[1])
    print(f"# {len(plans)} random plans of {len(table.layers)} layers, candidates {', '.join(cands)}; "
          f"{args.held_out} + {args.held_out} held-out sequences of {args.seq_len} tokens")
    print(f"# measured A against measured B: Spearman {spearman(a, b):.3f}, median B/A {np.median(b / a):.2f}")
    print(f"# calibration: {cal_s:.0f} s for {n_max} sequences ({cal_s / n_max:.2f} s per sequence, "
          f"{torch.get_num_threads()} threads)")
    print("| calibration sequences | Spearman pred vs A | Spearman cross-term pred vs A | median A/pred | "
          "median plan stderr / pred | calibration s (est.) |")
    print("|---|---|---|---|---|---|")
    for n in sorted(args.sizes):
        t = subset(table, n)
        pred = np.array([t.predicted_mse(pl) for pl in plans])
        cross = np.array([t.plan_mse_with_cross_terms(pl) for pl in plans])
        se = np.array([t.predicted_mse_stderr(pl) for pl in plans])
        print(f"| {n} | {spearman(pred, a):.3f} | {spearman(cross, a):.3f} | {np.median(a / pred):.2f} | "
              f"{np.median(se / pred):.2f} | {cal_s / n_max * n:.0f} |", flush=True)


if __name__ == "__main__":
    main()
