"""Held-out loss of uniform plans: every decoder Linear (lm_head kept) in one candidate, for each candidate named,
with the integers of a saved calibration (``selection_quality.py --budgets`` writes ``budgets_qweights.npz``).
Measured as the budget runs measure: loss MSE mean_n (ℓ_q,n − ℓ_n)² ± its standard error and perplexity, on
``--eval-windows`` windows of ``--seq-len`` tokens spread over the demo evaluation text. One thread.

    python bench/uniform_plans.py QWEIGHTS.npz --candidates w4a16_g64,w4a16_g64_awq [--model smollm2]
                                  [--eval-windows 32] [--seq-len 128]
"""
from __future__ import annotations

import argparse
import time

import torch

from _util import machine_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("qweights", help="a saved QuantizedWeights (.npz) of the model's calibration")
    p.add_argument("--candidates", required=True, help="comma-separated candidate names")
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3, a Hugging Face folder or a .gguf file")
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args(argv)
    from mpq.application.swap import apply
    from mpq.artifacts.quantized_weights import QuantizedWeights
    from mpq.data import leading_tokens, spread_windows, tokenize
    from mpq.demo_run import RunSettings, demo_text, load_model, per_sample_losses
    torch.set_num_threads(1)
    print(machine_line())
    model, tok = load_model(RunSettings(model=None if args.model == "smollm2" else args.model))
    model.eval()
    held = spread_windows(tokenize(tok, demo_text("evaluation")), args.seq_len, args.eval_windows,
                          leading_tokens(tok))
    qw = QuantizedWeights.load(args.qweights)
    base = per_sample_losses(model, held, 4)
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    print(f"# {args.model}: {len(layers)} decoder Linears, lm_head kept; held out {args.eval_windows} x "
          f"{args.seq_len} tokens; base perplexity {float(base.mean().exp()):.2f}")
    print("| candidate | loss MSE ± se | ppl | s |\n|---|---|---|---|")
    for cand in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        t0 = time.perf_counter()
        losses = per_sample_losses(apply(model, {l: cand for l in layers}, quantized_weights=qw), held, 4)
        sq = (losses - base) ** 2
        print(f"| {cand} | {float(sq.mean()):.4g} ± {float(sq.std() / len(sq) ** 0.5):.2g} | "
              f"{float(losses.mean().exp()):.2f} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
