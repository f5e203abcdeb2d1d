"""Multipoint Linear on the CPU's weight-only kernels: k = 1, 2, 3 greedy residual points, run as one GEMM on the
stacked [k·out, in] points plus a segment sum ("stacked") or as k GEMMs summed ("points"), against the float32
Linear, in the same run; also the weight error ‖W − Σ a_p q_p‖ / ‖W‖ per k. Outputs are checked against
x·(Σ a_p q_p)ᵀ before timing. One thread; the median (or --stat min) of --repeat rounds, each round timing every
module once.

    python bench/multipoint.py [--repeat 15] [--fmt int4|int8] [--tokens 1,64] [--stat median|min]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from _util import machine_line, print_table

SHAPES = ((576, 1536), (1536, 576), (2048, 2048))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--fmt", choices=("int4", "int8"), default="int4")
    p.add_argument("--tokens", default="1,64")
    p.add_argument("--stat", choices=("median", "min"), default="median")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from mpq.application.multipoint_linear import MultipointLinear
    from mpq.quantizers.multipoint import multipoint_weight
    group = 64 if args.fmt == "int4" else None  # 64 divides every in_features here (576 = 9·64)
    stat = statistics.median if args.stat == "median" else min
    print(machine_line())
    print(f"# {args.fmt}{f' g{group}' if group else ' per channel'}; ms = {args.stat} of {args.repeat} rounds")
    rows = []
    for k_in, n in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(k_in, n).eval()
        w = lin.weight.detach()
        for m in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(m, k_in)
            mods = {}
            with torch.no_grad():
                for k in (1, 2, 3):
                    want = x @ multipoint_weight(w, args.fmt, group, k).t() + lin.bias
                    for layout in ("stacked", "points"):
                        mod = MultipointLinear(lin, args.fmt, group, k, layout)
                        err = float((mod(x) - want).abs().max() / want.abs().max())
                        assert err <= k * 2 ** -7, (k_in, n, m, k, layout, err)
                        mods[k, layout] = mod
                fns = [lambda: lin(x)] + [lambda mod=mod: mod(x) for mod in mods.values()]
                for _ in range(3):
                    for fn in fns:
                        fn()
                times = [[] for _ in fns]
                for _ in range(args.repeat):
                    for i, fn in enumerate(fns):
                        t0 = time.perf_counter()
                        fn()
                        times[i].append(time.perf_counter() - t0)
            ms = [1e3 * stat(t) for t in times]
            base = ms[0]
            t = dict(zip(mods, ms[1:]))
            for k in (1, 2, 3):
                rel = float((w - multipoint_weight(w, args.fmt, group, k)).norm() / w.norm())
                rows.append((f"{k_in}x{n}", m, k, rel, base, t[k, "stacked"], t[k, "points"],
                             base / t[k, "stacked"], base / t[k, "points"], t[k, "points"] / t[k, "stacked"]))
    print_table(("shape", "tokens", "points", "rel err W", "fp32 ms", "stacked ms", "k GEMMs ms", "fp32/stk",
                 "fp32/kG", "kG/stk"), rows, ("", "d", "d", ".2e", ".3f", ".3f", ".3f", ".2f", ".2f", ".2f"))


if __name__ == "__main__":
    main()
