"""``mpq calibrate MODEL``: per-layer sensitivity of a causal LM on text, saved as a SensitivityTable; ``--report``
prints the per-layer table (also for a saved table: ``mpq calibrate --table T.npz --report``). The share of the
model's weights the table covers (and the modules holding the rest) is printed on stderr.

Under ``torchrun --nproc_per_node R -m mpq calibrate ...`` the R processes share the samples (torch.distributed,
the default backend for the machine's devices) and rank 0 writes the table and the report; with ``--device cuda``
each rank runs on its own card (LOCAL_RANK) and the ranks exchange δ over the group's CUDA backend (NCCL)."""
from __future__ import annotations

import argparse
import sys

from ._common import (MODEL_HELP, add_candidates, add_device, add_score, add_text, check_positive, coverage_line,
                      load_model, parse_candidates, read_text, resolve_device)


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="per-layer loss sensitivity of a causal LM on text",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    add_text(p, "to calibrate on")
    add_candidates(p)
    add_score(p)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    p.add_argument("--samples", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per batch (default 4)")
    p.add_argument("--skip-tokens", type=int, default=0, help="tokens to skip at the start of the text")
    p.add_argument("--windows", choices=("spread", "first"), default="spread",
                   help="spread: the samples spread evenly over the whole text (default; a text's first pages, a "
                        "play's cast list, say little of the rest); first: consecutive samples from the start")
    p.add_argument("--quantizer-samples", type=int, default=0, metavar="N",
                   help="further samples, interleaved with and disjoint from the others, that calibrated candidates "
                        "(GPTQ, AWQ, optimized RTN, SmoothQuant) fit their integers on, so that δ is measured on "
                        "samples the integers were not fitted to (default 0: the same samples)")
    p.add_argument("-o", "--output", help="where to save the table (.npz)")
    p.add_argument("--quantized-weights", help="where to save the integers of calibrated candidates (GPTQ, AWQ, "
                   "optimized RTN, SmoothQuant; default: OUTPUT with .qweights.npz) for mpq apply "
                   "--quantized-weights")
    p.add_argument("--table", help="a saved table to report instead of calibrating")
    p.add_argument("--report", action="store_true", help="print the per-layer report")
    p.add_argument("--top", type=int, default=None, help="report only the N most sensitive layers")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before every rank gives up "
                        "(default 1800)")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..artifacts.sensitivity_table import SensitivityTable
    if args.table:
        if args.model:
            raise ValueError("give either a model to calibrate or --table to report, not both")
        table = SensitivityTable.load(args.table)
        line = coverage_line(table.info, args.table)
        if line:
            print(line, file=sys.stderr)
        print(table.report(args.top))
        return 0
    if not args.model:
        raise ValueError("a model is needed (or --table to report a saved table)")
    if not args.output and not args.report:
        raise ValueError("nothing to do: give -o OUTPUT and/or --report")
    check_positive(args, "seq_len", "samples", "batch_size")
    if args.quantizer_samples < 0:
        raise ValueError("--quantizer-samples must be 0 or more")
    candidates = parse_candidates(args.candidates)
    text = read_text(args)
    device = resolve_device(args.device)
    import torch

    from .. import data
    from ..calibration import calibrate
    from ..calibration.distributed import init_from_launcher
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each rank to its current card
    joined = init_from_launcher(args.timeout)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    try:
        model, tok = load_model(args.model)
        model.to(device)
        ids = data.tokenize(tok, text)
        lead = data.leading_tokens(tok)  # the BOS a model such as Gemma expects at the start of every window
        n = args.samples + args.quantizer_samples
        windows = (data.spread_windows(ids[args.skip_tokens:], args.seq_len, n, lead)
                   if args.windows == "spread" else data.token_windows(ids, args.seq_len, n, args.skip_tokens, lead))
        windows, fit = data.split_spread(windows, args.quantizer_samples)
        table = calibrate(model, data.lm_batches(windows, args.batch_size), candidates, progress=not args.quiet,
                          scores=(args.score,), quantizer_batches=data.lm_batches(fit, args.batch_size)
                          if args.quantizer_samples else None)
    finally:
        if joined:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0  # every rank holds the same table: rank 0 alone writes it
    print(coverage_line(table.info, "the table"), file=sys.stderr)
    if args.output:
        table.save(args.output)
        print(f"saved {table!r} to {args.output}", file=sys.stderr)
        if table.quantized_weights is not None:
            path = args.quantized_weights or (args.output[:-4] if args.output.endswith(".npz") else
                                              args.output) + ".qweights.npz"
            table.quantized_weights.save(path)
            print(f"saved {table.quantized_weights!r} to {path}", file=sys.stderr)
    if args.report:
        print(table.report(args.top))
    return 0
