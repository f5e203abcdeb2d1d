"""One no-grad pass of the unquantized model over the calibration batches, recording per Linear the input
statistics the algorithms need: H = Σ x xᵀ (GPTQ, AWQ's error), mean |x_j| (AWQ), max |x_j| and the signed range
of every channel (SmoothQuant, its static scales). Padded tokens (attention_mask == 0) are left out, as the static
scale pass does. A layer whose inputs hold NaN/Inf is flagged, not averaged over: its calibrated candidates are
then unavailable."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..models import model_inputs, padding_mask, to_device, unpadded


@dataclass
class InputStats:
    in_features: int
    hessian: Optional[torch.Tensor] = None     # float32 [in, in], Σ over tokens of x xᵀ (None: not asked for)
    abs_sum: torch.Tensor = field(default=None)
    abs_max: torch.Tensor = field(default=None)
    ch_min: torch.Tensor = field(default=None)
    ch_max: torch.Tensor = field(default=None)
    tokens: int = 0
    non_finite: bool = False

    def __post_init__(self):
        k = self.in_features
        self.abs_sum = torch.zeros(k, dtype=torch.float64)
        self.abs_max = torch.zeros(k)
        self.ch_min = torch.full((k,), float("inf"))
        self.ch_max = torch.full((k,), float("-inf"))

    @property
    def abs_mean(self) -> torch.Tensor:
        return (self.abs_sum / max(self.tokens, 1)).float()

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.in_features).float()
        if not x.shape[0]:
            return
        if self.abs_sum.device != x.device:  # accumulate where the model runs (a GPU's inputs stay there)
            self.to(x.device)
        if not bool(torch.isfinite(x).all()):
            self.non_finite = True
            return
        self.tokens += x.shape[0]
        a = x.abs()
        self.abs_sum += a.sum(0, dtype=torch.float64)
        torch.maximum(self.abs_max, a.amax(0), out=self.abs_max)
        torch.minimum(self.ch_min, x.amin(0), out=self.ch_min)
        torch.maximum(self.ch_max, x.amax(0), out=self.ch_max)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)

    def to(self, device) -> "InputStats":
        for name in ("hessian", "abs_sum", "abs_max", "ch_min", "ch_max"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    def problem(self) -> str:
        """Why the calibrated algorithms cannot use these statistics ("" when they can)."""
        if self.non_finite:
            return "its calibration inputs hold NaN or Inf"
        if not self.tokens:
            return "it saw no calibration activations (never called, or only on padded tokens)"
        return ""


def collect_input_stats(model, layers, batches, device, hessian_for: set) -> dict:
    """{layer index: InputStats} for ``layers`` [(name, module)]; H only for the indices in ``hessian_for``."""
    stats = {}
    for i, (_, mod) in enumerate(layers):
        st = InputStats(mod.in_features)
        if i in hessian_for:
            st.hessian = torch.zeros(mod.in_features, mod.in_features)
        stats[i] = st
    state = {"mask": None}

    def make_hook(i):
        def hook(module, args):
            x = args[0]
            x = unpadded(x, state["mask"])
            stats[i].add(x)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        with torch.no_grad():
            for b in batches:
                b = to_device(b, device)
                mask = padding_mask(b)
                state["mask"] = None if mask is None else mask.to("cpu")
                args, kwargs = model_inputs(b)
                model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats
