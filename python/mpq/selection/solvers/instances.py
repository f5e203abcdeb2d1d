"""MCKP instance families for testing and benchmarking solvers (specified in docs/solver.md, "Instance families"):
the "llm" family, shaped like a Llama-7B's layers, and the hard families that break naive branch-and-bound. The
tests and bench/solver.py use them. Draw order is part of the specification: do not reorder the rng calls.

    gains, costs = generate(224, 6, seed=0)            # (n, m) float64 arrays, choice 0 = (16,16) baseline
    budget = threshold(costs, 0.3)
    gains, costs = generate(224, 6, seed=0, family="scorr")

Integer families of the MCKP literature, for comparisons with integer codes (Pisinger's minimal algorithm):

    gains, costs = classic("strong", 1000, 10, R=1000, seed=1)   # Pisinger's types: "unc", "weak", "strong"
    gains, costs = llm_int(2000, 8, seed=1)                      # integer LLM-like: gains linear, costs ~4x/item
    for inst in integer_suite(): ...                             # the 48 named instances bench/solver.py times
"""
from __future__ import annotations

import itertools
import zlib
from typing import Iterator, NamedTuple

import numpy as np

MENUS = {
    2: [(16, 16), (8, 8)],
    4: list(itertools.product((16, 8), (16, 8))),
    6: list(itertools.product((16, 8, 4), (16, 8))),
    8: list(itertools.product((16, 8, 6, 4), (16, 8))),
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


def classic(kind: str, n: int, m: int, R: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gains, costs), (n, m) float64 holding integers: Pisinger's uncorrelated (type 1: gain and cost U[1, R]),
    weakly correlated (type 2: cost U[1, R], gain = cost + U[-10, 10], at least 1) and strongly correlated (type 3:
    steps w_k U[1, 2R/m] sorted, gain steps w_k + 10, both summed along the group) MCKP classes. Draw order, with
    numpy.random.default_rng(seed): costs first, then the gains' noise."""
    rng = np.random.default_rng(seed)
    if kind == "unc":
        w = rng.integers(1, R + 1, (n, m))
        p = rng.integers(1, R + 1, (n, m))
    elif kind == "weak":
        w = rng.integers(1, R + 1, (n, m))
        p = np.maximum(w + rng.integers(-10, 11, (n, m)), 1)
    elif kind == "strong":
        steps = np.sort(rng.integers(1, (2 * R) // m + 1, (n, m)), axis=1)
        w = np.cumsum(steps, axis=1)
        p = np.cumsum(steps + 10, axis=1)
    else:
        raise ValueError(f"kind must be one of unc, weak, strong, got {kind!r}")
    return p.astype(np.float64), w.astype(np.float64)


def llm_int(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An integer LLM-like family: item 0 is (0, 0); gain_j = round(1000 macs j / (m - 1)), at most 1e4, with
    macs lognormal(0, 0.5); cost_j = round(sens 4^j lognormal(0, 0.25)) with sens lognormal(0, 1), scaled so the
    largest cost is 1e9. Draws, in order: macs, sens, the (n, m) cost noise."""
    rng = np.random.default_rng(seed)
    macs = rng.lognormal(0.0, 0.5, n)
    sens = rng.lognormal(0.0, 1.0, n)
    g = np.minimum(np.rint(1000.0 * macs[:, None] * (np.arange(m) / (m - 1))[None, :]), 1e4)
    raw = sens[:, None] * 4.0 ** np.arange(m)[None, :] * rng.lognormal(0.0, 0.25, (n, m))
    raw[:, 0] = 0.0
    c = np.rint(raw * (1e9 / raw.max()))
    g[:, 0] = 0.0
    c[:, 0] = 0.0
    return g, c


class Instance(NamedTuple):
    name: str
    family: str   # "unc" | "weak" | "strong" | "llm"
    gains: np.ndarray
    costs: np.ndarray
    budget: float


def integer_suite(names: tuple[str, ...] | None = None) -> Iterator[Instance]:
    """The 48 integer instances: unc/weak/strong with R in {1e3, 1e4}, n in {100, 1e3, 1e4}, m in {10, 20}, and
    llm_int with n in {224, 2000, 20000, 100000}, m in {4, 8, 16}. Seed: zlib.crc32 of the name; budget: the
    rounded sum of group minima + 0.3 (sum of maxima - sum of minima). `names` keeps only those."""
    specs = [(f"{k}_R{R}_n{n}_m{m}", k, n, m, R) for k in ("unc", "weak", "strong") for R in (1000, 10000)
             for n in (100, 1000, 10000) for m in (10, 20)]
    specs += [(f"llm_n{n}_m{m}", "llm", n, m, 0) for n in (224, 2000, 20000, 100000) for m in (4, 8, 16)]
    for name, kind, n, m, R in specs:
        if names is not None and name not in names:
            continue
        seed = zlib.crc32(name.encode())
        g, c = llm_int(n, m, seed) if kind == "llm" else classic(kind, n, m, R, seed)
        lo, hi = c.min(axis=1).sum(), c.max(axis=1).sum()
        yield Instance(name, kind, g, c, float(round(lo + 0.3 * (hi - lo))))
