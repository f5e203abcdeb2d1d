"""Which implementation runs a candidate on a layer: the fastest of those the backend admits on this machine,
timed on the layer's own recorded input (so per layer shape and phase), interleaved and paired like every other
timing of mpq. Layers of one shape share one measurement."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from .timing import time_callable


@dataclass
class Choice:
    implementation: Optional[str]        # None: the backend has one built-in kernel per candidate
    seconds: Mapping[str, float]         # median seconds of every implementation timed (empty when only one)


# an implementation whose first timed call is this many times the fastest first call is out without more repeats
# (torch._int_mm's reference loop on CPUs without VNNI is 10-50x slower: repeating it would cost minutes)
CLEARLY_SLOWER = 3.0


def choose(make: Callable[[Optional[str]], torch.nn.Module], names, x: torch.Tensor, clock, repeats: int,
           warmup: int) -> tuple[Choice, torch.nn.Module]:
    """Times ``make(name)(x)`` for every implementation name and returns the fastest with its module; one name
    (or none) is taken without timing. Every implementation is timed once (after ``warmup`` calls); those
    ``CLEARLY_SLOWER`` than the fastest keep that figure, the others are timed ``repeats`` times, interleaved."""
    names = list(names)
    if len(names) <= 1:
        name = names[0] if names else None
        return Choice(name, {}), make(name)
    modules = [make(n) for n in names]
    fns = [lambda m=m: m(x) for m in modules]
    first = time_callable(fns, 1, warmup, clock)[:, 0]
    close = [i for i in range(len(names)) if first[i] <= CLEARLY_SLOWER * first.min()]
    med = first.copy()
    if len(close) > 1:
        med[close] = np.median(time_callable([fns[i] for i in close], repeats, 0, clock), axis=1)
    best = int(np.argmin(med))
    return Choice(names[best], {n: float(s) for n, s in zip(names, med)}), modules[best]


def shape_key(linear: torch.nn.Linear, x: torch.Tensor, candidate: str, act_scale) -> tuple:
    """What decides the fastest implementation: the candidate, the GEMM's M, K, N and whether a bias is added."""
    rows = int(np.prod(x.shape[:-1]))
    return candidate, rows, linear.in_features, linear.out_features, linear.bias is not None, act_scale is None
