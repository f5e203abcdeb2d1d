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

File format (``.npz`` through ``mpq.artifacts.io``, kind ``mpq.GainTable``, version 1): meta holds the table-level
fields and, per sub-graph, name/layers/ties/subset/note/baseline_seconds; arrays ``configs_<i>`` (int32 [K, n]),
``gain_<i>``, ``spread_<i>`` (float64 [K]), ``noisy_<i>`` (bool [K]), optional ``layer_bytes`` (float64
[n_layers, n_candidates], bytes of each layer's weight in each candidate; NaN where not applicable) and
``layer_gain`` / ``layer_spread`` (float64 [n_layers, n_candidates]: each Linear timed alone, for the per-layer
additive prediction) over ``layer_names``. ``meta["coverage"]``: which parameters of the model the profiled layers
cover (``mpq.coverage.Coverage.to_dict``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..candidates import BASE
from .io import (array, as_bool, as_names, as_object, as_optional_number, as_str, as_str_mapping, load_npz,
                 save_npz, take)

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
        """@raises ValueError naming the file and the field for any file that is not a well-formed table (wrong
        types, shapes or dtypes, config indices outside the candidates, a damaged archive); FileNotFoundError when
        it is missing."""
        path = os.fspath(path)
        meta, arrays = load_npz(path, FORMAT, VERSION)
        candidates = take(meta, "candidates", path, as_names)
        if not candidates or candidates[0] != BASE:
            raise ValueError(f"{path}: 'candidates' must start with {BASE!r}, got {list(candidates)}")
        layer_names = take(meta, "layer_names", path, as_names, ())
        info = take(meta, "info", path, as_object, {})
        if "implementations" in info:  # {layer: {candidate: implementation}}: what select copies into plans
            impls = as_object(info["implementations"], f"{path}: 'info.implementations'")
            for layer, per in impls.items():
                as_str_mapping(per, f"{path}: 'info.implementations.{layer}'", optional_values=True)
        records = take(meta, "subgraphs", path, _list_of_objects)
        sgs = []
        for i, d in enumerate(records):
            where = f"{path}: subgraphs[{i}]"
            name = take(d, "name", where, as_str)
            where = f"{path}: sub-graph {name!r}"
            layers = take(d, "layers", where, as_names)
            ties = tuple(as_names(t, f"{where}: 'ties'[{j}]")
                         for j, t in enumerate(take(d, "ties", where, _list_of_lists, [])))
            configs = array(arrays, f"configs_{i}", where, "iu", (None, len(layers)))
            k = configs.shape[0]
            if not k:
                raise ValueError(f"{where}: array 'configs_{i}' has no rows (row 0 is the all-base configuration)")
            if configs.size and (configs.min() < 0 or configs.max() >= len(candidates)):
                raise ValueError(f"{where}: array 'configs_{i}' holds candidate indices outside "
                                 f"0..{len(candidates) - 1}")
            gain = array(arrays, f"gain_{i}", where, "f", (k,))
            spread = array(arrays, f"spread_{i}", where, "f", (k,))
            noisy = array(arrays, f"noisy_{i}", where, "b", (k,))
            sgs.append(SubgraphGains(name, layers, ties, configs.astype(np.int32), gain.astype(np.float64),
                                     spread.astype(np.float64), noisy, _unnum(take(d, "baseline_seconds", where,
                                                                                     as_optional_number, None)),
                                     take(d, "subset", where, as_bool, False), take(d, "note", where, as_str, "")))
        per_layer = {what: array(arrays, what, path, "f", (len(layer_names), len(candidates)), optional=True)
                     for what in ("layer_bytes", "layer_gain", "layer_spread")}
        if any(a is not None for a in per_layer.values()):
            known = set(layer_names)
            stray = [l for sg in sgs for l in sg.layers if l not in known]
            if stray:
                raise ValueError(f"{path}: 'layer_names' lacks sub-graph layers {stray[:3]} that the per-layer "
                                 "arrays must cover")
        backend, phase, unit = (take(meta, key, path, as_str) for key in ("backend", "phase", "unit"))
        baseline = _unnum(take(meta, "baseline_seconds", path, as_optional_number, None))
        shapes = take(meta, "shapes", path, as_object, {})
        try:
            return cls(backend, phase, candidates, tuple(sgs), baseline, unit, shapes, info, layer_names,
                       *(None if a is None else a.astype(np.float64) for a in per_layer.values()))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

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


def _list_of_objects(x, where: str) -> list:
    if not isinstance(x, list) or not all(isinstance(d, dict) for d in x):
        raise ValueError(f"{where} must be a list of objects, got {type(x).__name__}")
    return x


def _list_of_lists(x, where: str) -> list:
    if not isinstance(x, list):
        raise ValueError(f"{where} must be a list of lists of layer names, got {type(x).__name__}")
    return x
