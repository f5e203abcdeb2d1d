"""Which parameters of a model mpq quantizes: ``Coverage``, reported by calibrate and profile, so that nothing a
model holds is left out silently ("covered 97.1% of weight bytes").

A parameter is *covered* when it is a weight of a module that is calibrated or profiled as a layer: one of the
``layers`` given to ``measure`` (what ``quantizable_layers`` returned, so a new layer kind counts once it is in that
list). Biases (a layer's parameters named ``bias`` or ``*_bias``) stay in their dtype and are not covered. Every
other parameter is either *left out* (it belongs to a quantizable layer that is not among the layers: ``layers=``,
or not in a profiled sub-graph) or *not covered* (a module mpq does not quantize: embeddings, norms, unknown
modules). Counts are of tensors, elements and bytes in the model's own dtypes (numel × element size), each tensor
once: an embedding tied to ``lm_head`` counts as covered when ``lm_head`` is. Buffers are not counted.

A module holding a floating-point parameter of two or more dimensions that is neither covered, left out, nor of a
kind mpq knows it keeps (``nn.Embedding``, ``nn.EmbeddingBag``, and MoE routers: modules whose class name ends in
``Router``, as transformers names them, which serving engines keep in high precision because a rounded router
sends tokens to other experts) has an *unknown layout* (a stacked-experts tensor,
a transformers ``Conv1D``, a custom layer): ``measure`` warns, naming it, and lists it in ``Coverage.unknown``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Coverage", "Group", "measure", "format_bytes"]


def _is_router(module) -> bool:
    """An MoE router (transformers' ``…TopKRouter``, ``…Router``): kept in its dtype on purpose, not unknown."""
    return type(module).__name__.endswith("Router")


def known_not_quantized():
    """Module types mpq knows and keeps in their dtype (lookup tables, not matmuls): not an unknown layout.
    (A function: reading a stored ``Coverage`` needs no torch.)"""
    from torch import nn
    return nn.Embedding, nn.EmbeddingBag


@dataclass(frozen=True)
class Group:
    """Not-covered parameters of the modules of one type (``type``: the class name, ``"<Class> bias"`` for the
    biases of covered layers)."""
    type: str
    modules: tuple
    tensors: int
    params: int
    bytes: int


@dataclass(frozen=True)
class Coverage:
    """Covered and all parameters of a model (tensors, elements, bytes), and the groups holding the rest."""
    covered_tensors: int
    covered_params: int
    covered_bytes: int
    total_tensors: int
    total_params: int
    total_bytes: int
    not_covered: tuple = ()   # Groups of modules mpq does not quantize, most bytes first
    left_out: tuple = ()      # Groups of quantizable layers left out by the caller's choice (layers=)
    unknown: Mapping = field(default_factory=dict)   # {module: {parameter: shape}} of unknown layout (warned)
    left_out_why: str = "by layers="   # why the left-out layers are not among the layers (said in the summary)

    @property
    def byte_share(self) -> float:
        """covered bytes / all parameter bytes (1.0 for a model without parameters)."""
        return self.covered_bytes / self.total_bytes if self.total_bytes else 1.0

    def summary(self) -> str:
        """One line: "covered 97.1% of weight bytes (211 of 274 tensors); not covered: Embedding 28.3 MB (1), ..."."""
        pct = 100 * self.byte_share
        # never round a gap away: 99.96% of the bytes is not "100.0%", 0.04% is not "0.0%"
        pct_txt = (">99.9" if pct < 100 and f"{pct:.1f}" == "100.0" else
                   "<0.1" if pct > 0 and f"{pct:.1f}" == "0.0" else f"{pct:.1f}")
        parts = [f"covered {pct_txt}% of weight bytes ({format_bytes(self.covered_bytes)} of "
                 f"{format_bytes(self.total_bytes)}; {self.covered_tensors} of {self.total_tensors} tensors)"]
        for title, groups in (("not covered", self.not_covered), (f"left out {self.left_out_why}", self.left_out)):
            if groups:
                parts.append(f"{title}: " + ", ".join(f"{g.type} {format_bytes(g.bytes)} ({len(g.modules)})"
                                                      for g in groups))
        if self.unknown:
            names = [m or "(model)" for m in self.unknown]
            parts.append("unknown layout: " + ", ".join(names[:3]) + (f" and {len(names) - 3} more"
                                                                      if len(names) > 3 else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """A JSON-ready record (what calibrate and profile store under ``info["coverage"]``)."""
        def groups(gs):
            return [dict(type=g.type, modules=list(g.modules), tensors=g.tensors, params=g.params, bytes=g.bytes)
                    for g in gs]
        return dict(covered_tensors=self.covered_tensors, covered_params=self.covered_params,
                    covered_bytes=self.covered_bytes, total_tensors=self.total_tensors,
                    total_params=self.total_params, total_bytes=self.total_bytes,
                    not_covered=groups(self.not_covered), left_out=groups(self.left_out),
                    unknown={m: {p: list(s) for p, s in ps.items()} for m, ps in self.unknown.items()},
                    left_out_why=self.left_out_why)

    @classmethod
    def from_dict(cls, d, where: str = "coverage") -> "Coverage":
        """The inverse of ``to_dict``. @raises ValueError naming ``where`` and the field for a malformed record."""
        from .artifacts.io import as_count, as_names, as_object, as_str, take
        d = as_object(d, where)
        counts = {k: take(d, k, where, as_count) for k in ("covered_tensors", "covered_params", "covered_bytes",
                                                           "total_tensors", "total_params", "total_bytes")}

        def groups(key):
            raw = take(d, key, where, _as_list, [])
            out = []
            for i, g in enumerate(raw):
                w = f"{where}.{key}[{i}]"
                g = as_object(g, w)
                out.append(Group(take(g, "type", w, as_str), take(g, "modules", w, as_names),
                                 *(take(g, k, w, as_count) for k in ("tensors", "params", "bytes"))))
            return tuple(out)

        unknown = {}
        for m, ps in take(d, "unknown", where, as_object, {}).items():
            w = f"{where}.unknown.{m}"
            unknown[m] = {p: tuple(as_count(n, f"{w}.{p}") for n in _as_list(s, f"{w}.{p}"))
                          for p, s in as_object(ps, w).items()}
        cov = cls(**counts, not_covered=groups("not_covered"), left_out=groups("left_out"), unknown=unknown,
                  left_out_why=take(d, "left_out_why", where, as_str, "by layers="))
        if cov.covered_bytes > cov.total_bytes or cov.covered_tensors > cov.total_tensors:
            raise ValueError(f"{where}: covers more than the model holds ({cov.covered_bytes} of {cov.total_bytes} "
                             f"bytes, {cov.covered_tensors} of {cov.total_tensors} tensors)")
        return cov


def _as_list(x, where):
    if not isinstance(x, list):
        raise ValueError(f"{where} must be a list, got {type(x).__name__}")
    return x


def format_bytes(n: int) -> str:
    """Decimal units, three significant figures: 512 B, 18.4 kB, 28.3 MB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if float(f"{value:.3g}") < 1000 or unit == "PB":
            return f"{value:.3g} {unit}"
    raise AssertionError("unreachable")


def _key(p) -> tuple:
    """One key per tensor's memory: two parameters over the same bytes (tied weights) are one tensor."""
    if p.device.type == "meta":  # no storage to compare (an offloaded or not yet loaded model)
        return ("id", id(p))
    return (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.dtype)


def _is_bias(param_name: str) -> bool:
    return param_name == "bias" or param_name.endswith("_bias")


def measure(model: nn.Module, layers: Iterable[str], quantizable: Iterable[str], *, warn: bool = True,
            left_out_why: str = "by layers=", stacklevel: int = 1) -> Coverage:
    """The coverage of ``model`` when the modules named ``layers`` are calibrated or profiled, out of the
    ``quantizable`` ones (names of ``model.named_modules()``; ``layers`` is normally a subset). Warns (when
    ``warn``) about modules of unknown layout, attributed ``stacklevel`` frames up (1: the caller).
    @raises ValueError naming a layer that is not a module of the model."""
    known = known_not_quantized()
    modules = dict(model.named_modules())
    layers, quantizable = set(layers), set(quantizable)
    missing = sorted((layers | quantizable) - set(modules))
    if missing:
        raise ValueError(f"not modules of {type(model).__name__}: {missing[:5]}")
    # every tensor once, with its best standing over all the modules that hold it: covered > left out > not
    RANK = {"covered": 0, "left_out": 1, "not_covered": 2}
    seen: dict[tuple, tuple] = {}   # key -> (standing, group type, module, parameter name, tensor)
    for mname, module in modules.items():
        for pname, p in module.named_parameters(recurse=False):
            if mname in layers:
                standing, gtype = ("not_covered", f"{type(module).__name__} bias") if _is_bias(pname) else \
                    ("covered", "")
            elif mname in quantizable:
                standing, gtype = "left_out", type(module).__name__
            else:
                standing, gtype = "not_covered", type(module).__name__
            k = _key(p)
            if k not in seen or RANK[standing] < RANK[seen[k][0]]:
                seen[k] = (standing, gtype, mname, pname, p)
    covered, total = [0, 0, 0], [0, 0, 0]   # tensors, elements, bytes
    groups: dict[tuple, dict] = {}           # (standing, type) -> {"modules": {name: None}, "sums": [t, n, b]}
    unknown: dict[str, dict] = {}
    for standing, gtype, mname, pname, p in seen.values():
        add = (1, p.numel(), p.numel() * p.element_size())
        sums = [total]
        if standing == "covered":
            sums.append(covered)
        else:
            g = groups.setdefault((standing, gtype), {"modules": {}, "sums": [0, 0, 0]})
            g["modules"][mname] = None
            sums.append(g["sums"])
        for acc in sums:
            acc[:] = [a + x for a, x in zip(acc, add)]
        if (standing == "not_covered" and not gtype.endswith(" bias") and p.is_floating_point() and p.dim() >= 2
                and not isinstance(modules[mname], known) and not _is_router(modules[mname])):
            unknown.setdefault(mname, {})[pname] = tuple(p.shape)

    def made(standing):
        gs = [Group(t, tuple(g["modules"]), *g["sums"]) for (s, t), g in groups.items() if s == standing]
        return tuple(sorted(gs, key=lambda g: (-g.bytes, g.type)))

    cov = Coverage(*covered, *total, not_covered=made("not_covered"), left_out=made("left_out"),
                   unknown=unknown, left_out_why=left_out_why)
    if warn and unknown:
        named = [f"{m or '(model)'} ({type(modules[m]).__name__}: " +
                 ", ".join(f"{p} {list(s)}" for p, s in ps.items()) + ")" for m, ps in unknown.items()]
        warnings.warn(f"mpq does not know the layout of the weights of {len(named)} module(s), which are not "
                      f"quantized (not covered): {'; '.join(named[:5])}{' ...' if len(named) > 5 else ''}",
                      stacklevel=stacklevel + 1)
    return cov
