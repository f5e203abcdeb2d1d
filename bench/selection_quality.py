"""Selection quality (issue 6, item 5): at three speed targets, the measured perplexity of mpq's plan against
baselines at (nearly) equal measured speed, on SmolLM2-135M with the shipped Shakespeare text (calibration:
``demo_text("calibration")``, evaluation: ``demo_text("evaluation")``, held out).

Methods, all at the same required predicted gain (min_gain = a fraction of the fastest plan's predicted gain):
  mpq      ``mpq.select(table, gains, min_gain=...)``: least predicted loss MSE Σ s[l, c] for the gain;
  greedy   uniform int8, then the most sensitive choice groups (by s[l, int8]) kept in base one by one while the
           predicted gain stays ≥ the target (tie groups of the GainTable share a choice);
  fisher   ModelOpt-AutoQuantize-style score Σ_n Σ (G_Y ⊙ ΔY)² per layer and candidate, as the cost of the same
           MCKP, solved by the same solver and target;
  random   random per-sub-graph configurations until the target is met (median and best of ``--random-plans``).
Every plan is measured: perplexity and loss MSE against the base model on the held-out windows (``apply(mode=
"fake")``), end-to-end prefill time of one window on one thread (``apply(mode="native")``, ``time_phase``).

Against the peer: ``--peer modelopt [--bits 7 7.5 8 9]`` (bench/_modelopt_peer.py). At equal average weight bits,
every allocator (mpq, HAWQ-V3, OMPQ, Fisher, greedy) and the full systems (ModelOpt, AutoRound) among RTN / AWQ /
GPTQ candidates: ``--budgets [--bits 4.5 5 6 8 9]`` (bench/_bit_budgets.py).

Usage:  python bench/selection_quality.py [--reuse] [--candidates int8,w8a16] [--calib-windows 16]
        [--eval-windows 8] [--random-plans 10] [--fractions 0.25,0.5,0.75]
Artifacts (SensitivityTable, GainTable, Fisher scores, results JSON/Markdown, plot) go to
bench/out/selection_quality/; ``--reuse`` loads the tables and scores from there if their settings match.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _selection_baselines import fisher_scores, fisher_table, greedy_keep, random_plan  # noqa: E402
from _util import machine_line  # noqa: E402

from mpq.calibration import calibrate  # noqa: E402
from mpq.data import lm_batches, token_windows, tokenize  # noqa: E402
from mpq.artifacts import GainTable  # noqa: E402
from mpq.demo_run import RunSettings, demo_text, load_model, measure, per_sample_losses, time_phase  # noqa: E402
from mpq.profiling import profile  # noqa: E402
from mpq.selection import select  # noqa: E402
from mpq.artifacts import SensitivityTable  # noqa: E402


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default="int8,w8a16")
    p.add_argument("--model", default="smollm2", help="--budgets: smollm2, gemma3, a Hugging Face folder or a .gguf "
                   "file (the other modes run SmolLM2)")
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration / evaluation window")
    p.add_argument("--time-tokens", type=int, default=256,
                   help="tokens of the prefill example that is profiled and timed (the first calibration window)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--fractions", default="0.25,0.5,0.75", help="targets as fractions of the fastest plan's gain")
    p.add_argument("--random-plans", type=int, default=10)
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--profile-repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "out" / "selection_quality")
    p.add_argument("--reuse", action="store_true", help="load the tables / Fisher scores cached under --out")
    p.add_argument("--peer", choices=("modelopt",), help="instead: mpq against the peer's own selection at equal "
                   "average bits (bench/_modelopt_peer.py; use --seq-len 128 --calib-windows 32 --eval-windows 48)")
    p.add_argument("--bits", type=float, nargs="+",
                   help="--peer: average bits (SmolLM2 with lm_head at 16 bits reaches no fewer than 6.53; default "
                   "7 7.5 8 9); --budgets: average bits of the decoder's weights (default 4.5 5 6 8 9)")
    p.add_argument("--budgets", action="store_true", help="instead: every allocator (mpq, HAWQ, OMPQ, Fisher, "
                   "greedy) and the full systems (ModelOpt, AutoRound) at equal average weight bits among RTN/AWQ/"
                   "GPTQ x INT4 g64/INT8 (bench/_bit_budgets.py; use --seq-len 128 --eval-windows 32)")
    p.add_argument("--hawq-probes", type=int, default=4, help="--budgets: Hutchinson probes per calibration batch")
    p.add_argument("--hawq-method", default="double_backward", choices=("double_backward", "finite_difference"))
    p.add_argument("--ompq-beta", type=float, help="--budgets: OMPQ's β (default: 4 / the spread of γ)")
    p.add_argument("--methods", default="mpq,hawq,fisher,ompq,greedy,modelopt,autoround",
                   help="--budgets: which allocators / systems to run (the scores are cached under --out)")
    p.add_argument("--quantizer-windows", type=int, default=0, help="--budgets: calibrated candidates fit their "
                   "integers on this many further windows of the calibration text, interleaved with and disjoint "
                   "from the --calib-windows that measure δ (calibrate's quantizer_batches; 0: the same windows)")
    p.add_argument("--autoround-iters", type=int, default=0, help="--budgets: AutoRound's signed-gradient "
                   "rounding steps per block (0: its RTN rounding)")
    return p.parse_args(argv)


def cached(path: Path, key: dict, reuse: bool, make, load, save):
    """make() unless --reuse and ``path`` was made with the same ``key``."""
    keyfile = path.with_suffix(path.suffix + ".key.json")
    if reuse and path.exists() and keyfile.exists() and json.loads(keyfile.read_text()) == json.loads(json.dumps(key)):
        say(f"reusing {path}")
        return load(path)
    obj = make()
    save(obj, path)
    keyfile.write_text(json.dumps(key))
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    fractions = [float(f) for f in args.fractions.split(",")]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.peer == "modelopt":
        import _modelopt_peer
        args.bits = args.bits or [7.0, 7.5, 8.0, 9.0]
        print(machine_line())
        _modelopt_peer.main(args)
        return 0
    if args.budgets:
        import _bit_budgets
        if args.candidates == "int8,w8a16":  # the speed comparison's default: here the algorithm variants
            args.candidates = _bit_budgets.DEFAULT_CANDIDATES
        args.bits = args.bits or [4.5, 5.0, 6.0, 8.0, 9.0]
        print(machine_line())
        _bit_budgets.main(args)
        return 0
    t_start = time.perf_counter()
    machine = machine_line()

    say("loading SmolLM2-135M and the Shakespeare text")
    model, tok = load_model(RunSettings())
    calib = token_windows(tokenize(tok, demo_text("calibration")), args.seq_len, args.calib_windows)
    evalw = token_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval_windows)
    batches = lm_batches(calib, args.batch_size)
    example = calib[:1, :args.time_tokens]

    key = dict(candidates=cands, calib_windows=args.calib_windows, seq_len=args.seq_len,
               batch_size=args.batch_size)
    table = cached(out / "sensitivity.npz", key, args.reuse,
                   lambda: (say(f"calibrating {cands} on {args.calib_windows} x {args.seq_len} tokens"),
                            calibrate(model, batches, cands, progress=False))[1],
                   SensitivityTable.load, lambda t, p: t.save(p))
    gkey = dict(candidates=cands, time_tokens=args.time_tokens, repeats=args.profile_repeats)
    gains = cached(out / "gains.npz", gkey, args.reuse,
                   lambda: (say(f"profiling {cands} on the CPU, prefill of {args.time_tokens} tokens, one thread"),
                            profile(model, {"input_ids": example}, cands, backend="cpu", phase="prefill",
                                    repeats=args.profile_repeats))[1],
                   GainTable.load, lambda g, p: g.save(p))
    timed = [l for l in table.layers if l in set(gains.layers)]

    def make_fisher():
        say(f"Fisher scores Σ(G⊙ΔY)² of {len(timed)} timed layers on the same calibration batches")
        sc = fisher_scores(model, timed, batches, cands)
        full = np.zeros((sc.shape[0], len(table.layers), len(cands)))
        full[:, [table.layers.index(l) for l in timed], :] = sc
        return full
    scores = cached(out / "fisher.npy", key, args.reuse, make_fisher, np.load, lambda a, p: np.save(p, a))
    ftable = fisher_table(scores, table)

    # targets
    max_gain = float(sum(sg.gain.max() for sg in gains.subgraphs))
    t0 = float(gains.baseline_seconds)
    targets = [f * max_gain for f in fractions]
    say(f"fastest plan predicts {1e3 * max_gain:.1f} ms of {1e3 * t0:.1f} ms; targets "
        + ", ".join(f"{1e3 * t:.1f} ms" for t in targets))

    # plans
    rng = np.random.default_rng(args.seed)
    plans = []  # (target index, method, mapping, info)
    for ti, need in enumerate(targets):
        p = select(table, gains, min_gain=need)
        plans.append((ti, "mpq", dict(p.quantized), dict(solver=p.solver["status"])))
        m, info = greedy_keep(table, gains, need)
        plans.append((ti, "greedy int8 keep", m, info))
        pf = select(ftable, gains, min_gain=need)
        plans.append((ti, "fisher (ModelOpt-style)", dict(pf.quantized), dict(solver=pf.solver["status"])))
        for r in range(args.random_plans):
            m, _ = random_plan(gains, need, rng)
            plans.append((ti, f"random {r}", m, {}))

    # measurements
    settings = SimpleNamespace(batch_size=args.batch_size, timing_repeats=args.timing_repeats)
    say("measuring the base model")
    base_losses = per_sample_losses(model, evalw, args.batch_size)
    base_times = [measure("base", model, {}, None, evalw, base_losses, example, settings, {}).seconds]
    base_ppl = float(torch.exp(base_losses.mean()))
    memo = {}
    rows = []
    uniform = {l: cands[0] for l in timed}
    todo = [(-1, f"all {cands[0]} (reference)", uniform, {})] + plans
    for n, (ti, method, mapping, info) in enumerate(todo):
        keyp = tuple(sorted(mapping.items()))
        if keyp in memo:
            r = memo[keyp]
            same = r["method"] if r["target"] == ti else f"{r['method']} @ target {r['target'] + 1}"
            info = dict(info, same_plan_as=same)
        else:
            say(f"[{n + 1}/{len(todo)}] target {ti + 1 if ti >= 0 else '-'}: {method} ({len(mapping)} layers "
                "quantized)")
            r = measure(method, model, mapping, None, evalw, base_losses, example, settings, {})
            r = dict(target=ti, method=method, ppl=r.ppl, loss_mse=r.loss_mse, seconds=r.seconds,
                     seconds_iqr=r.seconds_iqr)
            memo[keyp] = r
        if n == len(todo) // 2:  # base again, half-way: the load of the box drifts
            base_times.append(time_phase(model, example, "prefill", args.timing_repeats)[0])
        rows.append(dict(target=ti, method=method, n_quantized=len(mapping), pred_gain=gains.predict(mapping),
                         pred_mse=table.predicted_mse(mapping), ppl=r["ppl"], loss_mse=r["loss_mse"],
                         seconds=r["seconds"], seconds_iqr=r["seconds_iqr"], info=info,
                         mapping=mapping))
    base_times.append(time_phase(model, example, "prefill", args.timing_repeats)[0])
    base_s = statistics.median(base_times)
    for r in rows:
        r["speedup"] = base_s / r["seconds"]
        r["pred_speedup"] = t0 / (t0 - r["pred_gain"])

    # summary rows: random → median and best
    summary = [dict(target=-1, method="base", pred_gain=0.0, pred_speedup=1.0, speedup=1.0, ppl=base_ppl,
                    loss_mse=0.0, pred_mse=0.0, n_quantized=0, seconds=base_s, note="")]
    for r in rows:
        if r["target"] == -1:
            summary.append(dict(r, note=""))
    for ti, need in enumerate(targets):
        here = [r for r in rows if r["target"] == ti]
        for r in here:
            if not r["method"].startswith("random"):
                parts = []
                if r["info"].get("same_plan_as"):
                    parts.append(f"same plan as {r['info']['same_plan_as']}")
                if r["method"].startswith("greedy"):
                    parts.append(f"kept {r['info']['kept']} choice groups in base")
                summary.append(dict(r, note="; ".join(parts)))
        rnd = [r for r in here if r["method"].startswith("random")]
        if rnd:
            med = lambda k: statistics.median(x[k] for x in rnd)  # noqa: E731
            summary.append(dict(target=ti, method=f"random median of {len(rnd)}", pred_gain=med("pred_gain"),
                                pred_speedup=med("pred_speedup"), speedup=med("speedup"), ppl=med("ppl"),
                                loss_mse=med("loss_mse"), pred_mse=med("pred_mse"),
                                n_quantized=med("n_quantized"), seconds=med("seconds"), note="each column's median"))
            best = min(rnd, key=lambda x: x["ppl"])
            summary.append(dict(best, method=f"random best ({best['method']})", note="lowest ppl of the random"))

    header = ("| target | method | pred gain ms | pred speedup | meas speedup | meas ppl | meas loss MSE | "
              "pred loss MSE (s) | layers q | note |")
    lines = [header, "|" + "---|" * 10]
    for r in summary:
        tgt = "—" if r["target"] < 0 else f"{fractions[r['target']]:.0%} = {1e3 * targets[r['target']]:.1f} ms"
        lines.append(f"| {tgt} | {r['method']} | {1e3 * r['pred_gain']:.1f} | {r['pred_speedup']:.3f} | "
                     f"{r['speedup']:.3f} | {r['ppl']:.3f} | {r['loss_mse']:.3g} | {r['pred_mse']:.3g} | "
                     f"{r['n_quantized']:g} | {r['note']} |")
    table_md = "\n".join(lines)

    # goal check: mpq vs every non-random baseline and the random median, per target
    verdicts = []
    for ti in range(len(targets)):
        get = {r["method"]: r for r in summary if r["target"] == ti}
        mp = get["mpq"]
        others = {k: v for k, v in get.items() if k != "mpq" and not k.startswith("random best")}
        worse = [k for k, v in others.items() if v["ppl"] < mp["ppl"] - 1e-9]
        worse_mse = [k for k, v in others.items() if v["loss_mse"] < mp["loss_mse"]]
        verdicts.append(f"target {ti + 1} ({fractions[ti]:.0%}), measured loss MSE: mpq {mp['loss_mse']:.3g}; "
                        + ("lowest (" if not worse_mse else "NOT lowest (")
                        + ", ".join(f"{k} {v['loss_mse']:.3g}" for k, v in others.items()) + ")")
        verdicts.append(f"target {ti + 1} ({fractions[ti]:.0%}), measured ppl: mpq {mp['ppl']:.3f} at "
                        f"{mp['speedup']:.3f}x; "
                        + ("not worse than " + ", ".join(f"{k} {v['ppl']:.3f} at {v['speedup']:.3f}x"
                                                         for k, v in others.items()) if not worse else
                           "WORSE than " + ", ".join(f"{k} {others[k]['ppl']:.3f} at {others[k]['speedup']:.3f}x"
                                                     for k in worse)))
    argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    cmd = f"python bench/selection_quality.py {argv_s}".strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    elapsed = time.perf_counter() - t_start
    text = "\n".join([
        f"Command: `{cmd}` ({when}, {elapsed / 60:.1f} min)", "", f"`{machine}`", "",
        f"SmolLM2-135M, candidates {', '.join(cands)}; calibration {args.calib_windows} x {args.seq_len} tokens of "
        f"A Midsummer Night's Dream, evaluation {args.eval_windows} x {args.seq_len} tokens of Macbeth (held out); "
        f"time = prefill of {args.time_tokens} tokens, one thread, median of {args.timing_repeats} "
        f"(base {1e3 * base_s:.1f} ms, median of {len(base_times)} measurements: "
        + ", ".join(f"{1e3 * b:.1f}" for b in base_times) + f"; profile baseline {1e3 * t0:.1f} ms). "
        f"Fastest plan predicts {1e3 * max_gain:.1f} ms of gain; targets are "
        + ", ".join(f"{f:.0%}" for f in fractions) + " of it. Base perplexity "
        f"{base_ppl:.3f}.", "", table_md, "", *[f"- {v}" for v in verdicts]])
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(dict(command=cmd, date=when, machine=machine, base_seconds=base_s,
                                                      base_times=base_times, base_ppl=base_ppl, targets=targets,
                                                      max_gain=max_gain, rows=rows), indent=1, default=str))
    try:
        plot(rows, base_s, base_ppl, fractions, out / "selection_quality.png")
    except Exception as e:  # the plot is optional
        say(f"no plot: {e}")
    say(f"done in {elapsed / 60:.1f} min; wrote {out / 'results.md'}")
    return 0


def plot(rows, base_s, base_ppl, fractions, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = ["tab:blue", "tab:orange", "tab:green"]
    marks = {"mpq": ("*", 200), "greedy int8 keep": ("s", 60), "fisher (ModelOpt-style)": ("^", 70)}
    for r in rows:
        if r["target"] < 0:
            ax.scatter(r["speedup"], r["ppl"], marker="x", color="k", label=r["method"])
            continue
        mk, sz = marks.get(r["method"], (".", 30))
        lab = (r["method"] if not r["method"].startswith("random") else "random") if r["target"] == 0 else None
        ax.scatter(r["speedup"], r["ppl"], marker=mk, s=sz, color=colors[r["target"] % 3], label=lab,
                   alpha=0.5 if r["method"].startswith("random") else 1.0, edgecolors="k" if mk != "." else None)
    ax.axhline(base_ppl, color="gray", lw=0.8, ls="--", label="base ppl")
    ax.set_xlabel("measured speedup (prefill, one thread)")
    ax.set_ylabel("measured perplexity (Macbeth, held out)")
    ax.set_title("Selection quality; colour = target " + ", ".join(f"{f:.0%}" for f in fractions))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
