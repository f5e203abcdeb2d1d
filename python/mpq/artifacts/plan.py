"""``Plan``: the chosen candidate of every layer, with what the selection predicted for it.

File format ``mpq.Plan`` version 3 (version 1 files, without ``act_scales``, and version 2 files, whose scales are
numbers only, still load; a plan whose scales are all numbers is written as version 2, so that an older mpq reads
it, and one with a list as version 3, which an older mpq refuses by its version): a JSON object (people read and
edit plans) with keys
  format, version, mpq            "mpq.Plan", 2 or 3, the writer's version
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
                                  activation scales: the calibrated scales, so ``apply`` runs what was measured. A
                                  Linear's is a number; an attention layer's (``mpq.attention``) a list (version 3):
                                  a matmul's [A's, B's], a KV cache's [tensor's] or one per K/V head
  implementations                 {layer: CPU implementation} the profile timed each quantized layer with (cpu
                                  backend only), so ``apply(mode="native")`` installs exactly those
  predicted_loss_mse_stderr       the standard error of predicted_loss_mse, from the per-sample δ (null: unknown)
  verification                    {} or, for a plan checked by measurement (``select(verify=...)``): measured_loss_mse
                                  and measured_loss_mse_stderr on the verification sequences, samples, rounds, the
                                  additive budget the last solve used, the bound ("estimate" or "upper"), warnings

A Pareto front file (``mpq select --pareto N``) is a JSON list of such objects: ``Plan.load_front`` reads them all,
``Plan.load(path, index=i)`` plan i. Reading checks the type of every field above and refuses what JSON cannot hold
(NaN, Infinity) and nesting deeper than ``io.MAX_DEPTH``, each with one ValueError naming the file and the field.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

from ..candidates import BASE
from .io import (as_count, as_names, as_number, as_object, as_optional_number, as_str, brief, read_json,
                 take, write_json)

FORMAT, VERSION = "mpq.Plan", 3
LIST_SCALES_VERSION = 3  # the first version whose act_scales may hold lists


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
    act_scales: Mapping[str, "float | list[float]"] = field(default_factory=dict)
    implementations: Mapping[str, str] = field(default_factory=dict)
    predicted_loss_mse_stderr: Optional[float] = None
    verification: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "mapping", dict(self.mapping))
        object.__setattr__(self, "act_scales", {k: _scale_value(k, v) for k, v in self.act_scales.items()})
        object.__setattr__(self, "implementations", dict(self.implementations))
        object.__setattr__(self, "verification", dict(self.verification))
        for what, names in (("act_scales", self.act_scales), ("implementations", self.implementations)):
            stray = sorted(set(names) - set(self.mapping))
            if stray:
                raise ValueError(f"{what} names layers the plan does not map: {stray}")
        bad = {k: v for k, v in self.act_scales.items()
               if not all(math.isfinite(x) and x > 0 for x in (v if isinstance(v, list) else [v]))}
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
        if "effective_samples" in v and v.get("largest_sample_share", 0) > 0.5:
            v_txt += f" (effectively {v['effective_samples']:.1f} of them)"
        warn_txt = "".join(f"\nwarning: {w}" for w in v.get("warnings", ()))
        return (f"Plan: {len(self.mapping)} layers ({parts}); predicted loss MSE {self.predicted_loss_mse:.4g}"
                f"{se_txt}{v_txt}, gain {self.predicted_gain:.4g} {self.gain_unit}{speed_txt}; solver "
                f"{self.solver.get('status', '?')}{warn_txt}")

    # --- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        for key in ("baseline_seconds", "predicted_loss_mse", "predicted_gain", "predicted_loss_mse_stderr"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):  # unknown figures: null, as JSON has no NaN
                d[key] = None
        version = LIST_SCALES_VERSION if any(isinstance(v, list) for v in self.act_scales.values()) else 2
        return {"format": FORMAT, "version": version, "mpq": _version(), **d}

    def save(self, path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path, index: Optional[int] = None) -> "Plan":
        """The plan in a plan file; with ``index``, plan ``index`` of a Pareto front file (``mpq select --pareto``,
        a JSON list of plans). @raises ValueError naming the file (and the field) when it is not one readable plan
        (a front without ``index`` says how many plans it holds); FileNotFoundError when it is missing."""
        path = os.fspath(path)
        return cls.from_json(read_json(path, FORMAT), source=path, index=index)

    @classmethod
    def load_front(cls, path) -> list["Plan"]:
        """Every plan of a Pareto front file (``mpq select --pareto N``: a JSON list of plans), in its order.
        @raises ValueError naming the file and the plan when it is not a list of readable plans."""
        path = os.fspath(path)
        d = read_json(path, f"{FORMAT} front")
        if not isinstance(d, list):
            raise ValueError(f"{path}: holds one plan, not a Pareto front (a JSON list of plans)"
                             if isinstance(d, dict) else f"{path}: a JSON {_json_type(d)}, not a Pareto front "
                             "(a JSON list of plans)")
        return [cls.from_dict(p, source=f"{path}: plan [{i}]") for i, p in enumerate(d)]

    @classmethod
    def from_json(cls, d, source: str = "plan", index: Optional[int] = None) -> "Plan":
        """A plan from a parsed plan file (an object) or, with ``index``, from a parsed front file (a list).
        @raises ValueError naming ``source`` when ``d`` is neither or ``index`` does not fit it."""
        if isinstance(d, list):
            if not all(isinstance(p, dict) for p in d):
                raise ValueError(f"{source}: a JSON list that is not a Pareto front (a list of plan objects)")
            if index is None:
                raise ValueError(f"{source}: a Pareto front of {_plans(len(d))}, not one plan: pick one by its "
                                 f"index{_range(len(d), '; --index I on the command line')}")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(d):
                raise ValueError(f"{source}: index {index!r} is not one of the front's {_plans(len(d))}"
                                 f"{_range(len(d))}")
            return cls.from_dict(d[index], source=f"{source}: plan [{index}]")
        if index is not None:
            raise ValueError(f"{source}: holds one plan, not a Pareto front: an index does not apply")
        return cls.from_dict(d, source=source)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "plan") -> "Plan":
        """@raises ValueError naming ``source`` and the field for anything a plan file cannot hold."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            got = brief(d.get("format")) if isinstance(d, Mapping) else f"?, a JSON {_json_type(d)}"
            raise ValueError(f"{source}: not a {FORMAT} (format {got})")
        version = d.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
            raise ValueError(f"{source}: {FORMAT} version {brief(version)} is not one this mpq reads (1..{VERSION})")
        mapping = d.get("mapping")
        if not isinstance(mapping, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in mapping.items()):
            raise ValueError(f"{source}: 'mapping' must be an object of layer name -> candidate name")
        scales = d.get("act_scales", {})
        lists = version >= LIST_SCALES_VERSION  # attention layers' scales: a list each
        if not isinstance(scales, Mapping) or not all(isinstance(k, str) and (_is_number(v) or (
                lists and isinstance(v, list) and v and all(_is_number(x) for x in v))) for k, v in scales.items()):
            raise ValueError(f"{source}: 'act_scales' must be an object of layer name -> number"
                             + (" or non-empty list of numbers" if lists else
                                f" (lists of scales need version {LIST_SCALES_VERSION})"))
        scales = {k: [as_number(x, f"{source}: 'act_scales.{k}[{i}]'") for i, x in enumerate(v)]
                  if isinstance(v, list) else as_number(v, f"{source}: 'act_scales.{k}'") for k, v in scales.items()}
        impls = d.get("implementations", {})
        if not isinstance(impls, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in impls.items()):
            raise ValueError(f"{source}: 'implementations' must be an object of layer name -> implementation name")

        def number(key):  # null or absent: unknown
            v = take(d, key, source, as_optional_number, None)
            return float("nan") if v is None else v

        objective = take(d, "objective", source, as_object, {})
        take(objective, "kind", f"{source}: 'objective'", as_str, None)
        take(objective, "value", f"{source}: 'objective'", as_optional_number, None)
        solver = take(d, "solver", source, as_object, {})
        for key in ("name", "status"):
            take(solver, key, f"{source}: 'solver'", as_str, None)
        for key in ("bound", "seconds"):
            take(solver, key, f"{source}: 'solver'", as_optional_number, None)
        verification = take(d, "verification", source, as_object, {})
        if "measured_loss_mse" in verification:  # what summary() prints
            where = f"{source}: 'verification'"
            take(verification, "measured_loss_mse", where, as_number)
            take(verification, "measured_loss_mse_stderr", where, as_number)
            take(verification, "samples", where, as_count)
        fields = dict(predicted_loss_mse=number("predicted_loss_mse"), predicted_gain=number("predicted_gain"),
                      gain_unit=take(d, "gain_unit", source, as_str, ""), baseline_seconds=number("baseline_seconds"),
                      predicted_memory=take(d, "predicted_memory", source, as_optional_number, None),
                      candidates=take(d, "candidates", source, as_names, []),
                      artifacts=take(d, "artifacts", source, as_object, {}),
                      predicted_loss_mse_stderr=take(d, "predicted_loss_mse_stderr", source, as_optional_number,
                                                     None))
        try:
            return cls(mapping=mapping, objective=objective, solver=solver, act_scales=scales, implementations=impls,
                       verification=verification, **fields)
        except ValueError as e:  # what __post_init__ checks across the fields
            raise ValueError(f"{source}: {e}") from None


def load_plan_or_front(path) -> "Plan | list[Plan]":
    """The plan of a plan file, or every plan of a Pareto front file (a JSON list of plans), reading it once.
    @raises ValueError naming the file as ``Plan.load`` does."""
    path = os.fspath(path)
    d = read_json(path, FORMAT)
    if isinstance(d, list):
        return [Plan.from_dict(p, source=f"{path}: plan [{i}]") for i, p in enumerate(d)]
    return Plan.from_dict(d, source=path)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _scale_value(layer: str, v) -> "float | list[float]":
    """A layer's static scale as the plan holds it: a float, or a list of floats (an attention layer's)."""
    if isinstance(v, (list, tuple)):
        if not v or not all(_is_number(x) for x in v):
            raise ValueError(f"act_scales[{layer!r}] must be a number or a non-empty list of numbers, got {v!r}")
        return [float(x) for x in v]
    if getattr(v, "ndim", 0):  # a numpy / torch array of scales (a 0-d one, or a numpy scalar, is a number)
        return _scale_value(layer, v.tolist())
    return float(v)


def _plans(n: int) -> str:
    return f"{n} plan{'' if n == 1 else 's'}"


def _range(n: int, more: str = "") -> str:
    return f" ({'0..' + str(n - 1) if n else 'none'}{more})"


def _json_type(x) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(x), "number")


def _version() -> str:
    from .. import __version__
    return __version__
