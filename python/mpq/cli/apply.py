"""``mpq apply MODEL PLAN``: apply a plan to a causal LM and time it against the model as loaded (one thread,
median of ``--repeats``), printing both times, the measured gain and the largest logit difference. ``--mode fake``
checks accuracy; ``--mode native`` runs the real kernels.

PLAN: a plan file from ``mpq select`` (it carries the calibrated activation scales of static candidates such as
int8_static), plan I of a Pareto front file from ``mpq select --pareto`` with ``--index I`` (``mpq report FRONT``
lists them), or a hand-written JSON object {layer name: candidate name} ("base" keeps a layer); a bare mapping
carries no activation scales, so it cannot use static candidates. The example input is the first ``--seq-len``
tokens of the text (``--text FILE...``, ``--shakespeare NAME...``, by default the Shakespeare text shipped with
mpq), or random token ids with ``--random``.

``--save FOLDER --format F`` writes the checkpoint instead of timing (``mpq.save_quantized``): compressed-tensors
(weights compressed, for transformers / vLLM), torchao (quantized by torchao, for transformers), or inc (INC's
FP8 JSON and the max-abs measurements of ``--samples`` windows of ``--seq-len`` tokens of the text)."""
from __future__ import annotations

import argparse
from typing import Optional

from ._common import MODEL_HELP, add_text, check_positive, example_ids, load_model, read_text

# mpq.application.checkpoints.FORMATS, named here so that building the parser does not import torch
FORMATS = ("compressed-tensors", "inc", "torchao")


def register(sub) -> None:
    p = sub.add_parser("apply", help="apply a plan (fake-quant or native kernels) and time it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("plan", help="plan .json (mpq select), a Pareto front .json (with --index), or a JSON object "
                   "{layer: candidate}")
    p.add_argument("--index", type=int, default=None, metavar="I",
                   help="of a Pareto front file (mpq select --pareto): apply plan I (0 = the first)")
    p.add_argument("--mode", default="native", choices=("fake", "native"))
    p.add_argument("--seq-len", type=int, default=128, help="tokens of the example input (default 128)")
    add_text(p, "whose first --seq-len tokens are the example input", random=True)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--save", metavar="FOLDER", help="write the plan as a checkpoint into FOLDER (new or empty) "
                   "instead of timing it")
    p.add_argument("--format", choices=FORMATS, help="the checkpoint format of --save")
    p.add_argument("--samples", type=int, default=16,
                   help="--format inc: calibration windows of --seq-len tokens to measure (default 16)")
    p.add_argument("--quantized-weights", help="the .qweights.npz mpq calibrate saved: the integers of calibrated "
                   "candidates (GPTQ, AWQ, SmoothQuant) the plan uses")
    p.set_defaults(func=main)


def load_plan(path: str, index: Optional[int] = None, need_scales: bool = True):
    """A Plan from a plan file, plan ``index`` of a Pareto front file, or a bare {layer: candidate} mapping, its
    candidates checked (before the model is loaded); ``need_scales``: static candidates must carry their calibrated
    scale (not for INC, which takes them from its measurements). @raises ValueError naming what is wrong."""
    from ..artifacts.io import read_json
    from ..artifacts.plan import Plan
    from ..candidates import get_candidate
    d = read_json(path, "plan")
    front = isinstance(d, list) and all(isinstance(p, dict) for p in d)
    if front or index is not None or (isinstance(d, dict) and "format" in d):
        plan = Plan.from_json(d, source=path, index=index)
    elif isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
        plan = Plan(d, float("nan"), float("nan"))
    else:
        raise ValueError(f"{path}: neither a plan file (mpq select) nor a JSON object {{layer: candidate}}")
    for layer, cname in plan.quantized.items():
        if need_scales and get_candidate(cname).act_static and layer not in plan.act_scales:
            raise ValueError(f"{path}: layer {layer!r}: candidate {cname!r} needs a calibrated activation scale "
                             "and the plan has none (plans from mpq select carry them; a bare mapping cannot)")
    return plan


def main(args) -> int:
    check_positive(args, "seq_len", "repeats", "samples")
    if (args.save is None) != (args.format is None):
        raise ValueError("--save FOLDER and --format F go together")
    plan = load_plan(args.plan, args.index, need_scales=args.format != "inc")
    if args.save:
        return save(args, plan)
    text = None if args.random else read_text(args)
    import numpy as np
    import torch

    from ..application import apply
    from ..profiling.backends import get_backend
    from ..profiling.timing import time_callable
    model, tok = load_model(args.model)
    ids = example_ids(tok, model, args.seq_len, text)
    from ..candidates import get_candidate
    needs = sorted({c for c in plan.quantized.values() if get_candidate(c).calibrated_weight})
    if needs and not args.quantized_weights:
        raise ValueError(f"candidates {needs} run integers chosen in calibration: pass --quantized-weights (the "
                         ".qweights.npz that mpq calibrate saved)")
    new = apply(model, plan, mode=args.mode, quantized_weights=_quantized_weights(args))
    torch.set_num_threads(1)
    with torch.no_grad():
        t = time_callable([lambda: model(ids, use_cache=False), lambda: new(ids, use_cache=False)],
                          args.repeats, 1, get_backend("cpu").clock())
        diff = (model(ids, use_cache=False).logits - new(ids, use_cache=False).logits).abs().max().item()
    base, cand = float(np.median(t[0])), float(np.median(t[1]))
    print(f"layers changed: {len(plan.quantized)}  mode={args.mode}")
    print(f"base {base * 1e3:.2f} ms  plan {cand * 1e3:.2f} ms  gain {(base - cand) * 1e3:+.2f} ms  "
          f"max |logit diff| {diff:.4g}")
    return 0


def _quantized_weights(args):
    """The --quantized-weights store (the integers of calibrated candidates), or None."""
    if not args.quantized_weights:
        return None
    from ..artifacts.quantized_weights import QuantizedWeights
    return QuantizedWeights.load(args.quantized_weights)


def save(args, plan) -> int:
    from ..application.checkpoints import save_quantized
    text = None if args.random else read_text(args)
    model, tok = load_model(args.model)
    batches = None
    if args.format == "inc":
        from .. import data
        if text is None:
            raise ValueError("--format inc measures the calibration text: give --text or --shakespeare, not --random")
        windows = data.spread_windows(data.tokenize(tok, text), args.seq_len, args.samples,  # as mpq calibrate
                                      data.leading_tokens(tok))
        batches = data.lm_batches(windows, 4)
    folder = save_quantized(model, plan, args.save, args.format, batches=batches, tokenizer=tok,
                            quantized_weights=_quantized_weights(args))
    print(f"{args.format}: {folder} ({len(plan.quantized)} layers quantized)")
    return 0
