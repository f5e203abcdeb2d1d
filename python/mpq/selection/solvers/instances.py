"""MCKP instance families for testing and benchmarking solvers (specified in docs/solver.md, "Instance families"):
the "llm" family, shaped like a Llama-7B's layers, and the hard families that break naive branch-and-bound. The
tests and bench/solver.py use them. Draw order is part of the specification: do not reorder the rng calls.

    gains, costs = generate(224, 6, seed=0)            # (n, m) float64 arrays, choice 0 = (16,16) baseline
    budget = threshold(costs, 0.3)
    gains, costs = generate(224, 6, seed=0, family="scorr")
"""
from __future__ import annotations

import itertools

import numpy as np

MENUS = {
    2: [(16, 16), (8, 8)],
    4: list(itertools.product((16, 8), (16, 8))),
    6: list(itertools.product((16, 8, 4), (16, 8))),
    16: list(itertools.product((16, 8, 6, 4), (16, 8, 6, 4))),
    25: list(itertools.product((16, 8, 6, 4, 3), (16, 8, 6, 4, 3))),
}
# MACs per token of Llama-7B's linears in block order: q, k, v, o, gate, up, down
MACS_TYPE = np.array([4096 * 4096] * 4 + [4096 * 11008] * 2 + [11008 * 4096], dtype=np.float64)
FAMILIES = ("llm", "scorr", "ssum", "uniform_scorr", "llm_tied")


def _gain(macs, alpha, wb, ab):
    return macs[:, None] / 1e6 * (alpha[:, None] * (1 - np.maximum(wb, ab) / 16)
                                  + (1 - alpha[:, None]) * (1 - wb / 16) - 0.02 * (ab < 16))


def generate(n: int, m: int, seed: int, family: str = "llm") -> tuple[np.ndarray, np.ndarray]:
    """(gains, costs), each (n, m) float64; costs >= 0 and column 0 is the zero-gain, zero-cost baseline."""
    if m not in MENUS:
        raise ValueError(f"m must be one of {sorted(MENUS)}, got {m}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rng = np.random.default_rng(seed)
    wb = np.array([w for w, _ in MENUS[m]], dtype=np.float64)
    ab = np.array([a for _, a in MENUS[m]], dtype=np.float64)
    types = np.arange(n) % 7
    macs = MACS_TYPE[types] * rng.lognormal(0, 0.3, n)
    alpha = rng.uniform(0.3, 0.9, n)
    s = rng.lognormal(0, 1.5, n)
    sw = s * rng.lognormal(0, 0.5, n)
    sa = s * rng.lognormal(0, 0.5, n)
    gnoise = rng.lognormal(0, 0.05, (n, m))
    cnoise = rng.lognormal(0, 0.10, (n, m))
    gain = _gain(macs, alpha, wb, ab) * gnoise
    cost = (sw[:, None] * 4.0 ** (8 - wb) * (wb < 16) + sa[:, None] * 4.0 ** (8 - ab) * (ab < 16)) * cnoise
    gain[:, 0] = 0.0
    cost[:, 0] = 0.0
    if family == "llm":
        return gain, cost
    rng2 = np.random.default_rng(seed + 1000003)  # the hard families' own stream (unused by scorr/ssum)
    if family == "scorr":
        r = gain[:, 1:].sum() / cost[:, 1:].sum()
        g = r * cost + 0.01 * r * np.median(cost[:, 1:])
        g[:, 0] = 0.0
        return g, cost
    if family == "ssum":
        return cost.copy(), cost
    if family == "uniform_scorr":  # Pisinger type 3 with real weights
        w = np.sort(rng2.uniform(1, 1000, (n, m)), axis=1)
        w = np.cumsum(w, axis=1)
        w = w - w[:, :1]
        return w + 10.0 * np.arange(m), w
    # llm_tied: gains from the un-jittered per-type MACs and per-type alpha, no gain noise: identical blocks
    g = _gain(MACS_TYPE[types], alpha[types], wb, ab)
    g[:, 0] = 0.0
    return g, cost


def threshold(costs: np.ndarray, frac: float) -> float:
    """C = sum of row minima + frac * (sum of row maxima - sum of row minima)."""
    lo = costs.min(axis=1).sum()
    return float(lo + frac * (costs.max(axis=1).sum() - lo))
