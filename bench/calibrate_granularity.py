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


def select_at_scale(model, batches, layer, splits):
    """The least predicted loss MSE at 5 and 6 average weight bits (mpq.select(min_gain=the bytes to save), memory
    backend): groups, wall time of mpq.select, predicted loss MSE, for the layer table and each split table."""
    import mpq
    gains = mpq.profile(model, {k: v[:1] for k, v in batches[0].items()}, candidates=CANDIDATES[2:],
                        backend="memory")
    weights = sum(int(sh[1]) * int(sh[2]) for sh in gains.shapes["layers"].values())
    rows = []
    for bits in (5.0, 6.0):
        need = gains.baseline_seconds - bits * weights / 8   # bytes to save (the memory backend's baseline: bytes)
        for kind, table in (("layer", layer), *splits.items()):
            groups = len(table.layers) if kind == "layer" else int(table.offsets[-1])
            t0 = time.perf_counter()
            try:
                plan = mpq.select(table, gains, min_gain=need)
            except ValueError as e:  # below the least bits these candidates reach
                rows.append((kind, bits, groups, time.perf_counter() - t0, float("nan"), str(e)[:40]))
                continue
            rows.append((kind, bits, groups, time.perf_counter() - t0, plan.predicted_loss_mse,
                         plan.solver["status"]))
    print("# least predicted loss MSE at b average weight bits (w8a16 / w4a16_g64 / base): mpq.select(min_gain=...)")
    print_table(("granularity", "avg bits", "groups", "select s", "loss MSE", "status"), rows,
                ("", ".1f", "d", ".3f", ".4g", ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--select", action="store_true", help="also solve each table at a few average-bit limits "
                   "(memory backend) and print the solver's time and the plans' predicted loss MSE")
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
    splits = {}
    for kind in kinds[1:]:
        splits[kind] = split = run(kind)
        np.testing.assert_allclose(split.layer_weight_delta(), layer.delta_weight, rtol=1e-9, atol=1e-30)
        print(f"# {kind}: {split}, group δ sums = layer δw (rtol 1e-9)")
    if args.select:
        select_at_scale(model, batches, layer, splits)
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
