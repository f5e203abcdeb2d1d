"""Shared helpers of the bench scripts: timing, the machine line, tables."""
from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import time
from typing import Callable, Sequence


def timeit(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> tuple[float, float]:
    """Median and inter-quartile range of ``fn``'s wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


@contextlib.contextmanager
def at_isa(isa: str):
    """mpq's C++ core forced to the SIMD level ``isa`` inside the block, the level before restored after it."""
    from mpq import _core
    old = _core.isa()
    _core._set_isa(isa)
    try:
        yield
    finally:
        _core._set_isa(old)


def machine_line() -> str:
    import torch

    from mpq import _core
    from mpq.application.cpu_features import cpu_name
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# {platform.machine()} {cpu_name()} ({os.cpu_count()} CPUs) isa={_core.isa()} "
            f"torch={torch.__version__} capability={torch.backends.cpu.get_cpu_capability()} "
            f"threads={torch.get_num_threads()} load1={load:.2f}")


def print_table(header: Sequence[str], rows: Sequence[Sequence], fmt: Sequence[str]) -> None:
    widths = [max(len(h), 10) for h in header]
    print(" ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print(" ".join(format(v, f).rjust(w) for v, f, w in zip(row, fmt, widths)))


def random_plans(layers, candidates, n: int, seed: int = 0) -> list[dict]:
    """``n`` random plans: each puts 5–50% of ``layers``, chosen at random, each on a random candidate."""
    rng = random.Random(seed)
    plans = []
    for _ in range(n):
        k = rng.randint(max(1, len(layers) // 20), len(layers) // 2)
        plans.append({l: rng.choice(candidates) for l in rng.sample(list(layers), k)})
    return plans
