"""What does solving GPTQ from the unquantized model's inputs cost? mpq solves every (layer, candidate) once from
one pass of the base model (the predecessors' precision is what selection decides, so it is unknown at
calibration); GPTQ as published runs sequentially, each decoder block's Hessians taken from the model whose
earlier blocks are already quantized. Both quantize every decoder Linear of SmolLM2-135M (lm_head, tied to the
embeddings, stays) to the same candidate; held-out loss MSE against the base model (mean_n (ℓ_n − ℓ_n^base)²,
± standard error), perplexity, and RTN and AWQ (also from base inputs) beside them. One thread.

    python bench/gptq_base_vs_sequential.py [--candidate w4a16_g64] [--calib 16] [--eval 32] [--seq-len 128]
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine_line  # noqa: E402

import mpq  # noqa: E402
from mpq.artifacts.quantized_weights import QuantizedWeight, QuantizedWeights, weight_sha256  # noqa: E402
from mpq.data import lm_batches, token_windows, tokenize  # noqa: E402
from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses  # noqa: E402
from mpq.quantizers import InputStats, awq_scales, collect_input_stats, gptq_quantize  # noqa: E402


class _Stop(Exception):
    pass


def block_layers(model):
    """[(block index, [(name, Linear)])] of the decoder blocks, in order."""
    out = []
    for b, block in enumerate(model.model.layers):
        prefix = f"model.layers.{b}."
        out.append((b, [(prefix + n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]))
    return out


def stats_until(model, layers, batches, stop_block):
    """Input statistics (with H) of ``layers``, each forward stopped after ``stop_block`` (all that is needed)."""
    stats = {}
    for i, (_, m) in enumerate(layers):
        stats[i] = InputStats(m.in_features)
        stats[i].hessian = torch.zeros(m.in_features, m.in_features)
    handles = [m.register_forward_pre_hook(lambda mod, a, i=i: stats[i].add(a[0])) for i, (_, m) in enumerate(layers)]

    def stop(module, args, out):
        raise _Stop
    handles.append(stop_block.register_forward_hook(stop))
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidate", default="w4a16_g64")
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--eval", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cand = mpq.CANDIDATES[args.candidate]
    print(machine_line())
    model, tok = load_model(RunSettings())
    calib = token_windows(tokenize(tok, demo_text("calibration")), args.seq_len, args.calib)
    evalw = token_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval)
    batches = lm_batches(calib, 4)
    blocks = block_layers(model)
    named = [nm for _, layers in blocks for nm in layers]
    sha = {n: weight_sha256(m.weight) for n, m in named}
    fmt, g = cand.weight_format, cand.group_size

    def store(weights, name):
        return QuantizedWeights({(n, name): q for n, q in weights.items()})

    t0 = time.perf_counter()
    stats = collect_input_stats(model, named, batches, "cpu", set(range(len(named))))
    t_stats = time.perf_counter() - t0
    base_gptq, awq = {}, {}
    t0 = time.perf_counter()
    for i, (n, m) in enumerate(named):
        c, s = gptq_quantize(m.weight.detach(), stats[i].hessian, fmt, g)
        base_gptq[n] = QuantizedWeight(c, s, None, sha[n])
    t_gptq = time.perf_counter() - t0
    for i, (n, m) in enumerate(named):
        c, s, xs, _, _ = awq_scales(m.weight.detach(), stats[i].hessian, stats[i].abs_mean, fmt, g)
        awq[n] = QuantizedWeight(c, s, xs, sha[n])
    del stats

    t0 = time.perf_counter()
    work = copy.deepcopy(model)  # blocks < b hold their sequentially quantized weights
    seq = {}
    for b, layers in blocks:
        wl = [(n, dict(work.named_modules())[n]) for n, _ in layers]
        st = stats_until(work, wl, batches, work.model.layers[b])
        for i, (n, m) in enumerate(layers):
            c, s = gptq_quantize(m.weight.detach(), st[i].hessian, fmt, g)
            seq[n] = QuantizedWeight(c, s, None, sha[n])
        with torch.no_grad():
            for n, m in wl:
                m.weight.copy_(seq[n].dequantized())
    t_seq = time.perf_counter() - t0
    del work

    base = per_sample_losses(model, evalw, 4)
    rows = []
    variants = [("RTN", args.candidate, None), (f"GPTQ, base inputs (mpq)", args.candidate + "_gptq",
                                                 store(base_gptq, args.candidate + "_gptq")),
                ("GPTQ, sequential", args.candidate + "_gptq", store(seq, args.candidate + "_gptq")),
                ("AWQ, base inputs (mpq)", args.candidate + "_awq", store(awq, args.candidate + "_awq"))]
    for label, cname, qw in variants:
        q = mpq.apply(model, {n: cname for n, _ in named}, quantized_weights=qw)
        losses = per_sample_losses(q, evalw, 4)
        d2 = (losses - base) ** 2
        rows.append((label, float(d2.mean()), float(d2.std() / math.sqrt(len(d2))), math.exp(float(losses.mean()))))
        del q
    print(f"# SmolLM2-135M, {len(named)} decoder Linear layers in {args.candidate}; calibration {args.calib} x "
          f"{args.seq_len} tokens (mpq demo calibration text), held-out {args.eval} x {args.seq_len} (demo "
          f"evaluation text); base ppl {math.exp(float(base.mean())):.2f}")
    print(f"# seconds: statistics pass {t_stats:.1f}, GPTQ solves from base inputs {t_gptq:.1f}, "
          f"sequential GPTQ (passes + solves) {t_seq:.1f}")
    print(f"{'variant':<28} {'loss MSE':>10} {'± s.e.':>9} {'ppl':>8} {'/ sequential':>12}")
    ref = rows[2][1]
    for label, mse, se, ppl in rows:
        print(f"{label:<28} {mse:>10.4g} {se:>9.2g} {ppl:>8.2f} {mse / ref:>12.3f}")


if __name__ == "__main__":
    main()
