"""Timing sub-graphs inside the running model (shared by the cpu, cuda and hpu backends).

Each sub-graph's segment is delimited by forward pre-hooks on its ``start`` module (the first module called in
it) and the next sub-graph's start (the last one ends at the model's forward hook). One forward pass therefore
times every sub-graph at once: in round k every sub-graph runs its configuration k (sub-graphs with fewer
configurations run base and are not recorded), and rounds are interleaved over the repeats, so slow drift hits
base and candidates alike. Gain = median(base) − median(config); spread = IQR of the paired per-repeat
differences. Ops between a segment's cut point and its first module call (a residual add written in the parent's
forward, say) are counted in the previous segment: the same for every configuration, so gains are unaffected.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..application import set_module


def iqr(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    if a.size < 2:
        return 0.0
    q1, q3 = np.percentile(a, [25, 75])
    return float(q3 - q1)


class _Marks:
    def __init__(self, n: int, clock):
        self.n = n
        self.clock = clock
        self.t = [None] * (n + 1)

    def reset(self):
        self.t = [None] * (self.n + 1)


def time_in_model(model: nn.Module, run: Callable[[], object], subgraphs, configs: Sequence[np.ndarray],
                  candidates: Sequence[str], modules: dict, clock, repeats: int, warmup: int):
    """Returns (per-subgraph [K_s, repeats] seconds, whole-model [K_max, repeats] seconds).

    modules: {(layer, candidate name): replacement module}; layers keep their original module for "base".
    clock: object with mark() -> token, seconds(t0, t1) -> float and sync().
    """
    named = dict(model.named_modules())
    originals = {l: named[l] for sg in subgraphs for l in sg.layers}
    marks = _Marks(len(subgraphs), clock)
    hooks = []
    starts = {}
    for i, sg in enumerate(subgraphs):
        starts.setdefault(sg.start, []).append(i)
    for name, idxs in starts.items():
        def pre(mod, args, idxs=idxs):
            for i in idxs:
                if marks.t[i] is None:
                    marks.t[i] = clock.mark()
        hooks.append(named[name].register_forward_pre_hook(pre))
        for (layer, _c), repl in modules.items():  # a start that is itself a swapped Linear
            if layer == name:
                hooks.append(repl.register_forward_pre_hook(pre))
    t_begin = [None]

    def root_pre(mod, args, kwargs):
        t_begin[0] = clock.mark()

    def root_post(mod, args, kwargs, out):
        marks.t[-1] = clock.mark()

    hooks.append(model.register_forward_pre_hook(root_pre, with_kwargs=True))
    hooks.append(model.register_forward_hook(root_post, with_kwargs=True))
    kmax = max(len(c) for c in configs)
    seg = [np.full((len(c), repeats), np.nan) for c in configs]
    whole = np.full((kmax, repeats), np.nan)
    current = {}

    def set_config(k):
        for i, sg in enumerate(subgraphs):
            row = configs[i][k] if k < len(configs[i]) else np.zeros(len(sg.layers), dtype=int)
            for layer, j in zip(sg.layers, row):
                want = originals[layer] if j == 0 else modules[(layer, candidates[j])]
                if current.get(layer) is not want:
                    set_module(model, layer, want)
                    current[layer] = want

    try:
        with torch.no_grad():
            for r in range(-warmup, repeats):
                for k in range(kmax):
                    set_config(k)
                    marks.reset()
                    run()
                    clock.sync()
                    if r < 0:
                        continue
                    t = marks.t
                    if t[-1] is None:
                        raise RuntimeError("the model's forward hook did not fire")
                    whole[k, r] = clock.seconds(t_begin[0], t[-1])
                    for i in range(len(subgraphs)):
                        if k >= len(configs[i]):
                            continue
                        if t[i] is None:
                            raise RuntimeError(f"sub-graph {subgraphs[i].name!r}: its start module "
                                               f"{subgraphs[i].start!r} was not called in this phase")
                        nxt = next((t[j] for j in range(i + 1, len(subgraphs) + 1) if t[j] is not None), None)
                        seg[i][k, r] = clock.seconds(t[i], nxt)
    finally:
        for h in hooks:
            h.remove()
        for layer, mod in originals.items():
            set_module(model, layer, mod)
    return seg, whole


def gains_from_times(times: np.ndarray):
    """times [K, R] seconds, row 0 = base: (gain [K], spread [K], noisy [K], base median)."""
    base = times[0]
    med = np.median(times, axis=1)
    gain = med[0] - med
    spread = np.array([iqr(base - times[k]) for k in range(times.shape[0])])
    noisy = spread >= np.abs(gain)
    noisy[0] = False
    gain[0] = 0.0
    spread[0] = 0.0
    return gain, spread, noisy, float(med[0])


def time_callable(fns: Sequence[Callable[[], object]], repeats: int, warmup: int, clock) -> np.ndarray:
    """Interleaved timing of several callables: [len(fns), repeats] seconds."""
    out = np.zeros((len(fns), repeats))
    with torch.no_grad():
        for r in range(-warmup, repeats):
            for i, f in enumerate(fns):
                t0 = clock.mark()
                f()
                t1 = clock.mark()
                clock.sync()
                if r >= 0:
                    out[i, r] = clock.seconds(t0, t1)
    return out


class ThreadClock:
    """CPU time of the calling thread (``time.thread_time_ns``): with one intra-op thread every kernel runs on
    the calling thread, and time spent descheduled while other jobs hold the cores is not counted. The default of
    the cpu backend on a shared machine (research/environment.md §3.4)."""

    def mark(self):
        import time
        return time.thread_time_ns()

    def seconds(self, t0, t1):
        return (t1 - t0) * 1e-9

    def sync(self):
        pass


class PerfClock:
    """Wall clock for synchronous CPU work."""

    def mark(self):
        import time
        return time.perf_counter_ns()

    def seconds(self, t0, t1):
        return (t1 - t0) * 1e-9

    def sync(self):
        pass
