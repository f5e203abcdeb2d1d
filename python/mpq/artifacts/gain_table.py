"""GainTable: for every sub-graph and every configuration of its layers' candidates, the gain against the
all-base configuration on one backend and phase. What the MCKP solver consumes (one group per sub-graph, one item
per configuration).

Conventions
- ``candidates[0]`` is always ``"base"``; ``configs`` hold indices into ``candidates``, so index 0 means base.
- ``gain`` is in the table's ``unit``: seconds saved for timing backends (``cpu``, ``cuda``, ``hpu``), seconds
  saved at the device's nominal peak rates for ``macs``, bytes saved for ``memory``. Negative when slower/larger.
  Row 0 of every sub-graph is the all-base configuration with gain 0.
- ``spread``: the interquartile range of the paired per-repeat differences (timing) or 0 (theoretical).
- ``noisy``: spread ≥ |gain| for a non-base configuration: the number is not to be trusted.
- ``subset``: True when the sub-graph had more configurations than ``max_configs`` and only a documented subset
  was measured (all-base, each group alone with each candidate, every group on the same candidate, then seeded
  random configurations up to the limit); ``note`` says so.

File format (``.npz`` through ``mpq._artifact_io``, kind ``mpq.GainTable``, version 1): meta holds the table-level
fields and, per sub-graph, name/layers/ties/subset/note/baseline_seconds; arrays ``configs_<i>`` (int32 [K, n]),
``gain_<i>``, ``spread_<i>`` (float64 [K]), ``noisy_<i>`` (bool [K]), optional ``layer_bytes`` (float64
[n_layers, n_candidates], bytes of each layer's weight in each candidate; NaN where not applicable) and
``layer_gain`` / ``layer_spread`` (float64 [n_layers, n_candidates]: each Linear timed alone, for the per-layer
additive prediction) over ``layer_names``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..candidates import BASE
from .io import load_npz, save_npz

__all__ = ["GainTable", "SubgraphGains"]

FORMAT, VERSION = "mpq.GainTable", 1


@dataclass(frozen=True, eq=False)
class SubgraphGains:
    name: str
    layers: tuple[str, ...]
    ties: tuple[tuple[str, ...], ...]
    configs: np.ndarray            # int32 [K, n_layers], indices into GainTable.candidates (0 = base)
    gain: np.ndarray               # float64 [K]
    spread: np.ndarray             # float64 [K]
    noisy: np.ndarray              # bool [K]
    baseline_seconds: float = float("nan")  # the sub-graph's own all-base time (timing backends)
    subset: bool = False
    note: str = ""

    def __post_init__(self):
        k = self.configs.shape[0]
        if self.configs.ndim != 2 or self.configs.shape[1] != len(self.layers):
            raise ValueError(f"sub-graph {self.name!r}: configs must be [K, {len(self.layers)}], "
                             f"got {self.configs.shape}")
        for what in ("gain", "spread", "noisy"):
            if getattr(self, what).shape != (k,):
                raise ValueError(f"sub-graph {self.name!r}: {what} must have shape ({k},)")


@dataclass(frozen=True, eq=False)
class GainTable:
    backend: str
    phase: str
    candidates: tuple[str, ...]
    subgraphs: tuple[SubgraphGains, ...]
    baseline_seconds: float = float("nan")   # all-base total in `unit`: whole-model time, MAC-seconds or bytes
    unit: str = "seconds"
    shapes: dict = field(default_factory=dict)   # {"input": [...], "layers": {layer: [M, K, N]}}
    meta: dict = field(default_factory=dict)     # device, threads, repeats, torch version, load average, ...
    layer_names: tuple[str, ...] = ()
    layer_bytes: Optional[np.ndarray] = None     # [n_layers, n_candidates]
    layer_gain: Optional[np.ndarray] = None      # [n_layers, n_candidates]
    layer_spread: Optional[np.ndarray] = None

    def __post_init__(self):
        if not self.candidates or self.candidates[0] != BASE:
            raise ValueError(f"GainTable.candidates must start with {BASE!r}, got {self.candidates}")
        if self.phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be prefill or decode, got {self.phase!r}")
        seen = set()
        for sg in self.subgraphs:
            if sg.name in seen:
                raise ValueError(f"duplicate sub-graph name {sg.name!r}")
            seen.add(sg.name)
            if sg.configs.size and (sg.configs.min() < 0 or sg.configs.max() >= len(self.candidates)):
                raise ValueError(f"sub-graph {sg.name!r}: config index out of range")

    # --- queries ---------------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(l for sg in self.subgraphs for l in sg.layers)

    def subgraph(self, name: str) -> SubgraphGains:
        for sg in self.subgraphs:
            if sg.name == name:
                return sg
        raise KeyError(f"no sub-graph {name!r}; have {[s.name for s in self.subgraphs]}")

    def config_names(self, i: int, k: int) -> tuple[str, ...]:
        """Candidate names of configuration k of sub-graph i, one per layer."""
        return tuple(self.candidates[j] for j in self.subgraphs[i].configs[k])

    def config_mapping(self, i: int, k: int) -> dict[str, str]:
        sg = self.subgraphs[i]
        return {l: self.candidates[j] for l, j in zip(sg.layers, sg.configs[k]) if j != 0}

    def config_index(self, i: int, mapping: Mapping[str, str]) -> int:
        """Row of sub-graph i matching ``mapping`` (layers absent from it are base). @raises KeyError if unmeasured."""
        sg = self.subgraphs[i]
        want = []
        for l in sg.layers:
            c = mapping.get(l, BASE)
            if c not in self.candidates:
                raise KeyError(f"layer {l!r}: candidate {c!r} is not in this table ({self.candidates})")
            want.append(self.candidates.index(c))
        rows = np.nonzero((sg.configs == np.asarray(want, dtype=sg.configs.dtype)).all(axis=1))[0]
        if not len(rows):
            raise KeyError(f"sub-graph {sg.name!r}: configuration {dict(zip(sg.layers, want))} was not measured"
                           f"{' (subset: ' + sg.note + ')' if sg.subset else ' (check ties)'}")
        return int(rows[0])

    def predict(self, mapping: Mapping[str, str]) -> float:
        """Σ over sub-graphs of the measured gain of the configuration ``mapping`` picks (layers absent are base)."""
        unknown = set(mapping) - set(self.layers)
        if unknown:
            raise KeyError(f"layers not in this table: {sorted(unknown)[:5]}")
        return float(sum(sg.gain[self.config_index(i, mapping)] for i, sg in enumerate(self.subgraphs)))

    def predict_per_layer(self, mapping: Mapping[str, str]) -> float:
        """Σ over layers of each Linear's gain timed alone (the additive model the sub-graphs improve on)."""
        if self.layer_gain is None:
            raise ValueError("this table has no per-layer gains (profile(..., per_layer=True))")
        total = 0.0
        for l, c in mapping.items():
            if c == BASE:
                continue
            total += float(self.layer_gain[self.layer_names.index(l), self.candidates.index(c)])
        return total

    def to_mckp(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(gains, configs) per sub-graph: the groups and items of the knapsack."""
        return [sg.gain.copy() for sg in self.subgraphs], [sg.configs.copy() for sg in self.subgraphs]

    # --- files -----------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        meta = dict(backend=self.backend, phase=self.phase, candidates=list(self.candidates), unit=self.unit,
                    baseline_seconds=_num(self.baseline_seconds), shapes=self.shapes, info=self.meta,
                    layer_names=list(self.layer_names),
                    subgraphs=[dict(name=sg.name, layers=list(sg.layers), ties=[list(t) for t in sg.ties],
                                    baseline_seconds=_num(sg.baseline_seconds), subset=sg.subset, note=sg.note)
                               for sg in self.subgraphs])
        arrays = {}
        for i, sg in enumerate(self.subgraphs):
            arrays[f"configs_{i}"] = sg.configs.astype(np.int32)
            arrays[f"gain_{i}"] = sg.gain.astype(np.float64)
            arrays[f"spread_{i}"] = sg.spread.astype(np.float64)
            arrays[f"noisy_{i}"] = sg.noisy.astype(bool)
        for what in ("layer_bytes", "layer_gain", "layer_spread"):
            if getattr(self, what) is not None:
                arrays[what] = np.asarray(getattr(self, what), dtype=np.float64)
        save_npz(path, FORMAT, VERSION, meta, arrays)

    @classmethod
    def load(cls, path) -> "GainTable":
        meta, arrays = load_npz(path, FORMAT, VERSION)
        try:
            sgs = tuple(SubgraphGains(d["name"], tuple(d["layers"]), tuple(tuple(t) for t in d["ties"]),
                                      arrays[f"configs_{i}"], arrays[f"gain_{i}"], arrays[f"spread_{i}"],
                                      arrays[f"noisy_{i}"], _unnum(d["baseline_seconds"]), bool(d["subset"]),
                                      d["note"])
                        for i, d in enumerate(meta["subgraphs"]))
            return cls(meta["backend"], meta["phase"], tuple(meta["candidates"]), sgs,
                       _unnum(meta["baseline_seconds"]), meta["unit"], meta["shapes"], meta["info"],
                       tuple(meta["layer_names"]), arrays.get("layer_bytes"), arrays.get("layer_gain"),
                       arrays.get("layer_spread"))
        except KeyError as e:
            raise ValueError(f"{path}: mpq.GainTable v{meta['version']} is missing {e}") from None

    def summary(self) -> str:
        lines = [f"GainTable backend={self.backend} phase={self.phase} unit={self.unit} "
                 f"baseline={self.baseline_seconds:.6g} candidates={','.join(self.candidates[1:])}"]
        for i, sg in enumerate(self.subgraphs):
            best = int(np.argmax(sg.gain))
            lines.append(f"  {sg.name:<32} layers={len(sg.layers)} configs={len(sg.gain)}"
                         f"{' (subset)' if sg.subset else ''} best={'/'.join(self.config_names(i, best))} "
                         f"gain={sg.gain[best]:.4g} noisy={int(sg.noisy.sum())}")
        return "\n".join(lines)


def _num(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _unnum(x):
    return float("nan") if x is None else float(x)
