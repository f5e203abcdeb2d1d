"""``QuantizedWeights``: the integers (and input transform) that calibration chose for every (layer, candidate)
whose weight depends on calibration data (GPTQ, AWQ, SmoothQuant: ``Candidate.calibrated_weight``).

One ``QuantizedWeight`` says how a Linear y = x Wᵀ + b runs:

    y = Q_act(x / input_scale) · (codes ⊙ scales)ᵀ + b

codes int8 [out, in] (int4 codes lie in [-7, 7], or [-8, 7] for optimized RTN's full range), scales float32
[out, groups], nonzero (negative where optimized RTN maps a positive peak to -8; groups = 1: per channel; the
group size is in / groups), input_scale float32 [in] or None (AWQ's and SmoothQuant's per-input-channel factor:
the weight grid holds W·diag(s), the input is divided by s). The first-order ΔW that calibration's δ uses is
``effective_weight() − W``. ``mpq.apply`` (fake and native) and checkpoint writers read these integers: nothing
re-quantizes them.

File format ``mpq.QuantizedWeights`` version 1 (an .npz written by ``mpq.artifacts.io``; no pickle):
  meta (JSON)   format, version, mpq, data_fingerprint (the calibration batches'), entries [[layer, candidate,
                weight_sha256, has_input_scale], ...] in array order
  codes_<i>, scales_<i>, input_scale_<i>   entry i's arrays (input_scale only where it has one)
Kept apart from the SensitivityTable (tens of MB per candidate for a 100M-parameter model), so that re-solving
a saved table reads kilobytes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import numpy as np

from .io import as_str, load_npz, save_npz, take

FORMAT, VERSION = "mpq.QuantizedWeights", 1


def weight_sha256(weight) -> str:
    """sha256 of a weight's float32 bytes: ties a stored quantization to the exact weight it was computed from."""
    import torch
    w = weight.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    codes: "object"                # torch int8 [out, in]
    scales: "object"               # torch float32 [out, groups]
    input_scale: "object" = None   # torch float32 [in] or None
    weight_sha256: str = ""

    def __post_init__(self):
        import torch
        c, s = self.codes, self.scales
        if not (isinstance(c, torch.Tensor) and c.dtype == torch.int8 and c.dim() == 2):
            raise ValueError("codes must be an int8 tensor [out, in]")
        if not (isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.dim() == 2 and s.shape[0] == c.shape[0]
                and s.shape[1] >= 1 and c.shape[1] % s.shape[1] == 0):
            raise ValueError(f"scales must be float32 [out, groups] with groups dividing in = {c.shape[1]}, "
                             f"got {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or not bool((s != 0).all()):
            raise ValueError("scales must be nonzero and finite")
        x = self.input_scale
        if x is not None and not (isinstance(x, torch.Tensor) and x.dtype == torch.float32
                                  and tuple(x.shape) == (c.shape[1],) and bool(torch.isfinite(x).all())
                                  and bool((x > 0).all())):
            raise ValueError(f"input_scale must be positive finite float32 [{c.shape[1]}]")

    @property
    def shape(self) -> tuple:
        return tuple(self.codes.shape)

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantized(self):
        """codes ⊙ scales, float32 [out, in]: the weight the (x / input_scale) input meets."""
        out, k = self.codes.shape
        g = self.scales.shape[1]
        return (self.codes.float().reshape(out, g, k // g) * self.scales.unsqueeze(-1)).reshape(out, k)

    def effective_weight(self):
        """The weight as seen by the untransformed input x: dequantized() / input_scale (columns)."""
        w = self.dequantized()
        return w if self.input_scale is None else w / self.input_scale

    def transform_input(self, x):
        """x / input_scale (x itself when there is none): what the codes are multiplied with."""
        return x if self.input_scale is None else x / self.input_scale.to(x.dtype)


class QuantizedWeights(Mapping):
    """{(layer, candidate): QuantizedWeight}, with the calibration data's fingerprint."""

    def __init__(self, entries: Optional[Mapping] = None, data_fingerprint: str = ""):
        self._entries: dict = {}
        for key, qw in dict(entries or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise ValueError(f"keys are (layer, candidate) pairs of names, got {key!r}")
            if not isinstance(qw, QuantizedWeight):
                raise ValueError(f"{key}: expected a QuantizedWeight, got {type(qw).__name__}")
            self._entries[key] = qw
        self.data_fingerprint = data_fingerprint

    def __getitem__(self, key) -> QuantizedWeight:
        return self._entries[key]

    def __iter__(self) -> Iterator:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get_for(self, layer: str, candidate: str, weight=None) -> QuantizedWeight:
        """The entry of (layer, candidate); with ``weight``, checks it was computed from exactly that weight.
        @raises ValueError naming what is missing or mismatched."""
        qw = self._entries.get((layer, candidate))
        if qw is None:
            raise ValueError(f"layer {layer!r}: no calibrated weight for candidate {candidate!r} in the "
                             "QuantizedWeights (calibrate with that candidate, or it was unavailable for the layer)")
        if weight is not None:
            if tuple(weight.shape) != qw.shape:
                raise ValueError(f"layer {layer!r}: the stored {candidate!r} weight has shape {qw.shape}, the "
                                 f"model's {tuple(weight.shape)}")
            if qw.weight_sha256 and weight_sha256(weight) != qw.weight_sha256:
                raise ValueError(f"layer {layer!r}: the stored {candidate!r} weight was computed from a different "
                                 "weight than the model's (another checkpoint, or the model changed)")
        return qw

    def nbytes(self) -> int:
        return sum(q.codes.numel() + 4 * q.scales.numel() + (0 if q.input_scale is None else 4 * q.input_scale.numel())
                   for q in self._entries.values())

    def save(self, path) -> None:
        entries, arrays = [], {}
        for i, ((layer, cand), q) in enumerate(self._entries.items()):
            entries.append([layer, cand, q.weight_sha256, q.input_scale is not None])
            arrays[f"codes_{i}"] = q.codes.numpy()
            arrays[f"scales_{i}"] = q.scales.numpy()
            if q.input_scale is not None:
                arrays[f"input_scale_{i}"] = q.input_scale.numpy()
        save_npz(path, FORMAT, VERSION, {"data_fingerprint": self.data_fingerprint, "entries": entries}, arrays)

    @classmethod
    def load(cls, path) -> "QuantizedWeights":
        """@raises ValueError naming the file and the entry for a malformed file; FileNotFoundError if missing."""
        import torch
        path = os.fspath(path)
        meta, arrays = load_npz(path, FORMAT, VERSION)
        fp = take(meta, "data_fingerprint", path, as_str, "")
        raw = meta.get("entries")
        if not isinstance(raw, list):
            raise ValueError(f"{path}: 'entries' must be a list")
        entries = {}
        for i, e in enumerate(raw):
            if not (isinstance(e, list) and len(e) == 4 and all(isinstance(x, str) for x in e[:3])
                    and isinstance(e[3], bool)):
                raise ValueError(f"{path}: entries[{i}] must be [layer, candidate, sha256, has_input_scale]")
            try:
                codes = torch.from_numpy(np.asarray(arrays[f"codes_{i}"]))
                scales = torch.from_numpy(np.asarray(arrays[f"scales_{i}"]))
                xs = torch.from_numpy(np.asarray(arrays[f"input_scale_{i}"])) if e[3] else None
                entries[(e[0], e[1])] = QuantizedWeight(codes, scales, xs, e[2])
            except KeyError as k:
                raise ValueError(f"{path}: entries[{i}] ({e[0]}, {e[1]}): array {k} is missing") from None
            except ValueError as err:
                raise ValueError(f"{path}: entries[{i}] ({e[0]}, {e[1]}): {err}") from None
        return cls(entries, fp)

    def __repr__(self) -> str:
        return f"QuantizedWeights({len(self)} (layer, candidate) entries, {self.nbytes() / 2**20:.1f} MiB)"
