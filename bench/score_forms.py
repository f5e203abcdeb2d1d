"""Which per-layer score form predicts a plan's held-out loss MSE best, and which selects the better plans (issue 15,
items 4 and 6)? One calibration pass keeps three forms (``mpq.calibration.scores``): first_order (the seed's δ²),
per_token (Σ_t δ_t²) and elementwise (ModelOpt's Σ (G ⊙ ΔY)²), each put in loss-MSE units by the table's one
fitted scale; the first-order form with its cross terms (mean_n (Σ_l δ)², not additive) is shown beside them.

Plans: ``--plans`` random ones (5–50% of the layers but lm_head, each on a random candidate), the front of each
form (``select(min_gain=...)`` at ``--front-bits`` average bits, in ModelOpt's count), and ModelOpt's AutoQuantize
plan at ``--bits`` (skip with ``--no-modelopt``). All are applied with mpq's quantizers and measured on held-out
windows: loss MSE against the base model ± its standard error.

    python bench/score_forms.py [--seq-len 128] [--calib-windows 16] [--eval-windows 32] [--plans 20]
                                [--bits 7 8 9] [--front-bits 7 8 9 10.5 12] [--no-modelopt]

Formats, lm_head, tied groups and the bit count as in bench/_modelopt_peer.py. SmolLM2-135M; calibration windows
spread over mpq's demo calibration text, held-out windows spread over its evaluation text.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _modelopt_peer import (CANDIDATES, effective_bits, measured, modelopt_formats, modelopt_mapping,  # noqa: E402
                            nominal_gains, search_plan, smollm2_and_windows)
from _util import machine_line, random_plans  # noqa: E402
from fidelity import spearman  # noqa: E402

from mpq.application.swap import apply  # noqa: E402
from mpq.calibration import calibrate  # noqa: E402
from mpq.calibration.scores import SCORES  # noqa: E402
from mpq.demo_run import per_sample_losses  # noqa: E402
from mpq.profiling import profile  # noqa: E402
from mpq.selection import select  # noqa: E402


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--plans", type=int, default=20)
    p.add_argument("--bits", type=float, nargs="+", default=[7.0, 8.0, 9.0])
    p.add_argument("--front-bits", type=float, nargs="+", default=[7.0, 8.0, 9.0, 10.5, 12.0])
    p.add_argument("--no-modelopt", action="store_true")
    p.add_argument("--time-plain", action="store_true", help="also time a calibration of the first-order form alone")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", type=Path, help="a SensitivityTable this script saved (same windows): no calibration")
    p.add_argument("--minutes", type=float, default=math.inf,
                   help="stop measuring after this long and summarise the plans measured so far")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "out" / "score_forms")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    print(machine_line())
    model, batches, held = smollm2_and_windows(args)
    cands = CANDIDATES

    plain_s = all_s = math.nan
    if args.table:
        from mpq.artifacts import SensitivityTable
        table = SensitivityTable.load(args.table)
        if set(table.score_forms) != set(SCORES) or table.n_samples != args.calib_windows:
            raise SystemExit(f"{args.table} does not hold all forms on {args.calib_windows} windows")
    if args.time_plain and not args.table:
        say("calibrating the first-order form alone")
        t0 = time.perf_counter()
        calibrate(model, batches, cands, progress=False)
        plain_s = time.perf_counter() - t0
    if not args.table:
        say("calibrating all forms")
        t0 = time.perf_counter()
        table = calibrate(model, batches, cands, progress=False, scores=SCORES)
        all_s = time.perf_counter() - t0
        table.save(args.out / "sensitivity.npz")
    gains = nominal_gains(profile(model, {"input_ids": batches[0]["input_ids"][:1]}, cands, backend="memory"))
    scales = {l: float(table.act_scales[i, table.candidates.index("int8_static")]) for i, l in enumerate(table.layers)}
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    layers = [l for l in table.layers if l != "lm_head"]
    forms = {f: table.with_score(f) for f in SCORES}

    plans = []  # the fronts first: the selection comparison is the question a cut-short run must still answer
    chosen = {}  # (form, bits) -> mapping
    for f, t in forms.items():
        for bits in sorted(set(args.front_bits) | set(args.bits)):
            plan = select(t, gains, min_gain=(16 - bits) * weights / 8, keep=["lm_head"])
            mapping = {l: c for l, c in plan.mapping.items() if c != "base"}
            chosen[f, bits] = mapping
            plans.append((f"{f} front {bits:g}", mapping))
    plans += [(f"random {i}", m) for i, m in enumerate(random_plans(layers, list(cands), args.plans, args.seed))]
    mo = {}
    if not args.no_modelopt:
        import copy

        import modelopt.torch.quantization as mtq
        ckpt = args.out / "modelopt_search.pth"
        ckpt.unlink(missing_ok=True)
        for bits in args.bits:
            say(f"ModelOpt AutoQuantize at {bits} bits")
            t0 = time.perf_counter()
            _, state = search_plan(mtq, copy.deepcopy(model), bits, modelopt_formats(mtq), batches, ckpt)
            mo[bits] = (modelopt_mapping(state), time.perf_counter() - t0)
            plans.append((f"ModelOpt {bits:g}", mo[bits][0]))

    base = per_sample_losses(model, held, 4)
    memo, rows = {}, []
    started = time.perf_counter()
    for n, (label, mapping) in enumerate(plans):
        if time.perf_counter() - started > 60 * args.minutes:
            say(f"--minutes {args.minutes:g} reached: {len(rows)} of {len(plans)} plans measured")
            break
        key = tuple(sorted(mapping.items()))
        if key not in memo:
            say(f"[{n + 1}/{len(plans)}] measuring {label} ({len(mapping)} layers quantized)")
            q = apply(model, mapping, mode="fake", act_scales={l: scales[l] for l, c in mapping.items()
                                                               if c == "int8_static"})
            memo[key] = measured(q, held, base, 4)
            del q
            say(f"    loss MSE {memo[key][0]:.4g} ± {memo[key][1]:.2g}; predicted " + ", ".join(
                f"{f} {t.predicted_mse(mapping):.4g}" for f, t in forms.items()))
        pred = {f: t.predicted_mse(mapping) for f, t in forms.items()}
        pred["first_order + cross terms"] = table.plan_mse_with_cross_terms(mapping)
        rows.append(dict(label=label, layers=len(mapping), bits=effective_bits(model, mapping), meas=memo[key],
                         pred=pred))

    print(f"# SmolLM2-135M, candidates {', '.join(cands)}; calibration {args.calib_windows} x {args.seq_len} tokens "
          f"spread over the demo calibration text, held out {args.eval_windows} x {args.seq_len} spread over the "
          f"evaluation text; base perplexity {math.exp(float(base.mean())):.2f}" + (
              f". Calibration: first-order form alone {plain_s:.0f} s, all three forms {all_s:.0f} s "
              f"({all_s / plain_s:.2f}x, same run, {args.threads} thread(s))" if math.isfinite(plain_s / all_s) else ""))
    print("# fitted scales (loss MSE per unit of score): " + ", ".join(
        f"{f} {t.score_scale:.3g}" for f, t in forms.items()))
    predictors = list(rows[0]["pred"])
    print("\n| plan | layers | avg bits | measured loss MSE ± se (ppl) | " + " | ".join(
        f"pred {f}" for f in predictors) + " |")
    print("|---|---|---|---|" + "---|" * len(predictors))
    for r in rows:
        m = r["meas"]
        print(f"| {r['label']} | {r['layers']} | {r['bits']:.2f} | {m[0]:.3g} ± {m[1]:.2g} ({m[2]:.1f}) | "
              + " | ".join(f"{r['pred'][f]:.3g}" for f in predictors) + " |")

    groups = {"random plans": [r for r in rows if r["label"].startswith("random")],
              "fronts (all forms)": [r for r in rows if " front " in r["label"]],
              "every plan": rows}
    groups = {g: rs for g, rs in groups.items() if len(rs) >= 3}  # a rank correlation of fewer says nothing
    print("\n| predictor | " + " | ".join(f"Spearman, {g} | median meas/pred, {g}" for g in groups) + " |")
    print("|---|" + "---|---|" * len(groups))
    for f in predictors:
        cells = []
        for g, rs in groups.items():
            meas = np.array([r["meas"][0] for r in rs])
            pred = np.array([r["pred"][f] for r in rs])
            cells += [f"{spearman(pred, meas):.3f}", f"{np.median(meas / pred):.2f}"]
        print(f"| {f} | " + " | ".join(cells) + " |")

    by_label = {r["label"]: r for r in rows}
    args.bits = [b for b in args.bits if all(f"{f} front {b:g}" in by_label for f in SCORES)]
    print("\n| average bits | " + ("ModelOpt plan: loss MSE ± se (ppl) | " if mo else "") + " | ".join(
        f"mpq {f}: loss MSE ± se (ppl)" for f in SCORES) + " | lowest |")
    print("|---|" + ("---|" if mo else "") + "---|" * len(SCORES) + "---|")
    for bits in args.bits:
        res = {f"mpq {f}": by_label[f"{f} front {bits:g}"]["meas"] for f in SCORES}
        if bits in mo:
            res = {"ModelOpt": by_label[f"ModelOpt {bits:g}"]["meas"], **res}
        low = min(res, key=lambda k: res[k][0])
        print(f"| {bits:g} | " + " | ".join(f"{v[0]:.3g} ± {v[1]:.2g} ({v[2]:.1f})" for v in res.values())
              + f" | {low} |")
    if mo:
        print("# ModelOpt search seconds: " + ", ".join(f"{b:g} bits {s:.0f}" for b, (_, s) in mo.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
