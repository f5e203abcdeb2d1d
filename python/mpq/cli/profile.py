"""``mpq profile MODEL -o GAINS.npz``: partition a causal LM and write its GainTable (.npz), printing its summary
and the share of the model's weights its layers cover.

The example input is the first ``--seq-len`` tokens of the text (``--text FILE...``, ``--shakespeare NAME...``,
by default the Shakespeare text shipped with mpq), or random token ids with ``--random``. Exit code 0; 2 with a
message on bad input; 3 when the backend is absent here."""
from __future__ import annotations

import argparse

from ._common import MODEL_HELP, add_candidates, add_text, check_positive, coverage_line, example_ids, \
    load_model, parse_candidates, read_text

BACKENDS = ("cpu", "cuda", "hpu", "macs", "memory", "ebops")  # mpq.profiling.backends.BACKENDS, without importing torch


def register(sub) -> None:
    p = sub.add_parser("profile", help="time gain of every sub-graph configuration (GainTable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--output", required=True, help="GainTable file (.npz)")
    add_candidates(p)
    p.add_argument("--backend", default="cpu", choices=BACKENDS,
                   help="cpu, cuda, hpu: timed; macs, memory: theoretical (default cpu)")
    p.add_argument("--phase", default="prefill", choices=("prefill", "decode"))
    p.add_argument("--seq-len", type=int, default=128, help="tokens of the example input (default 128)")
    add_text(p, "whose first --seq-len tokens are the example input", random=True)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-configs", type=int, default=64)
    p.add_argument("--device", default=None, help="peak-rate table of the macs backend")
    p.add_argument("--no-per-layer", action="store_true", help="skip timing each Linear alone")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..profiling import profile
    candidates = parse_candidates(args.candidates)
    check_positive(args, "seq_len")
    text = None if args.random else read_text(args)
    model, tok = load_model(args.model)
    ids = example_ids(tok, model, args.seq_len, text)
    table = profile(model, ids, candidates, backend=args.backend, phase=args.phase, repeats=args.repeats,
                    max_configs=args.max_configs, per_layer=not args.no_per_layer, device=args.device)
    table.save(args.output)
    print(table.summary())
    print(coverage_line(table.meta, "the gain table"))
    print(f"wrote {args.output}")
    return 0
