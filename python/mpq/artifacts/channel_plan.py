"""``ChannelPlan``: what the channel selection chose — for every layer, a candidate per group of output rows.

Layer l's rows are cut into groups of ``group_rows[l]`` consecutive rows (as in the ChannelTable it was selected
from); ``choice`` holds one index into ``candidates`` (``candidates[0]`` is "base") per group, the groups of all
layers in layer order. ``mpq.apply`` runs it with one kernel per precision class (``application.channel_split``).

File format ``mpq.ChannelPlan`` version 1 (.npz through ``mpq.artifacts.io``; the choice of 10⁵–10⁶ groups is no
JSON to edit by hand): meta holds layers, out_features, group_rows, candidates, act_scales {layer: {candidate:
scale}}, predicted_loss_mse, predicted_gain, gain_unit, predicted_memory (or null), objective, solver; the array
``choice`` is int32 [groups].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..candidates import BASE
from .io import array, as_names, as_number, as_object, as_optional_number, as_str, load_npz, save_npz, take

FORMAT, VERSION = "mpq.ChannelPlan", 1


@dataclass(frozen=True, eq=False)
class ChannelPlan:
    layers: tuple
    out_features: tuple
    group_rows: tuple
    candidates: tuple               # candidates[0] == "base"
    choice: np.ndarray              # int32 [groups]
    act_scales: Mapping = field(default_factory=dict)   # {layer: {candidate: static activation scale}}
    predicted_loss_mse: float = float("nan")
    predicted_gain: float = float("nan")
    gain_unit: str = ""
    predicted_memory: Optional[float] = None
    objective: Mapping = field(default_factory=dict)
    solver: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        object.__setattr__(self, "candidates", tuple(str(x) for x in self.candidates))
        object.__setattr__(self, "out_features", tuple(int(x) for x in self.out_features))
        object.__setattr__(self, "group_rows", tuple(int(x) for x in self.group_rows))
        if not self.candidates or self.candidates[0] != BASE:
            raise ValueError(f"candidates must start with {BASE!r}, got {list(self.candidates)}")
        if not (len(self.layers) == len(self.out_features) == len(self.group_rows)):
            raise ValueError("layers, out_features and group_rows must have one entry per layer")
        for name, n, r in zip(self.layers, self.out_features, self.group_rows):
            if r <= 0 or n % r:
                raise ValueError(f"layer {name!r}: {r} rows per group do not divide its {n} output rows")
        c = np.asarray(self.choice)
        if c.shape != (int(self.offsets[-1]),) or (c.size and (c.min() < 0 or c.max() >= len(self.candidates))):
            raise ValueError(f"choice must be {int(self.offsets[-1])} indices into the {len(self.candidates)} "
                             f"candidates, got shape {list(c.shape)}")
        object.__setattr__(self, "choice", c.astype(np.int32))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([n // r for n, r in zip(self.out_features, self.group_rows)])]
                              ).astype(np.int64)

    def row_choice(self, layer: str) -> np.ndarray:
        """[out_features] candidate index (into ``candidates``) of every output row of ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} is not in this channel plan")
        i = self.layers.index(layer)
        o = self.offsets
        return np.repeat(self.choice[o[i]:o[i + 1]], self.group_rows[i])

    def classes(self, layer: str) -> dict:
        """{candidate: sorted row indices} of the precision classes of ``layer`` (base included)."""
        rows = self.row_choice(layer)
        return {self.candidates[j]: np.flatnonzero(rows == j) for j in np.unique(rows)}

    def row_counts(self) -> dict:
        """{candidate: output rows} over all layers."""
        rows = np.concatenate([[0]] + [np.full(n // r, r) for n, r in zip(self.out_features, self.group_rows)])[1:]
        return {c: int(rows[self.choice == j].sum()) for j, c in enumerate(self.candidates)}

    def save(self, path) -> None:
        meta = dict(layers=list(self.layers), out_features=list(self.out_features), group_rows=list(self.group_rows),
                    candidates=list(self.candidates), act_scales={k: dict(v) for k, v in self.act_scales.items()},
                    predicted_loss_mse=float(self.predicted_loss_mse), predicted_gain=float(self.predicted_gain),
                    gain_unit=self.gain_unit, predicted_memory=self.predicted_memory,
                    objective=dict(self.objective), solver=dict(self.solver))
        save_npz(path, FORMAT, VERSION, meta, dict(choice=self.choice))

    @classmethod
    def load(cls, path) -> "ChannelPlan":
        path = os.fspath(path)
        meta, arrays = load_npz(path, FORMAT, VERSION)
        try:
            return cls(take(meta, "layers", path, as_names), take(meta, "out_features", path, _ints),
                       take(meta, "group_rows", path, _ints), take(meta, "candidates", path, as_names),
                       array(arrays, "choice", path, "iu", (None,)), take(meta, "act_scales", path, as_object, {}),
                       take(meta, "predicted_loss_mse", path, as_number),
                       take(meta, "predicted_gain", path, as_number), take(meta, "gain_unit", path, as_str, ""),
                       take(meta, "predicted_memory", path, as_optional_number, None),
                       take(meta, "objective", path, as_object, {}), take(meta, "solver", path, as_object, {}))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}: {n}" for c, n in self.row_counts().items() if n)
        return (f"ChannelPlan({len(self.layers)} layers, {int(self.offsets[-1])} groups; rows {counts}; "
                f"predicted loss MSE {self.predicted_loss_mse:.3g}, gain {self.predicted_gain:.4g} {self.gain_unit})")


def _ints(x, where: str) -> tuple:
    if not isinstance(x, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x):
        raise ValueError(f"{where} must be a list of positive whole numbers")
    return tuple(x)
