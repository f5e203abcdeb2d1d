"""``ChannelTable``: the output of ``mpq.calibrate(..., granularity="channel" | "group:G")`` — the layer-level
SensitivityTable of the pass, plus the weight term of δ per (output-row group, candidate) of every layer.

Groups: layer l's out_features rows are cut into groups of ``group_rows[l]`` consecutive rows (1 for "channel";
out_features where G does not divide the layer, which then stays whole: ``kept_whole`` says so); the groups of all
layers are numbered in layer order, group g of layer l holding rows [a, b) is the entry ``f"{name}#rows a:b"``
(``entries``). For every sample n: Σ over the groups of layer l of δw[n, g, c] = the layer's weight δ
``table.delta_weight[n, l, c]`` (the same sums, split).

Cost of group g in candidate c, as the channel selection charges it (additive model, cross terms dropped as
between layers): mean_n δw[n, g, c]² + share_g · s_act[l, c], where s_act[l, c] = mean_n δa[n, l, c]² is the
layer's activation term (δa = delta − delta_weight of the layer table, one entry per layer: see
``calibration.granularity``) and share_g = rows of g / out_features of l.

File format ``mpq.ChannelTable`` version 1 (.npz through ``mpq.artifacts.io``): meta holds the layer table's meta
(as a SensitivityTable writes it) plus granularity, group_rows [L], kept_whole {layer: why}; arrays: the layer
table's (delta, delta_weight, act_scales, act_zero_points) and group_delta_weight [N, groups, C] float64 (NaN where
the candidate cannot quantize the layer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .io import array, as_count, as_names, as_object, as_str, load_npz, save_npz, take
from .sensitivity_table import RESERVED, SensitivityTable

FORMAT, VERSION = "mpq.ChannelTable", 1
_OWN = ("granularity", "group_rows", "kept_whole")


@dataclass(frozen=True, eq=False)
class ChannelTable:
    table: SensitivityTable          # the layer-level table of the same pass
    group_rows: tuple                # rows per group, per layer
    group_delta_weight: np.ndarray   # [N, groups, C] float64
    granularity: str = "channel"
    kept_whole: Mapping = field(default_factory=dict)  # layer -> why it stays at layer granularity

    def __post_init__(self):
        t = self.table
        if not isinstance(t, SensitivityTable):
            raise ValueError(f"table must be a SensitivityTable, got {type(t).__name__}")
        shapes = t.info.get("layer_shapes")
        if not isinstance(shapes, list) or len(shapes) != len(t.layers):
            raise ValueError("the layer table needs info['layer_shapes'] ([out, in] per layer) to split rows")
        rows = tuple(int(r) for r in self.group_rows)
        if len(rows) != len(t.layers):
            raise ValueError(f"group_rows must have one entry per layer ({len(t.layers)}), got {len(rows)}")
        for name, r, (out_f, _) in zip(t.layers, rows, shapes):
            if r <= 0 or out_f % r:
                raise ValueError(f"layer {name!r}: {r} rows per group do not divide its {out_f} output rows")
        object.__setattr__(self, "group_rows", rows)
        d = np.asarray(self.group_delta_weight, np.float64)
        want = (t.n_samples, int(self.offsets[-1]), len(t.candidates))
        if d.shape != want:
            raise ValueError(f"group_delta_weight must have shape {list(want)}, got {list(d.shape)}")
        object.__setattr__(self, "group_delta_weight", d)
        object.__setattr__(self, "kept_whole", {str(k): str(v) for k, v in dict(self.kept_whole).items()})

    # --- structure ---------------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple:
        return self.table.layers

    @property
    def candidates(self) -> tuple:
        return self.table.candidates

    @property
    def out_features(self) -> tuple:
        return tuple(int(s[0]) for s in self.table.info["layer_shapes"])

    @property
    def offsets(self) -> np.ndarray:
        """[L + 1]: the groups of layer l are offsets[l]:offsets[l + 1]."""
        return np.concatenate([[0], np.cumsum([n // r for n, r in zip(self.out_features, self.group_rows)])]
                              ).astype(np.int64)

    @property
    def group_layer(self) -> np.ndarray:
        """[groups]: the layer index of every group."""
        return np.repeat(np.arange(len(self.layers)), np.diff(self.offsets))

    @property
    def group_share(self) -> np.ndarray:
        """[groups]: rows of the group / out_features of its layer."""
        rows = np.asarray(self.group_rows, np.float64)
        out = np.asarray(self.out_features, np.float64)
        return (rows / out)[self.group_layer]

    @property
    def entries(self) -> tuple:
        """``name#rows a:b`` of every group, in group order."""
        return tuple(f"{name}#rows {a}:{a + r}" for name, r, n in zip(self.layers, self.group_rows, self.out_features)
                     for a in range(0, n, r))

    # --- the numbers -------------------------------------------------------------------------------------------
    @property
    def weight_mse(self) -> np.ndarray:
        """[groups, C] mean_n δw[n, g, c]²; +inf where the candidate cannot quantize the layer."""
        d = self.group_delta_weight
        with np.errstate(invalid="ignore"):
            s = np.mean(d ** 2, axis=0) if d.shape[0] else np.zeros(d.shape[1:])
        return np.where(np.isnan(s), np.inf, s)

    @property
    def act_mse(self) -> np.ndarray:
        """[L, C] s_act[l, c] = mean_n (δ − δw)[n, l, c]² of the layer table: the activation term, per layer."""
        t = self.table
        with np.errstate(invalid="ignore"):
            s = np.mean((t.delta - t.delta_weight) ** 2, axis=0) if t.n_samples else np.zeros(t.delta.shape[1:])
        return np.where(t.applicable, s, np.inf)

    @property
    def cost(self) -> np.ndarray:
        """[groups, C] what the channel selection charges: weight_mse + share · act_mse of the group's layer."""
        with np.errstate(invalid="ignore"):
            return self.weight_mse + self.group_share[:, None] * self.act_mse[self.group_layer]

    def layer_weight_delta(self) -> np.ndarray:
        """[N, L, C] Σ over each layer's groups of δw: equals ``table.delta_weight`` (the same sums, split)."""
        return np.add.reduceat(self.group_delta_weight, self.offsets[:-1], axis=1)

    # --- files -------------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        t = self.table
        meta = dict(t.info, layers=list(t.layers), candidates=list(t.candidates), n_samples=t.n_samples,
                    data_fingerprint=t.data_fingerprint, granularity=self.granularity,
                    group_rows=list(self.group_rows), kept_whole=dict(self.kept_whole))
        save_npz(path, FORMAT, VERSION, meta, dict(
            delta=t.delta, delta_weight=t.delta_weight, act_scales=t.act_scales, act_zero_points=t.act_zero_points,
            group_delta_weight=self.group_delta_weight))

    @classmethod
    def load(cls, path) -> "ChannelTable":
        """@raises ValueError naming the file and the field for a file that is not a well-formed ChannelTable;
        FileNotFoundError when it is missing."""
        path = os.fspath(path)
        meta, arrays = load_npz(path, FORMAT, VERSION)
        layers = take(meta, "layers", path, as_names)
        candidates = take(meta, "candidates", path, as_names)
        n = take(meta, "n_samples", path, as_count)
        L, C = len(layers), len(candidates)
        rows = take(meta, "group_rows", path, _counts)
        granularity = take(meta, "granularity", path, as_str)
        kept = take(meta, "kept_whole", path, as_object, {})
        info = {k: v for k, v in meta.items() if k not in RESERVED and k not in _OWN}
        try:
            table = SensitivityTable(layers, candidates, array(arrays, "delta", path, "f", (n, L, C)),
                                     array(arrays, "delta_weight", path, "f", (n, L, C)),
                                     array(arrays, "act_scales", path, "f", (L, C)),
                                     array(arrays, "act_zero_points", path, "f", (L, C)),
                                     take(meta, "data_fingerprint", path, as_str, ""), info)
            return cls(table, rows, array(arrays, "group_delta_weight", path, "f", (n, None, C)), granularity, kept)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return (f"ChannelTable({self.granularity}: {int(self.offsets[-1])} groups of {len(self.layers)} layers × "
                f"{len(self.candidates)} candidates, {self.table.n_samples} samples)")


def _counts(x, where: str) -> tuple:
    if not isinstance(x, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x):
        raise ValueError(f"{where} must be a list of positive whole numbers")
    return tuple(x)
