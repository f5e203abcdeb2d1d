"""How mpq's cost grows with the model (issue 19, item 4): calibrate, partition, profile (cpu backend) and select
on Llama-shaped models built from configs (random weights: costs do not depend on the values), at several depths
and widths, one thread. Each model runs in its own process, so that each step's peak memory is its own (the peak
resident set is reset before every step through /proc/self/clear_refs). Reported per model and step: seconds and
the peak resident memory above the memory held before the step; for profile, the number of forward passes of the
whole model it ran and the number of configurations it timed; for select, the median of 21 solves. Then, per step
and width, the exponent b of time ∝ layers^b fitted by least squares on logs (1: linear in depth), and the
exponent of the profile's passes (0: independent of depth).

    python bench/scaling.py [--grid 256:2,4,8,16,32 512:2,4,8,16,32 1024:2,4,8,16 2048:2,4]
                            [--tokens 64] [--samples 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CANDIDATES = ("int8", "w8a16")
STEPS = ("calibrate", "partition", "profile", "select")


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def measured(fn):
    """(result, seconds, peak MiB above the resident memory before): the peak is reset first (Linux only)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, max(0, rss_kib("VmHWM") - before) / 1024


def child(width: int, layers: int, tokens: int, samples: int, repeats: int) -> dict:
    import torch
    import transformers

    import mpq
    from mpq.data import lm_batches
    torch.set_num_threads(1)
    heads = max(1, width // 64)
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=width, intermediate_size=(width * 8 // 3) // 64 * 64,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=max(1, heads // 4), max_position_embeddings=tokens)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (samples, tokens), generator=g)
    batches = lm_batches(ids, 2)
    example = {"input_ids": ids[:1]}
    row = {"width": width, "layers": layers, "params": sum(p.numel() for p in model.parameters())}
    table, row["calibrate_s"], row["calibrate_mib"] = measured(
        lambda: mpq.calibrate(model, batches, CANDIDATES, progress=False))
    sgs, row["partition_s"], row["partition_mib"] = measured(lambda: mpq.partition(model, example))
    passes = [0]
    hook = model.register_forward_pre_hook(lambda m, a, k: passes.__setitem__(0, passes[0] + 1), with_kwargs=True)
    gains, row["profile_s"], row["profile_mib"] = measured(
        lambda: mpq.profile(model, example, CANDIDATES, backend="cpu", subgraphs=sgs, repeats=repeats, warmup=1,
                            per_layer=False))
    hook.remove()
    row["profile_passes"] = passes[0]
    row["configurations"] = int(sum(len(sg.configs) for sg in gains.subgraphs))
    row["subgraphs"] = len(gains.subgraphs)
    budget = float(np.nansum(table.mse)) * 0.1
    solves = []
    for _ in range(21):
        _, s, _ = measured(lambda: mpq.select(table, gains, max_loss_mse=budget))
        solves.append(s)
    row["select_s"] = statistics.median(solves)
    _, _, row["select_mib"] = measured(lambda: mpq.select(table, gains, max_loss_mse=budget))
    return row


def slope(x, y) -> float:
    x, y = np.log(np.asarray(x, float)), np.log(np.maximum(np.asarray(y, float), 1e-12))
    return float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", nargs="+", default=["256:2,4,8,16,32", "512:2,4,8,16,32", "1024:2,4,8,16", "2048:2,4"],
                   help="WIDTH:LAYERS,LAYERS,... entries")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2, type=int, metavar=("WIDTH", "LAYERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.tokens, args.samples, args.repeats)), flush=True)
        return
    sys.path.insert(0, str(HERE))
    from _util import machine_line
    print(machine_line())
    rows = []
    for entry in args.grid:
        width, depths = entry.split(":")
        for layers in (int(d) for d in depths.split(",")):
            r = subprocess.run([sys.executable, __file__, "--child", width, str(layers), "--tokens", str(args.tokens),
                                "--samples", str(args.samples), "--repeats", str(args.repeats)],
                               capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if r.returncode != 0:
                raise SystemExit(f"width {width}, {layers} layers failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"# width {width}, {layers} layers done", file=sys.stderr, flush=True)
    print(f"# Llama-shaped models, vocab 4096, {args.samples} x {args.tokens} calibration tokens, candidates "
          f"{', '.join(CANDIDATES)}, profile: cpu backend, {args.repeats} repeats, one thread")
    print("| width | layers | params (M) | calibrate s | MiB | partition s | MiB | profile s | MiB | profile passes | "
          "configurations | select ms | MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['layers']} | {r['params'] / 1e6:.1f} | {r['calibrate_s']:.2f} | "
              f"{r['calibrate_mib']:.0f} | {r['partition_s']:.2f} | {r['partition_mib']:.0f} | {r['profile_s']:.2f} | "
              f"{r['profile_mib']:.0f} | {r['profile_passes']} | {r['configurations']} | {r['select_s'] * 1e3:.2f} | "
              f"{r['select_mib']:.0f} |")
    print("| width | exponent of layers: calibrate | partition | profile | select | profile passes |")
    print("|---|---|---|---|---|---|")
    for width in sorted({r["width"] for r in rows}):
        rs = [r for r in rows if r["width"] == width]
        if len(rs) < 2:
            continue
        x = [r["layers"] for r in rs]
        fits = [slope(x, [r[f"{s}_s"] for r in rs]) for s in STEPS] + [slope(x, [r["profile_passes"] for r in rs])]
        print(f"| {width} | " + " | ".join(f"{f:.2f}" for f in fits) + " |")


if __name__ == "__main__":
    main()
