"""What does calibration below the layer cost? mpq.calibrate at granularity "layer" against "channel" and "group:G"
on the same batches, in the same run, interleaved round by round (so a change of the machine's load hits all of
them alike); one thread. Goal: channel (and group) calibration <= 1.3x the layer-level calibration. Also checks,
before timing, that the channel table's groups sum to the layer table's weight δ.

    python bench/calibrate_granularity.py [--model smollm2|tiny] [--batches 2] [--batch-size 4] [--seq-len 128]
                                          [--repeat 3] [--group 16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from _util import machine_line, print_table
from calibrate import load

CANDIDATES = ("fp8", "int8", "w8a16", "w4a16_g64")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--group", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import mpq
    model, batches = load(args)
    print(machine_line())
    print(f"# model={args.model} batches={args.batches}x{args.batch_size}x{args.seq_len} candidates={CANDIDATES}")
    kinds = ("layer", "channel", f"group:{args.group}")

    def run(kind):
        return mpq.calibrate(model, batches, CANDIDATES, progress=False, granularity=kind)

    layer = run("layer")
    for kind in kinds[1:]:
        split = run(kind)
        np.testing.assert_allclose(split.layer_weight_delta(), layer.delta_weight, rtol=1e-9, atol=1e-30)
        print(f"# {kind}: {split}, group δ sums = layer δw (rtol 1e-9)")
    times = {k: [] for k in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            t0 = time.perf_counter()
            run(kind)
            times[kind].append(time.perf_counter() - t0)
    base = statistics.median(times["layer"])
    rows = []
    for kind in kinds:
        t = sorted(times[kind])
        ratios = sorted(a / b for a, b in zip(times[kind], times["layer"]))  # per round: same load
        rows.append((kind, statistics.median(t), t[0], t[-1], statistics.median(t) / base, ratios[0], ratios[-1]))
    print_table(("granularity", "median s", "min s", "max s", "x layer", "round min", "round max"), rows,
                ("", ".2f", ".2f", ".2f", ".3f", ".3f", ".3f"))


if __name__ == "__main__":
    main()
