"""``mpq apply MODEL PLAN``: apply a plan (JSON: {"mapping": {layer: candidate}} or a bare mapping) to a causal LM
and time it against the model as loaded (one thread, median of ``--repeats``), printing both times, the measured
gain and the largest logit difference. ``--mode fake`` checks accuracy; ``--mode native`` runs the real kernels."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("apply", help="apply a plan (fake-quant or native kernels) and time it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("plan", help="JSON file")
    p.add_argument("--mode", default="native", choices=("fake", "native"))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--text", default="hamlet")
    p.add_argument("--random", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..application import apply
    from ..profiling.backends import cpu as cpu_backend
    from ..profiling.timing import time_callable
    from .profiling import example_ids, load_model
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    if not isinstance(plan, dict):
        raise ValueError(f"{args.plan}: expected a JSON object")
    mapping = plan.get("mapping", plan)
    act_scales = plan.get("act_scales")
    model, tok = load_model(args.model)
    ids = example_ids(tok, model, args.seq_len, args.text, args.random)
    new = apply(model, mapping, mode=args.mode, act_scales=act_scales)
    torch.set_num_threads(1)
    with torch.no_grad():
        t = time_callable([lambda: model(ids, use_cache=False), lambda: new(ids, use_cache=False)],
                          args.repeats, 1, cpu_backend.clock())
        diff = (model(ids, use_cache=False).logits - new(ids, use_cache=False).logits).abs().max().item()
    import numpy as np
    base, cand = float(np.median(t[0])), float(np.median(t[1]))
    print(f"layers changed: {sum(1 for c in mapping.values() if c != 'base')}  mode={args.mode}")
    print(f"base {base * 1e3:.2f} ms  plan {cand * 1e3:.2f} ms  gain {(base - cand) * 1e3:+.2f} ms  "
          f"max |logit diff| {diff:.4g}")
    return 0
