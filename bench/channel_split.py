"""How fast is a Linear split into two precision classes, and can its time be predicted from a few splits?

Per layer shape and token count: the float32 Linear (base), and ChannelSplitLinear (mode "native": one CPU
registry kernel per class, rows restored by one gather) with a fraction f of the output rows in class B and the
rest in class A (default int8 and w4a16_g64; rows dealt at random in 16-row blocks). Measured at the fitting
fractions f ∈ {0, 0.25, 0.5, 0.75, 1}; the time gain T_base − T_split(f) is predicted at held-out fractions
{0.125, 0.375, 0.625, 0.875} by piecewise-linear interpolation between them, and by the two-point line
(1 − f)·gain_A + f·gain_B of the pure layers; both predictions against the measured time. Outputs are checked
against the fake split before timing. One thread; the median (or --stat min: the fastest) of --repeat rounds, each
round timing every configuration once.

    python bench/channel_split.py [--repeat 15] [--classes int8,w4a16_g64] [--tokens 1,64] [--stat median|min]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from _util import machine_line, print_table

SHAPES = ((576, 1536), (1536, 576), (2048, 2048))   # (in, out): SmolLM2's up / down projections, a square one
FIT = (0.0, 0.25, 0.5, 0.75, 1.0)
HELD_OUT = (0.125, 0.375, 0.625, 0.875)


def classes_at(n, f, a, b, seed=0):
    blocks = np.random.default_rng(seed).permutation(n // 16)
    nb = int(round(f * len(blocks)))
    rows_b = np.sort((blocks[:nb, None] * 16 + np.arange(16)).ravel())
    rows_a = np.setdiff1d(np.arange(n), rows_b)
    return {k: v for k, v in ((a, rows_a), (b, rows_b)) if len(v)}


def timed_round(fns):
    out = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--classes", default="int8,w4a16_g64")
    p.add_argument("--tokens", default="1,64")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="per configuration: the median of the rounds, or the fastest (robust to preemption on a "
                        "loaded machine)")
    args = p.parse_args(argv)
    a, b = args.classes.split(",")
    torch.set_num_threads(1)
    from mpq.application.channel_split import ChannelSplitLinear
    print(machine_line())
    print(f"# classes A={a} B={b}; f = share of rows in B; gain = T_base - T_split, in ms ({args.stat} of "
          f"{args.repeat} rounds)")
    rows, errs_interp, errs_line = [], [], []
    for (k, n) in SHAPES:
        for m in (int(t) for t in args.tokens.split(",")):
            torch.manual_seed(0)
            lin = nn.Linear(k, n).eval()
            x = torch.randn(m, k)
            fracs = FIT + HELD_OUT
            mods = {}
            with torch.no_grad():
                for f in fracs:
                    cl = classes_at(n, f, a, b)
                    mods[f] = ChannelSplitLinear(lin, cl, "native")
                    ref = ChannelSplitLinear(lin, cl, "fake")(x)
                    got = mods[f](x)
                    assert float((got - ref).abs().max()) <= 2 ** -6 * float(ref.abs().max()), (k, n, m, f)
                fns = [lambda: lin(x)] + [lambda mod=mods[f]: mod(x) for f in fracs]
                for _ in range(3):
                    timed_round(fns)
                samples = [timed_round(fns) for _ in range(args.repeat)]
            stat = statistics.median if args.stat == "median" else min
            med = [1e3 * stat(s[i] for s in samples) for i in range(len(fns))]
            base, split = med[0], dict(zip(fracs, med[1:]))
            gain = {f: base - t for f, t in split.items()}
            fit_g = [gain[f] for f in FIT]
            for f in HELD_OUT:
                interp = float(np.interp(f, FIT, fit_g))
                line = (1 - f) * gain[0.0] + f * gain[1.0]
                meas = split[f]
                e_i = (base - interp - meas) / meas       # predicted time vs measured time
                e_l = (base - line - meas) / meas
                errs_interp.append(abs(e_i))
                errs_line.append(abs(e_l))
                rows.append((f"{k}x{n}", m, f, base, meas, gain[f], interp, 100 * e_i, line, 100 * e_l))
            for f in FIT:
                rows.append((f"{k}x{n}", m, f, base, split[f], gain[f], float("nan"), float("nan"),
                             float("nan"), float("nan")))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    print_table(("shape", "tokens", "f(B)", "base ms", "split ms", "gain ms", "interp", "err %", "2-point",
                 "err %"), rows, ("", "d", ".3f", ".3f", ".3f", ".3f", ".3f", "+.1f", ".3f", "+.1f"))
    print(f"# held-out |predicted - measured| / measured time: piecewise-linear median "
          f"{100 * statistics.median(errs_interp):.1f}% max {100 * max(errs_interp):.1f}%; two-point median "
          f"{100 * statistics.median(errs_line):.1f}% max {100 * max(errs_line):.1f}% ({len(errs_interp)} splits)")


if __name__ == "__main__":
    main()
