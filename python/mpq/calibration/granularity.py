"""Calibration below the layer: the weight term of δ split by output row (granularity "channel") or by blocks of G
consecutive output rows ("group:G"), from the same pass.

The weight term of layer l is ⟨G_nᵀX_n, Q_c(W) − W⟩ = Σ_r ⟨(G_nᵀX_n)[r], (Q_c(W) − W)[r]⟩, a sum over output rows.
The fused kernel sums rows into blocks of ``sample_rows`` rows anyway; called with sample_rows = G instead of
out_features it returns the per-group parts of the very sums the layer-level table adds up, reading W and the
per-sample gradient once as before (its cost is the rows it reads, not the blocks it writes). The layer's weight
δ is the sum of its groups' δ. A calibrated-weight candidate (GPTQ, AWQ) sums Σ_t g_t · (ΔW x_t) per row the same way.

The activation term ⟨G_{X,n}, Q_c(X_n) − X_n⟩ stays one entry per layer. Split by output row it is
Σ_t g_{t,r} · (ΔX_t · W_r): it needs ΔX_c Wᵀ, one more forward matmul per activation candidate and layer, which
is a second pass in cost; ``ChannelTable`` keeps it per layer, and the channel selection charges it to each group
by the group's share of the layer's rows (all of it when every row of the layer takes the candidate).

A group size that does not divide a layer's out_features leaves that layer at layer granularity (one group of
all its rows), and the table says so (``ChannelTable.kept_whole``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

GRANULARITIES = ("layer", "channel", "group:G")


def parse_granularity(granularity) -> Optional[int]:
    """Rows per group: None for "layer", 1 for "channel", G for "group:G". @raises ValueError otherwise."""
    if granularity == "layer":
        return None
    if granularity == "channel":
        return 1
    if isinstance(granularity, str) and granularity.startswith("group:"):
        text = granularity[len("group:"):]
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise ValueError(f"granularity must be 'layer', 'channel' or 'group:G' with G a positive whole number of "
                     f"output rows, got {granularity!r}")


class GroupSplit:
    """Per-sample weight δ of every (layer, row group, candidate) of the batches of one calibration pass.

    rows_per_group[l]: rows in each group of layer l (out_features[l] where G does not divide it); groups of all
    layers are numbered consecutively (``offsets``). The hooks call ``start`` per batch and ``add`` per layer call.
    """

    def __init__(self, granularity: str, names: Sequence[str], out_features: Sequence[int], n_cands: int):
        g = parse_granularity(granularity)
        if g is None:
            raise ValueError("GroupSplit is for granularity 'channel' or 'group:G'")
        self.granularity, self.n_cands = granularity, n_cands
        self.out_features = tuple(int(n) for n in out_features)
        self.kept_whole = {}
        rows = []
        for name, n in zip(names, self.out_features):
            if n % g:
                self.kept_whole[name] = (f"group size {g} does not divide out_features {n}: kept at layer "
                                         "granularity")
                rows.append(n)
            else:
                rows.append(g)
        self.rows_per_group = tuple(rows)
        self.offsets = np.concatenate([[0], np.cumsum([n // r for n, r in zip(self.out_features, rows)])])
        self.batch: Optional[np.ndarray] = None
        self.batches: list = []

    @property
    def n_groups(self) -> int:
        return int(self.offsets[-1])

    def rows(self, layer: int) -> int:
        return self.rows_per_group[layer]

    def start(self, samples: int) -> None:
        self.batch = np.zeros((samples, self.n_groups, self.n_cands))
        self.batches.append(self.batch)

    def add(self, layer: int, idx: Sequence[int], first_sample: int, parts) -> None:
        """parts: [k samples, groups of the layer, len(idx)] weight δ of samples first_sample.. of this batch."""
        a, b = int(self.offsets[layer]), int(self.offsets[layer + 1])
        v = parts.numpy() if hasattr(parts, "numpy") else np.asarray(parts)
        self.batch[first_sample:first_sample + v.shape[0], a:b, list(idx)] += v

    def per_row_sums(self, layer: int, per_row):
        """[k, out_features, J] per-row sums → [k, groups of the layer, J] group sums."""
        return per_row.reshape(per_row.shape[0], -1, self.rows_per_group[layer], *per_row.shape[2:]).sum(2)

    def local(self) -> np.ndarray:
        """[n, groups, C] of this rank's batches (gathered with the layer δ: ``Ranks.gather_samples``)."""
        empty = np.zeros((0, self.n_groups, self.n_cands))
        return np.concatenate(self.batches or [empty])

    def mark(self, every: np.ndarray, applicable: np.ndarray) -> np.ndarray:
        """``every`` ([N, groups, C] over every rank's batches) with NaN where the candidate cannot quantize the
        layer."""
        layer_of = np.repeat(np.arange(len(self.out_features)), np.diff(self.offsets))
        every[:, ~applicable[layer_of]] = np.nan
        return every

    def channel_table(self, table, group_delta: np.ndarray):
        """The ChannelTable of this pass: the layer table and the gathered group δ."""
        from ..artifacts.channel_table import ChannelTable
        return ChannelTable(table, self.rows_per_group, group_delta, self.granularity, self.kept_whole)
