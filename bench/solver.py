"""How much faster is mpq's exact MCKP solver than HiGHS on the llm family (docs/solver.md, "Instance families")?

    python bench/solver.py                      # n <= 2,000 vs HiGHS, n = 20k / 100k, the 100-budget sweep
    python bench/solver.py --quick              # a smaller grid for a smoke run

Both solvers run in this process's run (HiGHS in its own child process, timed around its run() call only), one thread, on the same instances; answers are checked equal (1e-9 relative, exact
feasibility) before any time is reported. Ratios are medians of per-instance HiGHS/ours ratios.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from mpq import _core  # noqa: E402
from mpq.selection.solvers.dispatch import solve_mckp, to_csr  # noqa: E402
from mpq.selection.solvers.instances import generate, threshold  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 560, 2000], help="n compared with HiGHS")
    p.add_argument("--ms", type=int, nargs="+", default=[2, 6, 16, 25])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fracs", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    p.add_argument("--large", type=int, nargs="*", default=[20000, 100000], help="n timed without HiGHS")
    p.add_argument("--large-ms", type=int, nargs="+", default=[2, 6, 16, 25])
    p.add_argument("--repeat", type=int, default=7, help="timed repeats of our solver (median)")
    p.add_argument("--highs-limit", type=float, default=60.0, help="HiGHS time limit per instance (s)")
    p.add_argument("--sweep-highs", type=int, default=0, help="also time HiGHS on this many sweep budgets")
    p.add_argument("--quick", action="store_true", help="n=224/560, m=6/16, no 100k: a smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.ms, a.large, a.large_ms, a.repeat = [224, 560], [6, 16], [20000], [6], 3
    return a


def ours(csr, budget, repeat):
    """Median seconds of the C++ solve (as reported by the core: excludes Python input conversion)."""
    off, g, c, _ = csr
    runs = [_core.mckp_solve(off, g, c, budget) for _ in range(repeat)]
    return runs[0], statistics.median(r["seconds"] for r in runs)


def check(csr, budget, d, ref=None):
    off, g, c, _ = csr
    idx = off[:-1] + d["choice"]
    assert d["status"] == "optimal", d["message"]
    assert math.fsum(c[idx].tolist() + [-budget]) <= 0, "over budget"
    if ref is not None and ref.status == "optimal":
        assert abs(d["objective"] - ref.objective) <= 1e-9 * abs(ref.objective), (d["objective"], ref.objective)


def fmt_ms(s):
    return f"{s * 1e3:.3f}" if s < 1 else f"{s * 1e3:.0f}"


def main(argv=None):
    args = parse_args(argv)
    from importlib.metadata import version
    print(f"# {platform.machine()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} threads=1 "
          f"python={platform.python_version()} numpy={np.__version__} highspy={version('highspy')}")
    print(f"# command: python bench/solver.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print()
    print("| n | m | inst. | HiGHS exact ms: median [max] | mpq ms: median [max] | HiGHS/mpq: median [min] |"
          " max core groups |")
    print("|---|---|---|---|---|---|---|")
    all_ratios = []
    for n in args.sizes:
        for m in args.ms:
            th, to, ratios, cores = [], [], [], []
            for seed in args.seeds:
                g, c = generate(n, m, seed)
                csr = to_csr(g, c)
                for frac in args.fracs:
                    budget = threshold(c, frac)
                    ref = solve_mckp(g, c, budget, solver="highs", rel_gap=0.0, time_limit=args.highs_limit)
                    d, t = ours(csr, budget, args.repeat)
                    check(csr, budget, d, ref)
                    th.append(ref.seconds)
                    to.append(t)
                    ratios.append(ref.seconds / t)
                    cores.append(d["core_groups"])
            all_ratios += ratios
            print(f"| {n} | {m} | {len(to)} | {fmt_ms(statistics.median(th))} [{fmt_ms(max(th))}] | "
                  f"{fmt_ms(statistics.median(to))} [{fmt_ms(max(to))}] | {statistics.median(ratios):.0f}x "
                  f"[{min(ratios):.0f}x] | {max(cores)} |", flush=True)
    for n in args.large:
        for m in args.large_ms:
            g, c = generate(n, m, 0)
            csr = to_csr(g, c)
            to, cores = [], []
            for frac in args.fracs:
                budget = threshold(c, frac)
                d, t = ours(csr, budget, max(3, args.repeat // 2))
                check(csr, budget, d)
                to.append(t)
                cores.append(d["core_groups"])
            print(f"| {n} | {m} | {len(to)} | not run (HiGHS gave no proof in 20-600 s at this size) | "
                  f"{fmt_ms(statistics.median(to))} [{fmt_ms(max(to))}] | – | {max(cores)} |", flush=True)
    if all_ratios:
        print(f"\nall n <= {max(args.sizes)}: median HiGHS/mpq ratio {statistics.median(all_ratios):.0f}x, "
              f"min {min(all_ratios):.0f}x over {len(all_ratios)} instances")
    # the 100-budget sweep: one preprocessing, each solution seeds the next budget
    g, c = generate(560, 6, 0)
    off, gg, cc, _ = to_csr(g, c)
    budgets = np.array([threshold(c, f) for f in np.linspace(0.0, 1.0, 100)])
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        sols = _core.mckp_sweep(off, gg, cc, budgets)
        times.append(time.perf_counter() - t0)
    objs = [s["objective"] for s in sols]
    assert all(s["status"] == "optimal" for s in sols) and all(b >= a for a, b in zip(objs, objs[1:]))
    single = sum(_core.mckp_solve(off, gg, cc, b)["seconds"] for b in budgets)
    line = (f"\nsweep n=560 m=6, 100 budgets: {fmt_ms(statistics.median(times))} ms median "
            f"[{fmt_ms(min(times))}-{fmt_ms(max(times))}] (100 separate solves: {fmt_ms(single)} ms)")
    if args.sweep_highs:
        pick = budgets[:: max(1, len(budgets) // args.sweep_highs)][: args.sweep_highs]
        ht = [solve_mckp(g, c, b, solver="highs", rel_gap=0.0, time_limit=args.highs_limit).seconds for b in pick]
        est = statistics.mean(ht) * len(budgets)
        line += f"; HiGHS ~{est:.1f} s for 100 (from {len(pick)}), ratio {est / statistics.median(times):.0f}x"
    print(line)


if __name__ == "__main__":
    main()
