"""Timing sub-graphs inside the running model (shared by the cpu, cuda and hpu backends).

Each sub-graph's segment is delimited by forward pre-hooks on its ``start`` module (the first module called in
it) and the next sub-graph's start (the last one ends at the model's forward hook). One forward pass therefore
times every sub-graph at once. Ops between a segment's cut point and its first module call (a residual add written
in the parent's forward, say) are counted in the previous segment: the same for every configuration, so gains are
unaffected.

Which configuration runs where: a repeat is one all-base pass and K_max mixed passes. In mixed pass k of repeat
r, sub-graph i runs configuration (k + o_ri) mod K_max (base, unrecorded, when that is past its own K_i), with
o_ri drawn at random per sub-graph and repeat. So every quantized configuration is timed once per repeat, among
neighbours that run a random mix of configurations, base included, as in a real plan; and the configurations a
pass combines change from repeat to repeat. A sub-graph's base time comes from the all-base pass, the model a plan
replaces. Measured on SmolLM2 (bench/RESULTS.md), both halves matter: a base segment does not run at the same
speed among quantized neighbours as in the unquantized model (prefill: 5–19 ms slower, summed over the 61
sub-graphs of a 320–380 ms pass), and taking base from the mixed passes doubled the median error of random plans
on the same samples (prefill 30% against 8–15%, decode 9.2% against 5.8%; bench/timing_base_source.py). And
quantized segments run faster in all-quantized passes than among base neighbours, so leaving base out of the
mixed passes over-predicted plans with big gains by 13–20 ms.
Why not "configuration k in every sub-graph": on a shared machine most of the noise is common to a whole pass
(the host slows every segment at once); with aligned rounds, that noise is shared by all sub-graphs' samples of
the same configuration, and a plan's prediction (a sum over ~60 sub-graphs) adds it up coherently instead of
averaging it out.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..models import set_module


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
                  candidates: Sequence[str], modules: dict, clock, repeats: int, warmup: int, seed: int = 0):
    """Times every configuration of every sub-graph: the all-base pass and mixed passes (see module doc).

    Returns (seg, base_whole, passes, base_mixed): seg[i] [K_i, repeats] seconds of sub-graph i in each
    configuration (row 0, base, from the all-base pass of the same repeat); base_whole [repeats] seconds of the
    all-base pass; passes = (assignment [repeats, K_max, n_subgraphs]: the configuration each sub-graph ran in
    each mixed pass, -1 where it ran base as a filler; whole [repeats, K_max] seconds of those passes);
    base_mixed [n_subgraphs, repeats] seconds of each sub-graph's base (configuration 0) inside a mixed pass, for
    diagnostics (how much slower base runs among quantized neighbours).
    modules: {(layer, candidate name): replacement module}; layers keep their original module for "base".
    clock: object with mark() -> token, seconds(t0, t1) -> float and sync().
    """
    named = dict(model.named_modules())
    originals = {l: named[l] for sg in subgraphs for l in sg.layers}
    n = len(subgraphs)
    marks = _Marks(n, clock)
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
    n_cfg = np.array([len(c) for c in configs])
    kmax = int(n_cfg.max())
    seg = [np.full((len(c), repeats), np.nan) for c in configs]
    base_whole = np.full(repeats, np.nan)
    assignment = np.full((repeats, kmax, n), -1, dtype=np.int32)
    whole = np.full((repeats, kmax), np.nan)
    base_mixed = np.full((n, repeats), np.nan)
    current = {}
    rng = np.random.default_rng(seed)

    def set_config(choice):
        for i, sg in enumerate(subgraphs):
            row = configs[i][choice[i]] if choice[i] >= 0 else np.zeros(len(sg.layers), dtype=int)
            for layer, j in zip(sg.layers, row):
                want = originals[layer] if j == 0 else modules[(layer, candidates[j])]
                if current.get(layer) is not want:
                    set_module(model, layer, want)
                    current[layer] = want

    def timed_pass(choice, rows, r):
        """Runs one pass with `choice` installed; rows {sub-graph: the array whose column r takes its time}."""
        set_config(choice)
        marks.reset()
        run()
        clock.sync()
        t = list(marks.t)
        if t[-1] is None:
            raise RuntimeError("the model's forward hook did not fire")
        for i, row in rows.items():
            if t[i] is None:
                raise RuntimeError(f"sub-graph {subgraphs[i].name!r}: its start module "
                                   f"{subgraphs[i].start!r} was not called in this phase")
            if r >= 0:
                nxt = next(t[j] for j in range(i + 1, n + 1) if t[j] is not None)
                row[r] = clock.seconds(t[i], nxt)
        return clock.seconds(t_begin[0], t[-1])

    all_base = np.full(n, -1)
    try:
        with torch.no_grad():
            for r in range(-warmup, repeats):
                offsets = rng.integers(kmax, size=n)
                w = timed_pass(all_base, {i: seg[i][0] for i in range(n)}, r)
                if r >= 0:
                    base_whole[r] = w
                for k in range(kmax):
                    choice = (k + offsets) % kmax
                    choice[choice >= n_cfg] = -1
                    rows = {i: seg[i][c] if c > 0 else base_mixed[i] for i, c in enumerate(choice) if c >= 0}
                    w = timed_pass(choice, rows, r)
                    if r >= 0:
                        assignment[r, k] = choice
                        whole[r, k] = w
    finally:
        for h in hooks:
            h.remove()
        for layer, mod in originals.items():
            set_module(model, layer, mod)
    return seg, base_whole, (assignment, whole), base_mixed


def additivity_check(base_whole: np.ndarray, gains: Sequence[np.ndarray], passes) -> dict:
    """Each mixed pass is a plan: its whole-model time against the prediction, the same repeat's all-base pass
    − Σ sub-graph gains.

    Returns {"passes", "median_error_s" (measured − predicted: > 0 when the passes ran slower than the sum says),
    "median_abs_error_s", "base_pass_iqr_s" (the all-base pass's own spread, for scale)}."""
    assignment, whole = passes
    err = []
    for r in range(whole.shape[0]):
        for k in range(whole.shape[1]):
            saved = sum(float(g[c]) for g, c in zip(gains, assignment[r, k]) if c >= 0)
            err.append(float(whole[r, k]) - (float(base_whole[r]) - saved))
    err = np.array(err)
    return {"passes": int(err.size), "median_error_s": float(np.median(err)),
            "median_abs_error_s": float(np.median(np.abs(err))), "base_pass_iqr_s": iqr(base_whole)}


def gains_from_times(times: np.ndarray):
    """times [K, R] seconds, row 0 = base: (gain [K], spread [K], noisy [K], base median).

    Gain = median over repeats of the paired difference base_r − config_r, spread = its IQR. Paired because the
    samples of one repeat are taken within a few passes of each other and the machine's speed drifts slowly
    (adjacent passes correlate at 0.6–0.8 on a shared box): the difference cancels that drift, a difference of
    medians keeps it."""
    base = times[0]
    diff = base[None, :] - times
    gain = np.median(diff, axis=1)
    spread = np.array([iqr(d) for d in diff])
    noisy = spread >= np.abs(gain)
    noisy[0] = False
    gain[0] = 0.0
    spread[0] = 0.0
    return gain, spread, noisy, float(np.median(base))


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
    the cpu backend: on a shared machine the wall clock also counts the time other jobs held the core."""

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
