"""``SensitivityTable``: the output of ``mpq.calibrate`` — per (layer, candidate) loss MSE s[l, c] = mean_n δ[n,l,c]²
and the per-sample first-order loss changes δ[n, l, c] behind it (design.md, "The method").

Optionally it also holds other per-sample score forms q[n, l, c] from the same pass (``mpq.calibration.scores``:
"per_token", "elementwise"); ``score`` names the form that ``mse`` and the standard errors report. A form other
than "first_order" is put in loss-MSE units by one scale per table, ``score_scale`` = the median over (layer,
candidate) of mean_n δ² / mean_n q: each layer's own first-order loss MSE is the figure the single-layer
measurements confirm (bench/RESULTS.md), and one scale leaves every ranking and every plan choice of the form
unchanged, so ``select`` solves exactly what the form says.

File format ``mpq.SensitivityTable`` version 1 (an .npz written by ``mpq.artifacts.io``; no pickle):
  meta (JSON)     format, version, mpq (writer's version), layers [L names], candidates [C names], n_samples,
                  data_fingerprint (sha256 of the calibration batches), loss (description), model (class name),
                  seconds, coverage (which parameters the layers cover: ``mpq.coverage.Coverage.to_dict``), plus
                  any extra ``info`` keys
  mse             [L, C] float64  s[l, c]; +inf where the candidate cannot quantize the layer (group size)
  delta           [N, L, C] float64  δ[n, l, c] = weight part + activation part; NaN where not applicable
  delta_weight    [N, L, C] float64  the weight part ⟨∂ℓ_n/∂W, Q(W) − W⟩ alone
  act_scales      [L, C] float32  the static activation scale calibrated for static candidates; NaN otherwise
  act_zero_points [L, C] float32  their zero points (0 for symmetric formats)
  score_NAME      [N, L, C] float64  optional: the per-sample values of score form NAME; NaN where not applicable
  meta.active_score  the form ``mse`` reports (absent: "first_order")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

import numpy as np

from .io import array, as_count, as_names, as_str, load_npz, save_npz, take

FORMAT, VERSION = "mpq.SensitivityTable", 1
# keys of the file's meta record that the table itself writes: an ``info`` key of the same name would be lost
RESERVED = ("format", "version", "mpq", "layers", "candidates", "n_samples", "data_fingerprint", "active_score")
FIRST_ORDER = "first_order"
SCORE_FORMS = (FIRST_ORDER, "per_token", "elementwise")  # the forms of mpq.calibration.scores



def _check_info(info) -> None:
    clash = sorted(set(info) & set(RESERVED))
    if clash:
        raise ValueError(f"info keys {clash} are reserved by the {FORMAT} file format; rename them")


@dataclass(frozen=True, eq=False)
class SensitivityTable:
    layers: tuple
    candidates: tuple
    delta: np.ndarray
    delta_weight: np.ndarray
    act_scales: np.ndarray
    act_zero_points: np.ndarray
    data_fingerprint: str = ""
    info: Mapping = field(default_factory=dict)
    # the calibrated (GPTQ/AWQ/SmoothQuant) integers behind some candidates' δ: not in the table's file (it is
    # large), saved with ``quantized_weights.save`` and passed to ``mpq.apply``
    quantized_weights: Optional[object] = None
    # other per-sample score forms {name: [N, L, C]} and the one that ``mse`` reports
    scores: Mapping = field(default_factory=dict)
    score: str = FIRST_ORDER

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        object.__setattr__(self, "candidates", tuple(str(x) for x in self.candidates))
        L, C = len(self.layers), len(self.candidates)
        d = np.asarray(self.delta, np.float64)
        if d.ndim != 3 or d.shape[1:] != (L, C):
            raise ValueError(f"delta must have shape [N, {L}, {C}], got {d.shape}")
        object.__setattr__(self, "delta", d)
        dw = np.asarray(self.delta_weight, np.float64)
        if dw.shape != d.shape:
            raise ValueError(f"delta_weight must have delta's shape {d.shape}, got {dw.shape}")
        object.__setattr__(self, "delta_weight", dw)
        for name in ("act_scales", "act_zero_points"):
            a = np.asarray(getattr(self, name), np.float32)
            if a.shape != (L, C):
                raise ValueError(f"{name} must have shape [{L}, {C}], got {a.shape}")
            object.__setattr__(self, name, a)
        object.__setattr__(self, "info", dict(self.info))
        _check_info(self.info)
        forms = {}
        for name, q in dict(self.scores).items():
            if name not in SCORE_FORMS[1:]:
                raise ValueError(f"unknown score form {name!r}: the extra forms are {', '.join(SCORE_FORMS[1:])}")
            q = np.asarray(q, np.float64)
            if q.shape != d.shape:
                raise ValueError(f"score {name!r} must have delta's shape {d.shape}, got {q.shape}")
            forms[name] = q
        object.__setattr__(self, "scores", forms)
        if self.score != FIRST_ORDER and self.score not in forms:
            raise ValueError(f"score {self.score!r} was not calibrated: this table holds "
                             f"{', '.join(self.score_forms)} (calibrate with scores=(..., {self.score!r}))")
        object.__setattr__(self, "_scale", self._fit_scale())

    # --- the numbers -------------------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.delta.shape[0])

    @property
    def applicable(self) -> np.ndarray:
        """[L, C] bool: whether the candidate can quantize the layer (why not: ``info["unavailable"]``)."""
        return ~np.isnan(self.delta).any(axis=0) if self.n_samples else np.ones(self.delta.shape[1:], bool)

    @property
    def score_forms(self) -> tuple:
        """The score forms this table holds ("first_order" always)."""
        return (FIRST_ORDER,) + tuple(f for f in SCORE_FORMS[1:] if f in self.scores)

    def with_score(self, score: str) -> "SensitivityTable":
        """The same table reporting score form ``score`` (one of ``score_forms``). @raises ValueError."""
        if score not in SCORE_FORMS:
            raise ValueError(f"unknown score {score!r}: choose from {', '.join(SCORE_FORMS)}")
        return self if score == self.score else replace(self, score=score)

    def _fit_scale(self) -> float:
        if self.score == FIRST_ORDER:
            return 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            fo = np.mean(self.delta ** 2, axis=0)
            q = np.mean(self.scores[self.score], axis=0)
            ratio = fo / q
        ok = np.isfinite(ratio) & (fo > 0) & (q > 0)
        return float(np.median(ratio[ok])) if ok.any() else 1.0

    @property
    def score_scale(self) -> float:
        """The factor that puts the active score form in loss-MSE units (module docstring); 1 for first_order."""
        return self._scale

    @property
    def per_sample(self) -> np.ndarray:
        """[N, L, C] the active form's per-sample values in loss-MSE units: δ² for first_order, else the form's
        values × ``score_scale``; NaN where not applicable."""
        if self.score == FIRST_ORDER:
            return self.delta ** 2
        return self.scores[self.score] * self._scale

    @property
    def mse(self) -> np.ndarray:
        """[L, C] s[l, c] = mean_n δ[n,l,c]² (or the active score form's mean, in loss-MSE units); +inf where not
        applicable."""
        with np.errstate(invalid="ignore"):
            s = np.mean(self.per_sample, axis=0) if self.n_samples else np.zeros(self.delta.shape[1:])
        return np.where(self.applicable, s, np.inf)

    @property
    def mse_stderr(self) -> np.ndarray:
        """[L, C] standard error of s (std of δ² over samples / √N): a confidence interval is s ± 2·stderr."""
        n = self.n_samples
        if n < 2:
            return np.full(self.delta.shape[1:], np.nan)
        return np.std(self.per_sample, axis=0, ddof=1) / np.sqrt(n)

    def index(self, layer: str) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ValueError(f"layer {layer!r} is not in this table") from None

    def _plan_idx(self, plan: Mapping[str, str]):
        li, ci = [], []
        for layer, cand in plan.items():
            if cand == "base":
                continue
            if cand not in self.candidates:
                raise ValueError(f"candidate {cand!r} was not calibrated (table has {', '.join(self.candidates)})")
            li.append(self.index(layer))
            ci.append(self.candidates.index(cand))
        return np.array(li, int), np.array(ci, int)

    def predicted_mse(self, plan: Mapping[str, str]) -> float:
        """Σ_l s[l, plan(l)]: the additive model (no cross terms). ``plan`` maps layer → candidate ("base": none)."""
        li, ci = self._plan_idx(plan)
        return float(self.mse[li, ci].sum())

    def predicted_mse_stderr(self, plan: Mapping[str, str]) -> float:
        """Standard error of ``predicted_mse``: the layers share their samples, so it is the spread of the
        per-sample sums Σ_l δ[n, l, plan(l)]² over samples / √N, not a sum of the layers' errors."""
        li, ci = self._plan_idx(plan)
        if self.n_samples < 2:
            return float("nan")
        per_sample = self.per_sample[:, li, ci].sum(axis=1)
        return float(np.std(per_sample, ddof=1) / np.sqrt(self.n_samples))

    def plan_mse_with_cross_terms(self, plan: Mapping[str, str]) -> float:
        """mean_n (Σ_l δ[n, l, plan(l)])²: the first-order model including the cross terms."""
        li, ci = self._plan_idx(plan)
        return float(np.mean(self.delta[:, li, ci].sum(axis=1) ** 2)) if self.n_samples else 0.0

    def cross_term_share(self, plan: Mapping[str, str]) -> float:
        """(with cross terms − additive) / with cross terms: the share of the plan's first-order MSE that the
        additive model drops."""
        full = self.plan_mse_with_cross_terms(plan)
        return float((full - self.predicted_mse(plan)) / full) if full else 0.0

    # --- reporting ---------------------------------------------------------------------------------------------
    def report(self, top: Optional[int] = None) -> str:
        """A per-layer text table: s[l, c] for every candidate (and the weight share of δ for the most sensitive
        candidate), layers sorted by their largest finite s, most sensitive first."""
        s = self.mse
        finite = np.where(np.isfinite(s), s, -1.0)
        order = np.argsort(-finite.max(axis=1), kind="stable")
        if top is not None:
            order = order[:top]
        width = max([len("layer")] + [len(self.layers[i]) for i in order])
        cw = max(10, max(len(c) for c in self.candidates) + 1)
        lines = [f"# {self.n_samples} samples, {len(self.layers)} layers, data {self.data_fingerprint[:12]}; "
                 + ("s = mean_n δ² (loss MSE)" if self.score == FIRST_ORDER else
                    f"s = {self.score_scale:.3g} × mean_n of score {self.score!r}") + ", ± = 2·stderr in %",
                 f"{'layer':<{width}} " + " ".join(f"{c:>{cw}}" for c in self.candidates) + "   ±%(max)"]
        err = self.mse_stderr
        for i in order:
            cells = []
            for j in range(len(self.candidates)):
                cells.append(f"{'n/a':>{cw}}" if not np.isfinite(s[i, j]) else f"{s[i, j]:>{cw}.3e}")
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = 200 * err[i] / s[i]
            rel = rel[np.isfinite(rel)]
            lines.append(f"{self.layers[i]:<{width}} " + " ".join(cells) +
                         (f"   {rel.max():6.1f}" if rel.size else ""))
        shown = {self.layers[i] for i in order}
        for layer, why in dict(self.info.get("unavailable") or {}).items():
            if layer in shown:
                lines.append(f"# n/a {layer}: " + "; ".join(f"{c}: {r}" for c, r in dict(why).items()))
        return "\n".join(lines)

    # --- files -------------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        _check_info(self.info)  # again: the dict may have been edited since
        meta = dict(self.info, layers=list(self.layers), candidates=list(self.candidates),
                    n_samples=self.n_samples, data_fingerprint=self.data_fingerprint)
        if self.score != FIRST_ORDER:
            meta["active_score"] = self.score
        save_npz(path, FORMAT, VERSION, meta, dict(
            mse=self.mse, delta=self.delta, delta_weight=self.delta_weight, act_scales=self.act_scales,
            act_zero_points=self.act_zero_points, **{f"score_{k}": v for k, v in self.scores.items()}))

    @classmethod
    def load(cls, path) -> "SensitivityTable":
        """@raises ValueError naming the file and the field for any file that is not a well-formed table (wrong
        types, shapes or dtypes, repeated names, a damaged archive); FileNotFoundError when it is missing."""
        path = os.fspath(path)
        meta, arrays = load_npz(path, FORMAT, VERSION)
        layers = take(meta, "layers", path, as_names)
        candidates = take(meta, "candidates", path, as_names)
        if not candidates:
            raise ValueError(f"{path}: 'candidates' is empty")
        n = take(meta, "n_samples", path, as_count)
        fingerprint = take(meta, "data_fingerprint", path, as_str, "")
        L, C = len(layers), len(candidates)
        delta = array(arrays, "delta", path, "f", (n, L, C))
        delta_weight = array(arrays, "delta_weight", path, "f", (n, L, C))
        act_scales = array(arrays, "act_scales", path, "f", (L, C))
        act_zero_points = array(arrays, "act_zero_points", path, "f", (L, C))
        array(arrays, "mse", path, "f", (L, C), optional=True)  # written for other readers; recomputed here
        scores = {k: array(arrays, f"score_{k}", path, "f", (n, L, C)) for k in SCORE_FORMS[1:]
                  if f"score_{k}" in arrays}
        unknown = sorted(k for k in arrays if k.startswith("score_") and k[len("score_"):] not in scores)
        if unknown:
            raise ValueError(f"{path}: unknown score arrays {unknown} (this mpq reads {', '.join(SCORE_FORMS[1:])})")
        active = take(meta, "active_score", path, as_str, FIRST_ORDER)
        info = {k: v for k, v in meta.items() if k not in RESERVED}
        try:
            return cls(layers, candidates, delta, delta_weight, act_scales, act_zero_points, fingerprint, info,
                       scores=scores, score=active)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        forms = "" if not self.scores else f", scores {list(self.score_forms)} reporting {self.score!r}"
        return (f"SensitivityTable({len(self.layers)} layers × {len(self.candidates)} candidates "
                f"{list(self.candidates)}, {self.n_samples} samples{forms})")
