"""Which candidates pay on this CPU for this model and phase: each one's fastest admitted implementation timed
against the model's own Linear layers as loaded (float32, or bf16 / fp16) on the inputs they receive in the
phase, for the shape that holds most of the model's multiply-adds. ``mpq run`` uses it to choose its candidates
instead of assuming them.

The layers of that shape are timed in turn, one pass over all of them (up to ``PROBE_BYTES`` of weights),
not one layer again and again: in the model each layer's weights come from memory, not from a cache that the same
layer warmed a moment before. At one token that decides (SmolLM2's 576 x 1536 on an AVX2 EPYC: w4a16 0.75x
fp32 warm, several times faster than fp32 when the weights come from memory)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .backends import get_backend
from .backends.cpu import BASE_FORMATS
from .kernel_choice import choose
from .profiler import make_runner, record_inputs
from .timing import time_callable

POOL = ("int8", "w8a16", "bf16", "fp16", "fp8", "w4a16")
PROBE_BYTES = 256 << 20   # weights per timed pass: past every last-level cache of the CPUs mpq runs on


@dataclass(frozen=True)
class Paying:
    candidate: str
    implementation: str
    speedup: float          # base seconds / candidate seconds on the probed layers (> 1: faster)


def paying_candidates(model: nn.Module, example_input, phase: str = "prefill", pool: Sequence[str] = POOL,
                      min_speedup: float = 1.1, repeats: int = 7) -> tuple[list[Paying], dict]:
    """(candidates of ``pool`` with speedup >= ``min_speedup``, fastest first; what was probed: the first layer
    of the shape, how many layers of it were timed, the shape and every candidate's speedup). One thread, the
    cpu backend's clock and implementations."""
    be = get_backend("cpu")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError("the model has no nn.Linear layer to quantize")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, _ = make_runner(model, example_input, phase)
        inputs = record_inputs(model, list(linears), run)
        # the (K, N) shape with the most multiply-adds over the model, and one layer of it
        macs = Counter()
        for n, m in linears.items():
            macs[(m.in_features, m.out_features)] += m.in_features * m.out_features
        shape = macs.most_common(1)[0][0]
        names = [n for n, m in linears.items() if (m.in_features, m.out_features) == shape]
        lin = linears[names[0]]
        names = names[:max(1, PROBE_BYTES // (lin.weight.element_size() * shape[0] * shape[1]))]
        x = inputs[names[0]]
        base = BASE_FORMATS.get(lin.weight.dtype, str(lin.weight.dtype))
        clock = be.clock()
        speed = {}
        for c in pool:
            if c == base or not be.supported(c) or not _applies(c, lin) or not be.runs(lin, c):
                continue  # (a bf16 model: bf16 is its baseline, not a candidate)
            choice, first = choose(lambda impl, c=c: be.make_module(lin, c, None, impl),
                                   be.implementations(c, lin), x, clock, repeats, 1)
            modules = [first] + [be.make_module(linears[n], c, None, choice.implementation) for n in names[1:]]
            t = time_callable([lambda: [linears[n](inputs[n]) for n in names],
                               lambda: [m(inputs[n]) for m, n in zip(modules, names)]], repeats, 1, clock)
            del modules, first
            med = np.median(t, axis=1)
            speed[c] = Paying(c, choice.implementation, float(med[0] / med[1]))
    finally:
        torch.set_num_threads(old)
    ranked = sorted(speed.values(), key=lambda p: -p.speedup)
    probe = {"layer": names[0], "layers": len(names), "base": base, "rows": int(np.prod(x.shape[:-1])),
             "in_features": shape[0],
             "out_features": shape[1], "phase": phase, "speedups": {p.candidate: p.speedup for p in ranked}}
    return [p for p in ranked if p.speedup >= min_speedup], probe


def _applies(candidate: str, linear: nn.Linear) -> bool:
    from ..candidates import get_candidate
    return get_candidate(candidate).applies_to(linear.weight)
