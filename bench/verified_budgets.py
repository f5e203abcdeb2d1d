"""Does a verified loss budget hold on text the verification never saw? ``mpq run``'s own setting (calibration and
verification windows interleaved over the demo calibration text, 16 + 32 windows of 256 tokens; the candidates
that pay on this CPU, or ``--candidates``; gains timed on the CPU, or ``--backend memory``) solved at ``--budgets``
loss budgets spanning the Pareto front, each with ``select(..., verify=...)``, and every verified plan measured
again on ``--check-windows`` windows spread over plays that neither calibration nor verification used. A budget
holds when that measurement is within it; "within noise" when its estimate minus two standard errors is.

    python bench/verified_budgets.py [--model smollm2|FOLDER|FILE.gguf] [--candidates int8,int8_sq,bf16]
                                     [--backend cpu|memory] [--budgets 10] [--check-windows 128] [--bound estimate]
                                     [--save out.json]

Also printed: each select's seconds with verification against the same select without it.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from _util import machine_line, print_table

CHECK_PLAYS = ("hamlet", "macbeth", "lear", "othello", "julius_caesar", "coriolanus", "richard_iii", "henry_v")


def act_scales_of(table) -> dict:
    out = {}
    for li, layer in enumerate(table.layers):
        for ci, cand in enumerate(table.candidates):
            if not np.isnan(table.act_scales[li, ci]):
                out.setdefault(cand, {})[layer] = float(table.act_scales[li, ci])
    return out


def loss_change(model, plan, windows, base, batch_size, quantized_weights) -> tuple[float, float]:
    """Mean over windows of (ℓ_plan − ℓ_base)² and its standard error."""
    from mpq.application.swap import apply
    from mpq.demo_run import per_sample_losses
    fake = apply(model, plan, mode="fake", quantized_weights=quantized_weights)
    q = ((per_sample_losses(fake, windows, batch_size) - base) ** 2).numpy()
    return float(q.mean()), float(q.std(ddof=1) / math.sqrt(q.size))


def run(args) -> dict:
    from mpq.calibration import calibrate
    from mpq.data import lm_batches, shakespeare_texts, split_spread, spread_windows, tokenize
    from mpq.demo_run import RunSettings, choose_candidates, demo_text, load_model, per_sample_losses
    from mpq.profiling import profile
    from mpq.selection import pareto, select

    settings = RunSettings(model=None if args.model == "smollm2" else args.model)
    model, tok = load_model(settings)
    calib, verify = split_spread(spread_windows(tokenize(tok, demo_text("calibration")), settings.seq_len,
                                                settings.calib_windows + settings.verify_windows),
                                 settings.verify_windows)
    texts = shakespeare_texts(list(CHECK_PLAYS))
    per_play = -(-args.check_windows // len(CHECK_PLAYS))
    check = torch.cat([spread_windows(tokenize(tok, texts[p]), settings.seq_len, per_play) for p in CHECK_PLAYS])
    check = check[:args.check_windows]
    example = calib[:1, :settings.timing_tokens]
    cands = tuple(c for c in args.candidates.split(",") if c) if args.candidates else \
        tuple(choose_candidates(model, example, "prefill"))
    print(f"# candidates {','.join(cands)}; calibration {calib.shape[0]} x {settings.seq_len}, verification "
          f"{verify.shape[0]} x {settings.seq_len} (interleaved, the demo calibration text), check "
          f"{check.shape[0]} x {settings.seq_len} over {', '.join(CHECK_PLAYS)}; bound {args.bound!r}", flush=True)
    t0 = time.perf_counter()
    table = calibrate(model, lm_batches(calib, settings.batch_size), cands, progress=False)
    cal_s = time.perf_counter() - t0
    gains = profile(model, {"input_ids": example}, cands, backend=args.backend,
                    repeats=settings.profile_repeats, per_layer=False, act_scales=act_scales_of(table))
    front = pareto(table, gains, points=settings.front_points)
    preds = sorted({p.predicted_loss_mse for p in front if p.quantized and p.predicted_loss_mse > 0})
    budgets = [float(b) for b in np.geomspace(preds[0], preds[-1], args.budgets)]
    held_out = (model, lm_batches(verify, settings.batch_size))
    base_check = per_sample_losses(model, check, settings.batch_size)
    qw = table.quantized_weights
    rows = []
    for b in budgets:
        t0 = time.perf_counter()
        plain = select(table, gains, max_loss_mse=b)
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            plan = select(table, gains, max_loss_mse=b, verify=held_out, verify_bound=args.bound)
        except ValueError as e:
            rows.append({"budget": b, "refused": str(e), "verify_s": time.perf_counter() - t0, "plain_s": plain_s})
            print(f"# budget {b:.3e}: refused ({e})", flush=True)
            continue
        verify_s = time.perf_counter() - t0
        v = plan.verification
        mse, se = loss_change(model, plan, check, base_check, settings.batch_size, qw)
        rows.append({"budget": b, "layers": len(plan.quantized), "plain_layers": len(plain.quantized),
                     "predicted": plan.predicted_loss_mse, "plain_predicted": plain.predicted_loss_mse,
                     "verified": v["measured_loss_mse"], "verified_se": v["measured_loss_mse_stderr"],
                     "rounds": v["rounds"],
                     "check": mse, "check_se": se, "gain": plan.predicted_gain, "verify_s": verify_s,
                     "plain_s": plain_s})
        print(f"# budget {b:.3e}: {len(plan.quantized)} layers in {v['rounds']} rounds, verified "
              f"{v['measured_loss_mse']:.3e} ± {v['measured_loss_mse_stderr']:.1e}, check {mse:.3e} ± {se:.1e}",
              flush=True)
    return {"rows": rows, "candidates": ",".join(cands), "backend": args.backend, "bound": args.bound,
            "calibrate_s": cal_s, "check_windows": int(check.shape[0]), "machine": machine_line()}


def report(d: dict) -> None:
    rows = d["rows"]
    out = []
    for r in rows:
        if "refused" in r:
            out.append((r["budget"], "refused", float("nan"), "", "", "", float("nan"), "", r["verify_s"]))
            continue
        out.append((r["budget"], f"{r['layers']} ({r['plain_layers']})", r["predicted"],
                    f"{r['verified']:.3e} ± {r['verified_se']:.1e}", r["rounds"],
                    f"{r['check']:.3e} ± {r['check_se']:.1e}", r["check"] / r["budget"],
                    "yes" if r["check"] <= r["budget"] else
                    ("within noise" if r["check"] - 2 * r["check_se"] <= r["budget"] else "NO"),
                    r["verify_s"]))
    print(f"\n## verified plans measured again on {d['check_windows']} windows of other text "
          f"(candidates {d['candidates']}, gains {d['backend']}, bound {d['bound']!r})")
    print_table(["budget", "layers (plain)", "predicted", "verified ± se", "rounds", "check ± se",
                 "check/budget", "holds", "select s"], out,
                [".3e", "", ".3e", "", "", "", ".2f", "", ".1f"])
    ok = [r for r in rows if "refused" not in r]
    held = sum(r["check"] <= r["budget"] for r in ok)
    noise = sum(r["check"] - 2 * r["check_se"] <= r["budget"] for r in ok)
    print(f"# {held} of {len(ok)} verified plans within their budget on the check text, {noise} within two "
          f"standard errors; {len(rows) - len(ok)} budgets refused (no quantized plan measured within them)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--candidates", default="", help="default: those that pay on this CPU, as mpq run picks them")
    p.add_argument("--backend", default="cpu", choices=("cpu", "memory"))
    p.add_argument("--budgets", type=int, default=10)
    p.add_argument("--check-windows", type=int, default=128)
    p.add_argument("--bound", default="estimate", choices=("estimate", "upper"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", default="")
    p.add_argument("--load", default="")
    args = p.parse_args(argv)
    if args.load:
        with open(args.load) as f:
            d = json.load(f)
    else:
        torch.set_num_threads(args.threads)
        print(machine_line())
        d = run(args)
        if args.save:
            with open(args.save, "w") as f:
                json.dump(d, f, indent=1)
    report(d)


if __name__ == "__main__":
    main()
