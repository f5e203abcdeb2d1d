"""Why the first-order loss MSE falls short on plans with many quantized layers, measured (issue 15): the mean shift.

The held-out loss MSE of a plan is mean_n (ℓ_q,n − ℓ_n)² = variance + (mean shift)². mpq's first-order estimate
s[l, c] = mean_n δ² sees the variance; the mean shift, the loss increase every sample has in common (the
perplexity's rise), is second order in ΔW, so δ (whose mean is ~0 at a trained model) does not carry it. It adds up
over layers coherently (every quantized layer raises the loss), so its square grows with the square of the number
of layers quantized, and the first-order sum falls further and further below the measurement.

The second-order term from the same pass: ½ ΔᵀHΔ with the Gauss–Newton/empirical-Fisher Hessian of the sample's
mean cross-entropy over its T predicted tokens, split by position (as calibrate's "per_token" score form splits δ),
is b[n, l, c] = (T/2) Σ_t δ_t² (the "per_token" value times T/2; "elementwise", ModelOpt's score, gives another
estimate of the same). No fitted scale: b is in nats. Predicted for a plan: S + B², S = Σ_l s[l, c], B = Σ_l b[l, c].

Measured here: plans chosen by mpq (first-order) and by the element-wise score at 4.5-9 average bits among
{RTN, AWQ, GPTQ} x {INT4 g64, INT8} weights, and random plans; each plan's held-out loss MSE, its mean shift
(mean_n ℓ_q,n − ℓ_n, the log of the perplexity ratio), and the predictions S, S + B² (per_token and elementwise).

    python bench/mean_shift.py [--random-plans 12] [--reuse]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bit_budgets import DEFAULT_CANDIDATES, nominal_decoder_gains  # noqa: E402
from _util import machine_line, random_plans  # noqa: E402


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--bits", type=float, nargs="+", default=[4.5, 5, 6, 8, 9])
    ap.add_argument("--random-plans", type=int, default=12)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "mean_shift")
    ap.add_argument("--reuse", action="store_true", help="load the calibration saved under --out")
    args = ap.parse_args()

    from mpq.application.swap import apply
    from mpq.artifacts import SensitivityTable
    from mpq.artifacts.quantized_weights import QuantizedWeights
    from mpq.calibration import calibrate
    from mpq.candidates import get_candidates
    from mpq.data import lm_batches, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses
    from mpq.profiling import profile
    from mpq.selection import select
    torch.set_num_threads(1)
    cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    bits_of = {c.name: c.weight_bits for c in get_candidates(cands)}
    model, tok = load_model(RunSettings(model=None))
    model.eval()
    cal = spread_windows(tokenize(tok, demo_text("calibration")), args.seq_len, args.calib_windows)
    held = spread_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval_windows)
    args.out.mkdir(parents=True, exist_ok=True)
    tpath, qpath, kpath = args.out / "table.npz", args.out / "qweights.npz", args.out / "key.json"
    key = json.dumps(dict(c=cands, n=args.calib_windows, s=args.seq_len))
    if args.reuse and kpath.exists() and kpath.read_text() == key:
        table = replace(SensitivityTable.load(tpath), quantized_weights=QuantizedWeights.load(qpath))
    else:
        say(f"calibrating {cands} with the per_token and elementwise forms on {args.calib_windows} x {args.seq_len}")
        t0 = time.perf_counter()
        table = calibrate(model, lm_batches(cal, 4), cands, progress=False,
                          scores=("first_order", "per_token", "elementwise"))
        say(f"calibrated in {time.perf_counter() - t0:.0f} s")
        table.save(tpath)
        table.quantized_weights.save(qpath)
        kpath.write_text(key)
    # every calibration window predicts seq_len - 1 tokens (no padding here): the T of b = (T/2) Σ_t δ_t²
    T = args.seq_len - 1
    s = table.mse
    b = {f: np.nanmean(table.scores[f], axis=0) * T / 2 for f in ("per_token", "elementwise")}
    at = {l: i for i, l in enumerate(table.layers)}, {c: i for i, c in enumerate(table.candidates)}

    def predicted(plan):
        S = sum(s[at[0][l], at[1][c]] for l, c in plan.items())
        B = {f: sum(v[at[0][l], at[1][c]] for l, c in plan.items()) for f, v in b.items()}
        return S, B

    gains = nominal_decoder_gains(profile(model, {"input_ids": cal[:1]}, cands, backend="memory"), bits_of)
    n_dec = sum(m.weight.numel() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    plans = []
    for bits in args.bits:
        for name, tab in (("mpq first-order", table), ("elementwise", table.with_score("elementwise"))):
            plan = select(tab, gains, min_gain=(16 - bits) * n_dec / 8, keep=["lm_head"])
            plans.append((f"{bits:g} bits, {name}", dict(plan.quantized)))
    layers = [l for l in table.layers if "lm_head" not in l]
    plans += [(f"random {i}", p) for i, p in enumerate(random_plans(layers, list(cands), args.random_plans, seed=3))]

    base = per_sample_losses(model, held, 4)
    rows = []
    for name, plan in plans:
        q = apply(model, plan, mode="fake", quantized_weights=table.quantized_weights)
        diff = per_sample_losses(q, held, 4) - base
        del q
        mse, se = float((diff ** 2).mean()), float((diff ** 2).std() / math.sqrt(diff.numel()))
        S, B = predicted(plan)
        rows.append(dict(plan=name, layers=len(plan), mse=mse, se=se, shift=float(diff.mean()), S=S, B=B))
        say(f"{name}: measured {mse:.3g} ± {se:.2g}, shift {float(diff.mean()):.4f}; S {S:.3g}, "
            f"B {B['per_token']:.4f} / {B['elementwise']:.4f}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    print(machine_line())
    print(f"# SmolLM2-135M, {', '.join(cands)}; calibration {args.calib_windows} x {args.seq_len} tokens, held out "
          f"{args.eval_windows} x {args.seq_len}; T = {T}; base perplexity {math.exp(float(base.mean())):.2f}\n")
    print("| plan | layers | measured loss MSE ± se | S (first-order) | S + B² (per_token) | S + B² (elementwise) "
          "| measured mean shift | B (per_token) | B (elementwise) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pt, el = r["B"]["per_token"], r["B"]["elementwise"]
        print(f"| {r['plan']} | {r['layers']} | {r['mse']:.3g} ± {r['se']:.2g} | {r['S']:.3g} | {r['S'] + pt * pt:.3g} "
              f"| {r['S'] + el * el:.3g} | {r['shift']:.4f} | {pt:.4f} | {el:.4f} |")
    meas = [r["mse"] for r in rows]
    print()
    for label, pred in (("S", [r["S"] for r in rows]),
                        ("S + B² (per_token)", [r["S"] + r["B"]["per_token"] ** 2 for r in rows]),
                        ("S + B² (elementwise)", [r["S"] + r["B"]["elementwise"] ** 2 for r in rows])):
        ratios = [m / p for m, p in zip(meas, pred)]
        print(f"- {label}: measured/predicted median {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}], Spearman {spearman(meas, pred):.2f} over {len(rows)} plans")
    shifts = [r["shift"] for r in rows]
    for f in ("per_token", "elementwise"):
        print(f"- mean shift, B ({f}) against measured: Spearman {spearman(shifts, [r['B'][f] for r in rows]):.2f}, "
              f"median measured/B {statistics.median(m / r['B'][f] for m, r in zip(shifts, rows)):.2f}")


if __name__ == "__main__":
    main()
