"""How fast is mpq's exact MCKP solver: against HiGHS on the llm family (docs/solver.md, "Instance families"),
against an older build of its own core and the published figures of Pisinger's minimal algorithm on the 48
integer instances, and at 10^5-10^6 groups through the flat-array entry point?

    python bench/solver.py                      # every section
    python bench/solver.py --sections suite scale --reference-core OLD/_core.cpython-311-x86_64-linux-gnu.so
    python bench/solver.py --quick              # a smaller grid for a smoke run

Sections: `highs` (n <= 2,000 vs HiGHS, n = 20k / 100k, the 100-budget sweep at n = 560), `suite` (the 48 integer
instances of `instances.integer_suite`, 10 s limit each; with --reference-core, the same instances solved by that
build in a child process, instance by instance, so both see the same load), `scale` (10^6 x 8 wall and core, the
flat entry point's own overhead, a 100-budget sweep at 10^5 groups).

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
from mpq.selection.solvers.dispatch import solve_mckp, solve_mckp_csr, sweep_mckp_csr, to_csr  # noqa: E402
from mpq.selection.solvers.instances import generate, integer_suite, threshold  # noqa: E402

# Pisinger's minimal algorithm on the llm_int instances, ms, one thread, an Intel Xeon (issue 20's table): the
# published-algorithm reference the goal is set against. Classic families: the geometric means of its time over
# the old core's, from the same issue (unc 0.41, weak 0.05, strong 0.10).
MINIMAL_MS = {(224, 4): 0.038, (224, 8): 0.022, (224, 16): 0.042, (2000, 4): 0.293, (2000, 8): 0.245,
              (2000, 16): 0.292, (20000, 4): 1.85, (20000, 8): 2.67, (20000, 16): 3.23, (100000, 4): 10.2,
              (100000, 8): 13.9, (100000, 16): 20.6}
MINIMAL_OVER_OLD = {"unc": 0.41, "weak": 0.05, "strong": 0.10, "llm": 0.20}
SUITE_LIMIT_S = 10.0

# The child that times a reference build of the core: it imports that build as mpq._core from a scratch package
# and the instance generator from this checkout's file (pure numpy), so nothing else of either tree is mixed in.
_REFERENCE_CHILD = r"""
import importlib.util, json, statistics, sys
ref_pkg, instances_py, name, repeat, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
sys.path.insert(0, ref_pkg)
import numpy as np
from mpq import _core
spec = importlib.util.spec_from_file_location("instances", instances_py)
inst_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(inst_mod)
kind, _, rest = name.partition(":")
if kind in ("solve", "sweep"):  # the llm family: "solve:n:m" at frac 0.3, "sweep:n:m" over 100 budgets
    n, m = map(int, rest.split(":"))
    gains, costs = inst_mod.generate(n, m, 0)
    budgets = [inst_mod.threshold(costs, 0.3)] if kind == "solve" else \
        [inst_mod.threshold(costs, f) for f in np.linspace(0.0, 1.0, 100)]
else:
    inst = next(inst_mod.integer_suite((name,)))
    gains, costs, budgets = inst.gains, inst.costs, [inst.budget]
n, m = gains.shape
off = np.arange(n + 1, dtype=np.int64) * m
g, c = gains.reshape(-1), costs.reshape(-1)
if kind == "sweep":
    import time
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time(); out = _core.mckp_sweep(off, g, c, np.array(budgets))
        walls.append(time.perf_counter() - t0); cpus.append(time.thread_time() - c0)
    print(json.dumps(dict(status=out[-1]["status"], objective=out[-1]["objective"], seconds=statistics.median(walls),
                          cpu=statistics.median(cpus))))
    sys.exit(0)
runs = [_core.mckp_solve(off, g, c, budgets[0], time_limit=limit) for _ in range(repeat)]
print(json.dumps(dict(status=runs[0]["status"], objective=runs[0]["objective"],
                      seconds=statistics.median(r["seconds"] for r in runs))))
"""


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
    p.add_argument("--sections", nargs="+", default=["highs", "suite", "scale"], choices=["highs", "suite", "scale"])
    p.add_argument("--reference-core", default=None,
                   help="an older build's _core*.so: the suite also times it, for the old/new ratio")
    p.add_argument("--suite-repeat", type=int, default=5, help="repeats per suite instance (median)")
    p.add_argument("--scale-n", type=int, default=1000000, help="groups of the largest flat-array solve (m = 8)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.ms, a.large, a.large_ms, a.repeat = [224, 560], [6, 16], [20000], [6], 3
        a.suite_repeat, a.scale_n = 3, 200000
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


def reference_run(core_path, name, repeat, key="seconds"):
    """(status, objective, median core seconds) of the reference build on one suite instance, in a child process
    (key="cpu": the sweep's thread CPU seconds instead)."""
    import json
    import shutil
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "mpq"))
        open(os.path.join(tmp, "mpq", "__init__.py"), "w").close()
        shutil.copy(core_path, os.path.join(tmp, "mpq", os.path.basename(core_path)))
        here = os.path.dirname(os.path.abspath(__file__))
        inst_py = os.path.join(here, "..", "python", "mpq", "selection", "solvers", "instances.py")
        out = subprocess.run([sys.executable, "-c", _REFERENCE_CHILD, tmp, inst_py, name, str(repeat),
                              str(SUITE_LIMIT_S)], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONPATH=""))
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["status"], d["objective"], d[key]


def geomean(xs):
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else float("nan")


def suite_section(args):
    """The 48 integer instances: proof within 10 s, the core's time, the old build's, the minimal algorithm's."""
    ref = args.reference_core
    print(f"\n### Integer suite (48 instances, {SUITE_LIMIT_S:.0f} s limit each, median of {args.suite_repeat}; "
          f"load {os.getloadavg()[0]:.1f})\n")
    print("| instance | status | core ms | core groups | old core ms (status) | old/new | minimal algorithm ms "
          "(Xeon, issue 20) | new/minimal |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, vs_min, unproven = {}, [], []
    for inst in integer_suite():
        n, m = inst.gains.shape
        off = np.arange(n + 1, dtype=np.int64) * m
        g, c = inst.gains.reshape(-1), inst.costs.reshape(-1)
        runs = [_core.mckp_solve(off, g, c, inst.budget, time_limit=SUITE_LIMIT_S) for _ in range(args.suite_repeat)]
        d, t = runs[0], statistics.median(r["seconds"] for r in runs)
        idx = off[:-1] + d["choice"]
        assert math.fsum(c[idx].tolist() + [-inst.budget]) <= 0, f"{inst.name}: over budget"
        if d["status"] != "optimal":
            unproven.append(inst.name)
        old = "–"
        ratio = "–"
        if ref:
            st, obj, t_old = reference_run(ref, inst.name, args.suite_repeat)
            if st == "optimal" and d["status"] == "optimal":
                assert obj == d["objective"], (inst.name, obj, d["objective"])
            old = f"{fmt_ms(t_old)} ({st})"
            ratio = f"{t_old / t:.2f}x"
            ratios.setdefault(inst.family, []).append((t_old, t))
        mn = MINIMAL_MS.get((n, m)) if inst.family == "llm" else None
        if mn:
            vs_min.append(t * 1e3 / mn)
        print(f"| {inst.name} | {d['status']} | {fmt_ms(t)} | {d['core_groups']} | {old} | {ratio} | "
              f"{mn if mn else '–'} | {f'{t * 1e3 / mn:.2f}' if mn else '–'} |", flush=True)
    print(f"\nproved optimal: {48 - len(unproven)} of 48" + (f" (not: {', '.join(unproven)})" if unproven else ""))
    if vs_min:
        print(f"llm_int: new core / minimal algorithm (this box against the issue's Xeon figures): geometric mean "
              f"{geomean(vs_min):.2f}, max {max(vs_min):.2f}")
    for fam, pairs in ratios.items():
        gm = geomean([o / nw for o, nw in pairs])
        goal = "<= 1 on llm_int" if fam == "llm" else "<= 2 on the classic families"
        print(f"{fam}: old/new geometric mean {gm:.2f}x over {len(pairs)}; the minimal algorithm was "
              f"{1 / MINIMAL_OVER_OLD[fam]:.1f}x faster than the old core (issue 20's geometric mean), so new/minimal "
              f"is about {1 / (gm * MINIMAL_OVER_OLD[fam]):.2f} (goal: {goal})")


def scale_section(args):
    """10^6 x 8 through the flat entry point, its own overhead at several n, a 100-budget sweep at 10^5 groups."""
    print(f"\n### Scale (llm family, m = 8, frac 0.3, flat entry point solve_mckp_csr; load {os.getloadavg()[0]:.1f})\n")
    # Under load from other jobs wall clock includes waiting for a CPU: the thread's own CPU time (user + system,
    # page faults included) is printed beside it, the figure a quiet machine's wall clock approaches.
    # The entry point's own overhead is also read on CPU time: the same thread's CPU for solve_mckp_csr against
    # that of the bare _core.mckp_solve call on the same arrays (wall clock alone counts preemption by other jobs).
    print("| n | wall ms: median [max] | thread CPU ms | core ms | overhead (wall - core) / core | "
          "overhead, CPU: (entry - bare core call) / bare | 2-D solve_mckp wall ms | 2-D thread CPU ms | old core ms | "
          "old/new core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (224, 2000, 20000, 100000, args.scale_n):
        g, c = generate(n, 8, 0)
        b = threshold(c, 0.3)
        off = np.arange(n + 1, dtype=np.int64) * 8
        gf, cf = g.reshape(-1), c.reshape(-1)
        rep = 3 if n >= 10 ** 6 else max(3, args.repeat)
        walls, cpus, cores, over, two_d, two_d_cpu, bare = [], [], [], [], [], [], []
        for _ in range(rep):
            c0 = time.thread_time()
            _core.mckp_solve(off, gf, cf, b)
            bare.append(time.thread_time() - c0)
            t0, c0 = time.perf_counter(), time.thread_time()
            s = solve_mckp_csr(off, gf, cf, b)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.thread_time() - c0)
            cores.append(s.seconds)
            over.append((walls[-1] - s.seconds) / s.seconds)
            assert s.status == "optimal", s.message
            t0, c0 = time.perf_counter(), time.thread_time()
            solve_mckp(g, c, b)
            two_d.append(time.perf_counter() - t0)
            two_d_cpu.append(time.thread_time() - c0)
        old, ratio = "–", "–"
        if args.reference_core:
            _, _, t_old = reference_run(args.reference_core, f"solve:{n}:8", rep)
            old, ratio = fmt_ms(t_old), f"{t_old / statistics.median(cores):.2f}x"
        print(f"| {n} | {fmt_ms(statistics.median(walls))} [{fmt_ms(max(walls))}] | {fmt_ms(statistics.median(cpus))} "
              f"| {fmt_ms(statistics.median(cores))} "
              f"| {statistics.median(over):.1%} | {statistics.median(cpus) / statistics.median(bare) - 1:.1%} "
              f"| {fmt_ms(statistics.median(two_d))} | {fmt_ms(statistics.median(two_d_cpu))} | {old} | {ratio} |",
              flush=True)
    g, c = generate(100000, 8, 0)
    off = np.arange(100001, dtype=np.int64) * 8
    budgets = np.array([threshold(c, f) for f in np.linspace(0.0, 1.0, 100)])
    times, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.thread_time()
        sols = sweep_mckp_csr(off, g.reshape(-1), c.reshape(-1), budgets)
        times.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    assert all(s.status == "optimal" for s in sols)
    line = (f"\nsweep n=100,000 m=8, 100 budgets (fractions 0..1), sweep_mckp_csr: {fmt_ms(statistics.median(times))} "
            f"ms median [{fmt_ms(min(times))}-{fmt_ms(max(times))}], thread CPU {fmt_ms(statistics.median(cpus))} ms")
    if args.reference_core:
        _, _, t_old = reference_run(args.reference_core, "sweep:100000:8", 3)
        _, _, c_old = reference_run(args.reference_core, "sweep:100000:8", 3, key="cpu")
        line += (f"; old core {fmt_ms(t_old)} ms wall, {fmt_ms(c_old)} ms CPU: old/new {t_old / statistics.median(times):.2f}x "
                 f"wall, {c_old / statistics.median(cpus):.2f}x CPU")
    print(line)


def main(argv=None):
    args = parse_args(argv)
    from importlib.metadata import version
    print(f"# {platform.machine()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} threads=1 "
          f"python={platform.python_version()} numpy={np.__version__} highspy={version('highspy')}")
    print(f"# command: python bench/solver.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    if "suite" in args.sections:
        suite_section(args)
    if "scale" in args.sections:
        scale_section(args)
    if "highs" not in args.sections:
        return
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
