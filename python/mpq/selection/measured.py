"""A loss budget that holds when measured: the selected plan is fake-quantized and its loss MSE against the base
model measured on verification sequences that calibration did not use; while the measurement is over the
budget, the additive budget the solver sees is tightened and the problem solved again (a solve costs
milliseconds, a measurement one forward pass over the verification set)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

BOUNDS = ("estimate", "upper")   # "within budget": the measured estimate, or estimate + 2 standard errors
# A measured loss MSE is a mean of squares, and per-sequence loss changes are heavy-tailed (a memorised passage can
# move 100x more than the rest: bench/RESULTS.md, "Where the held-out loss MSE comes from"); past this share of
# the sum in one sequence, the figure rests on that sequence and the plan says so.
CONCENTRATED_SHARE = 0.5


@dataclass(frozen=True)
class Verifier:
    """The model and held-out batches a plan is measured on (``select(verify=...)`` builds it from a tuple
    ``(model, batches)`` or ``(model, batches, loss_fn)``; the default loss is a causal LM's)."""
    model: torch.nn.Module
    batches: Sequence
    loss_fn: Optional[Callable] = None
    quantized_weights: Optional[object] = None  # the calibrated candidates' integers (the table's), for apply

    @classmethod
    def of(cls, verify, quantized_weights=None) -> "Verifier":
        if isinstance(verify, Verifier):
            if quantized_weights is not None and verify.quantized_weights is None:
                return dataclasses.replace(verify, quantized_weights=quantized_weights)
            return verify
        if not isinstance(verify, (tuple, list)) or len(verify) not in (2, 3):
            raise ValueError("verify must be (model, batches) or (model, batches, loss_fn)")
        v = cls(*verify, quantized_weights=quantized_weights)
        if not isinstance(v.model, torch.nn.Module):
            raise ValueError(f"verify: the model must be an nn.Module, got {type(v.model).__name__}")
        if isinstance(v.batches, (str, bytes)) or not len(v.batches):
            raise ValueError("verify: batches must be a non-empty sequence of batches")
        return v

    def losses(self, model) -> torch.Tensor:
        """Per-sample losses [N] of ``model`` on the batches, in float64."""
        from ..calibration.hooks import causal_lm_loss
        from ..models import model_inputs
        loss_fn = self.loss_fn or causal_lm_loss
        out = []
        with torch.no_grad():
            for b in self.batches:
                args, kwargs = model_inputs(b)
                out.append(loss_fn(model(*args, **kwargs), b).detach().double().reshape(-1))
        return torch.cat(out)


@dataclass(frozen=True)
class Measurement:
    """A plan's loss MSE against the base model on the verification batches: the mean of the per-sequence
    squared loss changes, its standard error, the largest sequence's share of the sum, and the effective number
    of sequences the mean rests on, (Σ q)² / Σ q² (Kish's; it equals the count when every q is alike)."""
    mse: float
    stderr: float
    largest_share: float
    effective_samples: float

    @classmethod
    def of(cls, sq: torch.Tensor) -> "Measurement":
        n, total = sq.numel(), float(sq.sum())
        se = float(sq.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        if total <= 0:  # nothing moved: no sequence dominates
            return cls(0.0, se, 0.0, float(n))
        return cls(total / n, se, float(sq.max()) / total, total ** 2 / float((sq ** 2).sum()))

    def fields(self) -> dict:
        return {"measured_loss_mse": self.mse, "measured_loss_mse_stderr": self.stderr,
                "largest_sample_share": self.largest_share, "effective_samples": self.effective_samples}

    def warning(self) -> Optional[str]:
        if self.largest_share <= CONCENTRATED_SHARE:
            return None
        return (f"one verification sequence holds {100 * self.largest_share:.0f}% of the measured loss MSE "
                f"(effective samples {self.effective_samples:.1f}): the figure rests on that sequence; verify on "
                f"more text")


def measure(verifier: Verifier, base_losses: torch.Tensor, plan) -> Measurement:
    """The loss MSE of ``plan`` against the base model on the verification batches, with its spread."""
    from ..application.swap import apply
    if not plan.quantized:
        return Measurement(0.0, 0.0, 0.0, float(base_losses.numel()))
    qmodel = apply(verifier.model, plan, mode="fake", quantized_weights=verifier.quantized_weights)
    return Measurement.of((verifier.losses(qmodel) - base_losses) ** 2)


def verified_select(solve: Callable[[float], object], budget: float, verifier: Verifier, *, bound: str = "estimate",
                    max_rounds: int = 8, calibration_fingerprint: str = ""):
    """The plan of the largest additive budget ≤ ``budget`` whose measured loss MSE (or its upper bound) is within
    ``budget``, found in at most ``max_rounds`` measurements: the first solve at ``budget``, then a proportional
    guess and a bisection (in log space) between the largest budget that held and the smallest that did not.
    ``solve(additive_budget)`` returns a Plan. @raises ValueError when no quantized plan held within the rounds,
    naming the smallest loss MSE measured."""
    if bound not in BOUNDS:
        raise ValueError(f"verify_bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    if max_rounds < 1:
        raise ValueError(f"verify_rounds must be >= 1, got {max_rounds}")
    warnings = _overlap_warnings(verifier, calibration_fingerprint)
    base = verifier.losses(verifier.model)
    tried = []  # (additive budget, plan, Measurement, holds)
    held, failed = None, None
    b = budget
    for _ in range(max_rounds):
        try:
            plan = solve(b)
        except ValueError:  # tightened below what the pinned layers alone cost: no plan there
            break
        m = measure(verifier, base, plan)
        value = m.mse + 2 * m.stderr if bound == "upper" and math.isfinite(m.stderr) else m.mse
        holds = value <= budget
        tried.append((b, plan, m, holds))
        if holds:
            held = b if held is None else max(held, b)
        else:
            failed = b if failed is None else min(failed, b)
        if holds and b == budget:  # the plain solve already holds: nothing to tighten
            break
        if held is None:  # proportional guess: the measured/predicted ratio seen at this budget
            ratio = value / plan.predicted_loss_mse if plan.predicted_loss_mse > 0 else 4.0
            b = b / max(ratio, 1.5)
        else:
            b = math.sqrt(held * failed) if held > 0 else failed / 4
        if failed is not None and held is not None and failed / max(held, 1e-300) < 1.02:
            break
    ok = [t for t in tried if t[3] and t[1].quantized] or [t for t in tried[:1] if not t[1].quantized]
    if not ok:  # the solve quantized layers, and every tightening that still did broke the budget
        quantized = [t for t in tried if t[1].quantized]
        least = (f"the least loss MSE a quantized plan measured was {min(t[2].mse for t in quantized):.4g}: raise "
                 f"the budget to at least that" if quantized else "the tightened budgets left no layer quantized")
        raise ValueError(f"no quantized plan measured within the loss budget {budget:.4g} in {len(tried)} rounds "
                         f"(bound {bound!r}); {least}, or select without verify")
    b, plan, m, _ = max(ok, key=lambda t: (t[1].predicted_gain, -t[2].mse))
    concentrated = m.warning()
    if concentrated:
        warnings = warnings + [concentrated]
    verification = {**m.fields(), "samples": int(base.numel()),
                    "rounds": len(tried), "additive_budget": b, "budget": budget, "bound": bound,
                    "tried": [{"additive_budget": t[0], "measured_loss_mse": t[2].mse, "stderr": t[2].stderr,
                               "holds": t[3], "layers_quantized": len(t[1].quantized)} for t in tried]}
    if warnings:
        verification["warnings"] = warnings
    return _with_verification(plan, verification)


def measured_front(plans, verifier: Verifier, calibration_fingerprint: str = "") -> list:
    """Every plan of a front measured once on the verification batches (no tightening)."""
    warnings = _overlap_warnings(verifier, calibration_fingerprint)
    base = verifier.losses(verifier.model)
    out = []
    for plan in plans:
        m = measure(verifier, base, plan)
        v = {**m.fields(), "samples": int(base.numel()), "rounds": 1,
             "budget": plan.objective.get("value"), "holds": m.mse <= plan.objective.get("value", math.inf)}
        concentrated = m.warning()
        point_warnings = warnings + ([concentrated] if concentrated else [])
        if point_warnings:
            v["warnings"] = point_warnings
        out.append(_with_verification(plan, v))
    return out


def _overlap_warnings(verifier: Verifier, calibration_fingerprint: str) -> list:
    from ..calibration.hooks import fingerprint
    if calibration_fingerprint and fingerprint(list(verifier.batches)) == calibration_fingerprint:
        return ["the verification batches are the calibration batches: the measurement is not held out"]
    return []


def _with_verification(plan, verification: dict):
    from dataclasses import replace
    return replace(plan, verification=verification)
