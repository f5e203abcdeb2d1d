"""The routed forward: a stacked-experts module run as one pair of ``nn.Linear`` per expert, which mpq can hook,
fake-quantize and replace like any other Linear.

``RoutedExperts`` replaces a known stacked-experts module (``layouts.stacked_layout``) while mpq works on the model
(``routed_experts``, a context manager that puts the original back afterwards, also after an error). Expert e is
``RoutedExperts.expert(e)`` (submodule ``e``), an ``ExpertGemms`` with ``gate_up_proj`` (or ``up_proj``) and
``down_proj``: Linears whose weights are views of slice e of the stacked parameters (no copy; transposed layouts
give transposed views). So the table names expert e's GEMMs ``<experts module>.<e>.gate_up_proj`` and
``<experts module>.<e>.down_proj``, e.g. ``model.layers.0.mlp.experts.3.gate_up_proj``.

The forward is the experts' own eager loop (the one transformers' ``…Experts.forward`` runs): for every expert that
receives tokens, its rows of ``hidden_states``, the up GEMM, the module's own ``_apply_gate`` (or ``act_fn``), the
down GEMM, the optional post-expert norm, times the routing weight of that (token, slot), added into the output.
While an expert's GEMMs run, ``routing`` holds (token rows, number of tokens T), which calibration reads to give
each row to its sample (row t of the flattened [B·S, H] batch belongs to sample t // S).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from ..models import set_module
from .layouts import StackedLayout, expert_like, stacked_layout


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor], requires_grad: bool) -> nn.Linear:
    """An nn.Linear whose weight (and bias) are the given views: no allocation, no copy."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=requires_grad)
    return lin


class ExpertGemms(nn.Module):
    """One expert's two GEMMs as Linears (``gate_up_proj`` or ``up_proj``, then ``down_proj``)."""

    def __init__(self, up_name: str, up: nn.Module, down: nn.Module):
        super().__init__()
        self.up_name = up_name
        self.add_module(up_name, up)
        self.down_proj = down

    def up(self) -> nn.Module:
        return getattr(self, self.up_name)


class RoutedExperts(nn.Module):
    """A stacked-experts module as E ``ExpertGemms`` (module docstring); same call and result as the original.

    ``functions`` is the original module without its parameters (its class, act_fn, post_expert_norm and gate
    constants): the gate runs as the model's own ``_apply_gate``."""

    def __init__(self, original: nn.Module, layout: StackedLayout):
        super().__init__()
        self.layout = layout
        p = dict(original.named_parameters(recurse=False))
        for e in range(layout.num_experts):
            gemms = []
            for g in layout.gemms:
                w = p[g].detach()[e]
                b = p[f"{g}_bias"].detach()[e] if layout.has_bias else None
                gemms.append(_linear(w.t() if layout.transposed else w, b, p[g].requires_grad))
            self.add_module(str(e), ExpertGemms(layout.up_name, *gemms))
        functions = copy.copy(original)  # shares act_fn, post_expert_norm, constants; not the weights
        functions.__dict__["_parameters"] = OrderedDict()
        functions.__dict__["_modules"] = OrderedDict(original._modules)
        functions.__dict__["_forward_hooks"] = OrderedDict()
        functions.__dict__["_forward_pre_hooks"] = OrderedDict()
        self.functions = functions  # a submodule: .to() and deepcopy move act_fn and post_expert_norm too
        self.routing: Optional[tuple[torch.Tensor, int]] = None

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gemms, f = self.expert(e), self.functions
        h = gemms.up()(x)
        h = f._apply_gate(h) if self.layout.has_gate else f.act_fn(h)
        h = gemms.down_proj(h)
        return f.post_expert_norm(h) if self.layout.post_norm else h

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        E = self.layout.num_experts
        if torch.compiler.is_exporting():
            return self._dense(hidden_states, top_k_index, top_k_weights)
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=E + 1).permute(2, 1, 0)  # [E+1, k, T]
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        try:
            for e in hit:
                if e >= E:  # the expert-parallel sentinel: no expert here
                    continue
                slot, tok = torch.where(mask[e])
                self.routing = (tok, hidden_states.shape[0])
                h = self._expert(e, hidden_states[tok]) * top_k_weights[tok, slot, None]
                out.index_add_(0, tok, h.to(out.dtype))
        finally:
            self.routing = None
        return out

    def _dense(self, hidden_states, top_k_index, top_k_weights):
        """Every expert on every token, weighted by its routing weight (0 where not routed): the same value
        without data-dependent shapes, for torch.export (``mpq.partition`` reads the dataflow, not the cost)."""
        out = torch.zeros_like(hidden_states)
        for e in range(self.layout.num_experts):
            w = (top_k_weights * (top_k_index == e)).sum(-1, keepdim=True)
            out = out + (self._expert(e, hidden_states) * w).to(out.dtype)
        return out

    def expert(self, e: int) -> ExpertGemms:
        return getattr(self, str(e))

    def entries(self, prefix: str) -> list[str]:
        """The Linear names of every expert's GEMMs, expert by expert."""
        return [f"{prefix}.{e}.{g}" for e in range(self.layout.num_experts) for g in self.layout.gemms]


def find_experts(model: nn.Module) -> tuple[dict[str, tuple[nn.Module, StackedLayout]], dict[str, str]]:
    """({name: (module, layout)} of the stacked-experts modules of known layout, {name: why not} of the
    expert-like modules that are not); modules already routed are neither."""
    known, unknown = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, RoutedExperts) or any(name.startswith(k + ".") for k in known):
            continue
        if not expert_like(name, m):
            continue
        layout, why = stacked_layout(m)
        if layout is None:
            unknown[name] = f"{type(m).__name__}: {why}"
        else:
            known[name] = (m, layout)
    return known, unknown


def routed_modules(model: nn.Module) -> dict[str, RoutedExperts]:
    """{name: RoutedExperts} of the model (after ``routed_experts`` or in a model ``apply`` returned)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RoutedExperts)}


@contextlib.contextmanager
def routed_experts(model: nn.Module, warn: bool = True):
    """Within the block every known stacked-experts module of ``model`` is a ``RoutedExperts`` (the original is
    put back at exit). Yields {name: reason} of the expert modules of unknown layout (not covered; a warning
    says so when ``warn``)."""
    known, unknown = find_experts(model)
    if unknown and warn:
        warnings.warn(f"mpq: expert module(s) of unknown layout, not covered (not calibrated, not quantized): "
                      + "; ".join(f"{n} ({why})" for n, why in list(unknown.items())[:4])
                      + (" ..." if len(unknown) > 4 else ""), stacklevel=3)
    swapped = []
    try:
        for name, (m, layout) in known.items():
            set_module(model, name, RoutedExperts(m, layout))
            swapped.append((name, m))
        yield unknown
    finally:
        for name, m in reversed(swapped):
            set_module(model, name, m)
