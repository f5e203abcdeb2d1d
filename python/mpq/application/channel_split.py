"""Run a ChannelPlan: a Linear whose output channels are split into precision classes, one kernel per class.

At apply time the rows of each class are gathered once into a Linear of their own (W[rows], b[rows]); the class's
module runs it: ``FakeQuantLinear`` (mode "fake": the candidate's own quantizers on those rows), the CPU
registry's kernel (mode "native": ``cpu_kernels.native_linear``, the kernels ``mpq.profile`` times), or that
Linear itself for "base". The classes' outputs are concatenated and put back in the layer's row order by one
``index_select`` with the inverse permutation, so the module is a drop-in replacement and nothing else changes.
Folding the permutation into the next layer instead (permuting its input columns) is exact only where the next
layer reads this output directly; in a decoder block a residual sum or a norm sits between most pairs, so it is
not done. Activations are quantized by each class's module for itself (classes with the same activation format
repeat that work; weight-only classes share the unquantized input).

Quantizers: per-channel and grouped weight formats quantize a row from that row alone, so the split computes
exactly what calibration measured; a format with one scale per tensor (fp8_static, fp8_gaudi2) takes the scale of
its class's rows, where calibration used the whole layer's.
Only the CPU has split kernels here (the registry's kernels run any row count their shapes admit): a native
channel plan on another device is refused with that reason.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..artifacts.channel_plan import ChannelPlan
from ..candidates import BASE, get_candidate
from ..models import copy_sharing_tensors, set_module

__all__ = ["ChannelSplitLinear", "apply_channels", "row_subset"]


def row_subset(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """A Linear computing output channels ``rows`` of ``linear`` (copies of those rows of W and b)."""
    sub = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    with torch.no_grad():
        sub.weight.copy_(linear.weight.detach().index_select(0, rows))
        if linear.bias is not None:
            sub.bias.copy_(linear.bias.detach().index_select(0, rows))
    sub.requires_grad_(linear.weight.requires_grad)
    return sub


class ChannelSplitLinear(nn.Module):
    """y = linear(x) with output rows of class k computed by ``parts[k]`` on rows ``rows[k]`` (module docstring)."""

    def __init__(self, linear: nn.Linear, classes: Mapping[str, np.ndarray], mode: str = "fake",
                 act_scales: Optional[Mapping[str, float]] = None):
        super().__init__()
        if mode not in ("fake", "native"):
            raise ValueError(f"mode must be 'fake' or 'native', got {mode!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        rows = [torch.as_tensor(np.asarray(r), dtype=torch.long) for r in classes.values()]
        every = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        if len(every) != self.out_features or not torch.equal(every.sort().values, torch.arange(self.out_features)):
            raise ValueError(f"the classes must cover each of the {self.out_features} output rows once, got "
                             f"{len(every)} rows")
        self.candidates = tuple(classes)
        self.row_counts = tuple(len(r) for r in rows)
        act_scales = dict(act_scales or {})
        parts = []
        for cname, r in zip(self.candidates, rows):
            sub = row_subset(linear, r.to(linear.weight.device))
            parts.append(_class_module(sub, cname, mode, act_scales.get(cname)))
        self.parts = nn.ModuleList(parts)
        inverse = torch.empty_like(every)
        inverse[every] = torch.arange(len(every))
        # rows already in order (one class, or classes of consecutive rows in order) need no gather
        self.register_buffer("inverse", None if torch.equal(every, torch.arange(len(every))) else
                             inverse.to(linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([p(x) for p in self.parts], dim=-1) if len(self.parts) > 1 else self.parts[0](x)
        return y if self.inverse is None else y.index_select(-1, self.inverse)

    def extra_repr(self) -> str:
        classes = ", ".join(f"{c}: {n}" for c, n in zip(self.candidates, self.row_counts))
        return f"in_features={self.in_features}, out_features={self.out_features}, rows={{{classes}}}"


def _class_module(sub: nn.Linear, cname: str, mode: str, act_scale: Optional[float]) -> nn.Module:
    if cname == BASE:
        return sub
    cand = get_candidate(cname)
    if cand.act_static and act_scale is None:
        raise ValueError(f"candidate {cname!r} has static activation scales: the channel plan carries none for it")
    if mode == "fake":
        from .fake_linear import FakeQuantLinear
        return FakeQuantLinear(sub, cand, act_scale if cand.act_static else None)
    from .cpu_kernels import native_linear
    return native_linear(sub, cname, act_scale if cand.act_static else None)


def apply_channels(model: nn.Module, plan: ChannelPlan, mode: str = "fake") -> nn.Module:
    """A copy of ``model`` whose planned layers are ``ChannelSplitLinear`` (a layer with one class becomes that
    class's module). Fake: a deep copy; native: the untouched layers share the input model's tensors.
    @raises ValueError for a layer that is not an nn.Linear of the model or has another row count, a native plan on
    a device without split kernels (every device but the CPU), or a class the CPU kernels cannot run (with the
    kernel's reason: e.g. int4 rows not a multiple of 16)."""
    if not isinstance(plan, ChannelPlan):
        raise ValueError(f"apply_channels expects a ChannelPlan, got {type(plan).__name__}")
    if mode not in ("fake", "native"):
        raise ValueError(f"mode must be 'fake' or 'native', got {mode!r}")
    modules = dict(model.named_modules())
    for layer, n in zip(plan.layers, plan.out_features):
        mod = modules.get(layer)
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"layer {layer!r} of the channel plan is not an nn.Linear of the model")
        if mod.out_features != n:
            raise ValueError(f"layer {layer!r}: the channel plan has {n} output rows, the model's Linear "
                             f"{mod.out_features}")
        if mode == "native" and mod.weight.device.type != "cpu":
            raise ValueError(f"layer {layer!r}: a channel plan runs one kernel per precision class, and "
                             f"{mod.weight.device.type} has no split kernel here (the CPU registry's kernels run "
                             "the classes): apply it on the CPU, or use mode='fake'")
    new = copy.deepcopy(model) if mode == "fake" else copy_sharing_tensors(model)
    new_modules = dict(new.named_modules())
    for layer in plan.layers:
        classes = plan.classes(layer)
        if list(classes) == [BASE]:
            continue
        repl = ChannelSplitLinear(new_modules[layer], classes, mode, plan.act_scales.get(layer))
        if len(repl.parts) == 1:
            repl = repl.parts[0]
        set_module(new, layer, repl)
    return new
