"""Distributed calibration speed: mpq.calibrate on 2 gloo ranks (1 thread each) against 1 process (1 thread) on
the same batches of a Llama-shaped model built from a config, and whether both give the same table. Goal: the
2 ranks >= 1.7x faster.

Each repeat times the single process here, then starts 2 rank processes which time their calibrate call between
two barriers (the slower rank counts; process start, imports and a warm-up call are not timed). Medians over the
repeats, of wall time (what a user waits) and of CPU time (what the split costs, less disturbed by other load).
A third setup is the ceiling this machine allows: 2 independent processes started together, each calibrating half
of the batches in one process of its own (no process group, nothing exchanged). Where the two vCPUs slow each
other down (shared core, cache or memory bandwidth), that ceiling is below 2x, and the 2 ranks' speedup over it is
what distribution itself costs.

    python bench/distributed.py [--batches 8] [--batch-size 2] [--seq-len 128] [--hidden 256] [--layers 4]
                                [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _util import machine_line, print_table

HERE = Path(__file__).resolve().parent
CANDIDATES = ("int8", "int8_static", "w4a16")


def build(args):
    import transformers

    from mpq import data
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                                   num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                                   num_key_value_heads=max(1, args.hidden // 128), bos_token_id=0, eos_token_id=1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    n = args.batches * args.batch_size
    ids = torch.randint(0, cfg.vocab_size, (n * args.seq_len,), generator=g)
    return model, data.lm_batches(data.token_windows(ids, args.seq_len, n), args.batch_size)


def calibrate(model, batches):
    import mpq
    return mpq.calibrate(model, batches, CANDIDATES, progress=False)


def rank_main(args):
    """One rank: the timed calibrate call between barriers; writes its seconds (and rank 0 the table)."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    model, batches = build(args)
    dist.init_process_group("gloo")
    calibrate(model, batches[:2])  # warm-up, as the single process has (first-call costs are not the split's)
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    table = calibrate(model, batches)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    dist.barrier()
    out = Path(args.out)
    (out / f"seconds{dist.get_rank()}.json").write_text(json.dumps([seconds, cpu]))
    if dist.get_rank() == 0:
        table.save(out / "table.npz")
    dist.destroy_process_group()


def half_main(args):
    """One of 2 independent halves: started together with the other by a barrier, then calibrates every other
    batch alone (the group is gone before the timed call, so calibrate sees no distributed run)."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    model, batches = build(args)
    calibrate(model, batches[:2])  # warm-up
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    t0, c0 = time.perf_counter(), time.process_time()
    calibrate(model, batches[rank::2])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    (Path(args.out) / f"seconds{rank}.json").write_text(json.dumps([seconds, cpu]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(args, out: Path, mode: str = "--rank-of-two") -> tuple[float, float]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, mode, "--out", str(out)] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("batches", "batch_size", "seq_len", "hidden", "layers")]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r))) for r in range(2)]
    if any(p.wait(timeout=1800) for p in procs):
        raise SystemExit("a rank failed")
    wall, cpu = zip(*(json.loads((out / f"seconds{r}.json").read_text()) for r in range(2)))
    return max(wall), max(cpu)  # the slower rank


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rank-of-two", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--half-of-two", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_of_two:
        return rank_main(args)
    if args.half_of_two:
        return half_main(args)

    torch.set_num_threads(1)
    model, batches = build(args)
    print(machine_line())
    print(f"# Llama hidden {args.hidden}, {args.layers} layers; {args.batches} batches of {args.batch_size} x "
          f"{args.seq_len} tokens; candidates {', '.join(CANDIDATES)}; gloo, 1 thread per process")
    calibrate(model, batches[:1])  # warm-up
    one, two, one_cpu, two_cpu, half, half_cpu = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):  # interleaved, so that the machine's load falls on all alike
            t0, c0 = time.perf_counter(), time.process_time()
            single = calibrate(model, batches)
            one.append(time.perf_counter() - t0)
            one_cpu.append(time.process_time() - c0)
            out = Path(tmp) / str(rep)
            out.mkdir()
            wall, cpu = two_ranks(args, out)
            two.append(wall)
            two_cpu.append(cpu)
            (out / "halves").mkdir()
            wall, cpu = two_ranks(args, out / "halves", mode="--half-of-two")
            half.append(wall)
            half_cpu.append(cpu)
        from mpq import SensitivityTable
        shared = SensitivityTable.load(Path(tmp) / "0" / "table.npz")
    same = (shared.data_fingerprint == single.data_fingerprint and shared.n_samples == single.n_samples
            and np.allclose(shared.delta, single.delta, rtol=1e-6, atol=0)
            and np.array_equal(shared.act_scales, single.act_scales, equal_nan=True))
    rel = float(np.nanmax(np.abs(shared.delta - single.delta) / np.maximum(np.abs(single.delta), 1e-300)))
    med = statistics.median
    rows = [("1 process", med(one), max(one) - min(one), 1.0, med(one_cpu), 1.0),
            ("2 ranks", med(two), max(two) - min(two), med(one) / med(two), med(two_cpu), med(one_cpu) / med(two_cpu)),
            ("2 independent halves (ceiling)", med(half), max(half) - min(half), med(one) / med(half), med(half_cpu),
             med(one_cpu) / med(half_cpu))]
    # wall time is what a user waits; the slower rank's CPU time is what the split costs without the others' load
    print_table(["setup", "wall_s", "spread_s", "speedup", "cpu_s", "cpu_ratio"], rows,
                ["s", ".2f", ".2f", ".2f", ".2f", ".2f"])
    print(f"# same table: {same} (max relative difference of δ {rel:.1e}); goal speedup >= 1.7: "
          f"{'met' if rows[1][3] >= 1.7 else 'NOT met'}; 2 ranks reach {med(half) / med(two):.0%} of the ceiling; "
          f"{machine_line().split()[-1]} at the end")
    if not same:
        raise SystemExit("the 2-rank table differs from the single-process table")


if __name__ == "__main__":
    main()
