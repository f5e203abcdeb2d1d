"""``Plan``: the chosen candidate of every layer, with what the selection predicted for it.

File format ``mpq.Plan`` version 2 (version 1 files, without ``act_scales``, still load): a JSON object (people
read and edit plans) with keys
  format, version, mpq            "mpq.Plan", 2, the writer's version
  mapping                         {layer name: candidate name} for every layer the selection saw ("base" = keep)
  candidates                      the candidate names the sensitivity table held
  predicted_loss_mse              Σ of the chosen layers' s[l, c] (the additive first-order estimate)
  predicted_gain, gain_unit       Σ of the chosen sub-graph configurations' gains, and their unit
  baseline_seconds                the all-base time the gains are relative to (NaN for theoretical backends)
  predicted_memory                bytes of the chosen weights (null without a memory row)
  objective                       {"kind": "max_loss_mse" | "min_gain" | ..., "value": number}
  solver                          {"name", "status", "bound", "seconds"}
  artifacts                       fingerprints of the sensitivity and gain tables the plan came from
  act_scales                      {layer: static activation scale} for the layers whose chosen candidate has static
                                  activation scales: the calibrated scales, so ``apply`` runs what was measured
  implementations                 {layer: CPU implementation} the profile timed each quantized layer with (cpu
                                  backend only), so ``apply(mode="native")`` installs exactly those
  predicted_loss_mse_stderr       the standard error of predicted_loss_mse, from the per-sample δ (null: unknown)
  verification                    {} or, for a plan checked by measurement (``select(verify=...)``): measured_loss_mse
                                  and measured_loss_mse_stderr on the verification sequences, samples, rounds, the
                                  additive budget the last solve used, the bound ("estimate" or "upper"), warnings
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

from ..candidates import BASE
from .io import write_json

FORMAT, VERSION = "mpq.Plan", 2


@dataclass(frozen=True, eq=False)
class Plan:
    mapping: Mapping[str, str]
    predicted_loss_mse: float
    predicted_gain: float
    gain_unit: str = "seconds"
    baseline_seconds: float = float("nan")
    predicted_memory: Optional[float] = None
    candidates: tuple = ()
    objective: Mapping = field(default_factory=dict)
    solver: Mapping = field(default_factory=dict)
    artifacts: Mapping = field(default_factory=dict)
    act_scales: Mapping[str, float] = field(default_factory=dict)
    implementations: Mapping[str, str] = field(default_factory=dict)
    predicted_loss_mse_stderr: Optional[float] = None
    verification: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "mapping", dict(self.mapping))
        object.__setattr__(self, "act_scales", {k: float(v) for k, v in self.act_scales.items()})
        object.__setattr__(self, "implementations", dict(self.implementations))
        object.__setattr__(self, "verification", dict(self.verification))
        for what, names in (("act_scales", self.act_scales), ("implementations", self.implementations)):
            stray = sorted(set(names) - set(self.mapping))
            if stray:
                raise ValueError(f"{what} names layers the plan does not map: {stray}")
        bad = {k: v for k, v in self.act_scales.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"act_scales must be positive finite numbers, got {bad}")
        object.__setattr__(self, "candidates", tuple(self.candidates))

    @property
    def quantized(self) -> dict[str, str]:
        """Only the layers that leave the model's own precision."""
        return {layer: c for layer, c in self.mapping.items() if c != BASE}

    @property
    def predicted_loss_rmse(self) -> float:
        return math.sqrt(max(self.predicted_loss_mse, 0.0))

    @property
    def predicted_speedup(self) -> float:
        """baseline / (baseline - gain) for timing gains; NaN when the baseline time is unknown."""
        t0 = self.baseline_seconds
        if self.gain_unit != "seconds" or not t0 or math.isnan(t0) or t0 - self.predicted_gain <= 0:
            return float("nan")
        return t0 / (t0 - self.predicted_gain)

    def counts(self) -> dict[str, int]:
        """How many layers run in each candidate."""
        out: dict[str, int] = {}
        for c in self.mapping.values():
            out[c] = out.get(c, 0) + 1
        return out

    def summary(self) -> str:
        parts = ", ".join(f"{c}: {n}" for c, n in sorted(self.counts().items()))
        speed = self.predicted_speedup
        speed_txt = f", predicted speedup {speed:.3f}x" if not math.isnan(speed) else ""
        se = self.predicted_loss_mse_stderr
        se_txt = f" ± {se:.2g}" if se is not None and math.isfinite(se) else ""
        v = self.verification
        v_txt = (f"; measured {v['measured_loss_mse']:.4g} ± {v['measured_loss_mse_stderr']:.2g} on "
                 f"{v['samples']} held-out sequences" if "measured_loss_mse" in v else "")
        return (f"Plan: {len(self.mapping)} layers ({parts}); predicted loss MSE {self.predicted_loss_mse:.4g}"
                f"{se_txt}{v_txt}, gain {self.predicted_gain:.4g} {self.gain_unit}{speed_txt}; solver "
                f"{self.solver.get('status', '?')}")

    # --- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        for key in ("baseline_seconds", "predicted_loss_mse", "predicted_gain", "predicted_loss_mse_stderr"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):  # unknown figures: null, as JSON has no NaN
                d[key] = None
        return {"format": FORMAT, "version": VERSION, "mpq": _version(), **d}

    def save(self, path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "Plan":
        path = os.fspath(path)
        try:
            with open(path) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable {FORMAT} file ({e})") from None
        return cls.from_dict(d, source=path)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "plan") -> "Plan":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"{source}: not a {FORMAT} (format {d.get('format') if isinstance(d, Mapping) else '?'!r})")
        if not isinstance(d.get("version"), int) or not 1 <= d["version"] <= VERSION:
            raise ValueError(f"{source}: {FORMAT} version {d.get('version')!r} is not one this mpq reads (1..{VERSION})")
        mapping = d.get("mapping")
        if not isinstance(mapping, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in mapping.items()):
            raise ValueError(f"{source}: 'mapping' must be an object of layer name -> candidate name")
        scales = d.get("act_scales", {})
        if not isinstance(scales, Mapping) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                      and not isinstance(v, bool) for k, v in scales.items()):
            raise ValueError(f"{source}: 'act_scales' must be an object of layer name -> number")
        impls = d.get("implementations", {})
        if not isinstance(impls, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in impls.items()):
            raise ValueError(f"{source}: 'implementations' must be an object of layer name -> implementation name")

        def number(key):  # null or absent: unknown
            v = _optional_number(d.get(key), source, key)
            return float("nan") if v is None else v

        return cls(mapping=mapping, predicted_loss_mse=number("predicted_loss_mse"),
                   predicted_gain=number("predicted_gain"), gain_unit=d.get("gain_unit", ""),
                   baseline_seconds=number("baseline_seconds"),
                   predicted_memory=d.get("predicted_memory"), candidates=tuple(d.get("candidates", ())),
                   objective=d.get("objective", {}), solver=d.get("solver", {}), artifacts=d.get("artifacts", {}),
                   act_scales=scales, implementations=impls,
                   predicted_loss_mse_stderr=_optional_number(d.get("predicted_loss_mse_stderr"), source,
                                                              "predicted_loss_mse_stderr"),
                   verification=_mapping(d.get("verification", {}), source, "verification"))


def _optional_number(x, source: str, key: str) -> Optional[float]:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{source}: {key!r} must be a number or null, got {type(x).__name__}")
    return float(x)


def _mapping(x, source: str, key: str) -> dict:
    if not isinstance(x, Mapping):
        raise ValueError(f"{source}: {key!r} must be an object, got {type(x).__name__}")
    return dict(x)


def _version() -> str:
    from .. import __version__
    return __version__
