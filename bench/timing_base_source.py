"""Where should a sub-graph's base time come from? Same data, two answers, against measured plans.

One profile run (``backends._timing.time_in_model``: one all-base pass and K_max mixed passes per repeat) times
each sub-graph's base twice: in the all-base pass and inside a mixed pass among quantized neighbours. Gains from
either base predict ``--plans`` random plans (one random configuration per sub-graph), each then installed in the
same model copy and timed whole against the base model (interleaved pairs, alternating order, median of the
paired differences). The profile uses the all-base pass; this script shows why on the machine it runs on. A third
column tries a refinement not in the profile: the plan's base sub-graphs also pay the slowdown they showed in the
mixed passes.

    python bench/timing_base_source.py --phase prefill --seq-len 32 --candidates int8 --plans 12
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import machine_line  # noqa: E402

import mpq.data as data  # noqa: E402
from mpq.models import set_module  # noqa: E402
from mpq.profiling.backends import cpu as cpu_backend  # noqa: E402
from mpq.profiling.timing import gains_from_times, time_in_model  # noqa: E402
from mpq.partitioning import partition  # noqa: E402
from mpq.profiling.profiler import enumerate_configs, make_runner  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a Hugging Face folder or .gguf file (default: SmolLM2-135M)")
    p.add_argument("--phase", default="prefill", choices=("prefill", "decode"))
    p.add_argument("--candidates", default="int8")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=41, help="profile repeats")
    p.add_argument("--plans", type=int, default=12)
    p.add_argument("--plan-repeats", type=int, default=61)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(machine_line())
    model, tok = data.load_causal_lm(args.model) if args.model else data.load_smollm2()
    ids = data.tokenize(tok, data.shakespeare_texts(["hamlet"])["hamlet"])[: args.seq_len].reshape(1, -1)
    cands = ("base",) + tuple(c for c in args.candidates.split(",") if c)
    sgs = partition(model, ids)
    work = copy.deepcopy(model)
    run, _ = make_runner(work, ids, args.phase)
    named = dict(work.named_modules())
    configs = [enumerate_configs(sg, list(cands[1:]))[0] for sg in sgs]
    quantized = {(l, cands[j]): cpu_backend.make_module(named[l], cands[j])
                 for sg, cfg in zip(sgs, configs) for li, l in enumerate(sg.layers) for j in set(cfg[:, li]) - {0}}
    clock = cpu_backend.clock()
    seg, base_whole, _, base_mixed = time_in_model(work, run, sgs, configs, cands, quantized, clock,
                                                   args.repeats, 2, seed=args.seed)
    from_base_pass = [gains_from_times(t)[0] for t in seg]
    from_mixed = [gains_from_times(np.vstack([m[None], t[1:]]))[0] for m, t in zip(base_mixed, seg)]
    slowdown = np.array([np.median(m - t[0]) for m, t in zip(base_mixed, seg)])   # per sub-graph
    slower = slowdown.sum()
    print(f"# {len(sgs)} sub-graphs, {args.phase}, {list(cands[1:])}; all-base pass {np.median(base_whole) * 1e3:.2f} "
          f"ms; base sub-graphs ran {slower * 1e3:+.2f} ms slower (summed) in the mixed passes")

    originals = {l: named[l] for sg in sgs for l in sg.layers}

    def install(choice):
        for i, sg in enumerate(sgs):
            for l, j in zip(sg.layers, configs[i][choice[i]]):
                set_module(work, l, originals[l] if j == 0 else quantized[(l, cands[j])])

    def timed():
        t0 = clock.mark()
        run()
        return clock.seconds(t0, clock.mark())

    rng = np.random.default_rng(args.seed + 1)
    all_base = np.zeros(len(sgs), dtype=int)
    rows = []
    print(f"{'plan':>4} {'measured ms':>11} {'±se':>5} {'all-base pass':>13} {'mixed passes':>12} {'+ slowdown':>10}")
    with torch.no_grad():
        for p in range(args.plans):
            plan = np.array([rng.integers(len(c)) for c in configs])
            tb, tp = [], []
            for r in range(-2, args.plan_repeats):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    install(all_base if which == 0 else plan)
                    t = timed()
                    if r >= 0:
                        (tb if which == 0 else tp).append(t)
            d = np.array(tb) - np.array(tp)
            boot = np.median(d[rng.integers(len(d), size=(300, len(d)))], axis=1)
            preds = [sum(g[c] for g, c in zip(gains, plan)) for gains in (from_base_pass, from_mixed)]
            # a candidate refinement: the plan's base sub-graphs also pay their slowdown among quantized ones
            preds.append(preds[0] - slowdown[plan == 0].sum())
            rows.append((np.median(d), *preds))
            print(f"{p:>4} {np.median(d) * 1e3:11.2f} {np.std(boot) * 1e3:5.2f} {preds[0] * 1e3:13.2f} "
                  f"{preds[1] * 1e3:12.2f} {preds[2] * 1e3:10.2f}", flush=True)
    install(all_base)
    a = np.array(rows)
    for name, col in (("base from the all-base pass (profile)", 1), ("base from the mixed passes", 2),
                      ("all-base pass − base sub-graphs' slowdown", 3)):
        err = a[:, col] - a[:, 0]
        print(f"# {name:<41} median error {np.median(err) * 1e3:+6.2f} ms, median |rel err| "
              f"{np.median(np.abs(err) / np.abs(a[:, 0])) * 100:5.1f}%")


if __name__ == "__main__":
    main()
