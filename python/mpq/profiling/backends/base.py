"""What every gain backend of ``mpq.profile`` is: one ``Backend`` instance per backend, of one of two kinds.

- ``TimedBackend`` (cpu, cuda, hpu): times modules inside the running model. ``prepare`` gives the copy of the
  model (and of the example input) that is timed, ``make_module`` the module a layer runs in a candidate, and
  ``clock`` the clock of ``profiling.timing``: an object with ``mark() -> token``, ``seconds(t0, t1) -> float``
  and ``sync()`` (waits for queued device work; ``seconds`` is valid after it).
- ``TheoreticalBackend`` (macs, memory): computes the cost of a layer in a candidate (``layer_cost``); the
  gain of a configuration is the base cost minus its cost, summed over its layers.

Both have ``name``, ``unit`` (of the gains: "seconds" or "bytes"), ``base_format`` (the precision "base" runs in;
None where it depends on a device table or does not apply), ``kernels`` (candidate -> what runs it; the key "*"
stands for every candidate), ``available() -> (bool, reason)``, ``supported(candidate)``, ``kernel(candidate)``
(the description a GainTable records) and ``meta(device)`` (what a GainTable records beside the common entries).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


class Backend:
    name: str = ""
    unit: str = "seconds"
    base_format: Optional[str] = None
    kernels: Mapping[str, str] = {}
    timed: bool = False

    def available(self) -> tuple[bool, str]:
        """(True, "") where the backend runs here, else (False, what is missing)."""
        return True, ""

    def supported(self, candidate: str) -> bool:
        return "*" in self.kernels or candidate in self.kernels

    def unsupported_reason(self, candidate: str) -> str:
        """Why ``candidate`` cannot run on this backend here ("" when it can)."""
        if self.supported(candidate):
            return ""
        return f"it runs {', '.join(k for k in self.kernels if k != '*')}"

    def kernel(self, candidate: str) -> str:
        return self.kernels.get(candidate, self.kernels.get("*", ""))

    def meta(self, device: Optional[str] = None) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"<mpq {type(self).__name__} {self.name!r}>"


class TimedBackend(Backend):
    timed = True

    def prepare(self, model, example_input):
        """(model to time, example input for it): a copy in the backend's base format on its device."""
        raise NotImplementedError

    def make_module(self, linear, candidate: str, act_scale: Optional[float] = None,
                    implementation: Optional[str] = None):
        """The module ``linear`` runs as in ``candidate`` (static candidates need ``act_scale``), with
        ``implementation`` (one of ``implementations(candidate)``; None where there is one built-in kernel)."""
        raise NotImplementedError

    def runs(self, linear, candidate: str) -> bool:
        """Whether some kernel of the backend runs ``linear``'s shape in ``candidate``."""
        return True

    def implementations(self, candidate: str, linear=None) -> tuple[str, ...]:
        """The implementations of ``candidate`` that may run here (on ``linear``'s shape, when given), the fastest
        found by timing (profiling.kernel_choice); empty where the backend has one built-in kernel per candidate."""
        return ()

    def base_format_of(self, model) -> Optional[str]:
        """The precision "base" runs in for ``model`` (the prepared copy): ``base_format`` unless the backend
        times models as they were loaded."""
        return self.base_format

    def clock(self):
        raise NotImplementedError

    def extra_meta(self) -> dict:
        """What a GainTable records about this backend's kernels beyond ``kernels`` (e.g. which quantizer ran)."""
        return {}

    def meta(self, device: Optional[str] = None) -> dict:
        return {"base_format": self.base_format, "clock": type(self.clock()).__name__, **self.extra_meta()}


class TheoreticalBackend(Backend):
    kernels = {"*": "theoretical"}

    def layer_cost(self, shape: Sequence[int], candidate: str, *, device: Optional[str] = None,
                   element_size: int = 4, kind: str = "linear") -> float:
        """Cost of one Linear in ``candidate`` ("base": the model's own precision) in ``unit``. shape: [tokens,
        in_features, out_features] in the profiled phase; element_size: bytes of one element of the model's
        weights; device: the device table of backends that have one. kind (``mpq.attention.layer_kind``):
        "matmul" has shape [rows, K, N] (A's rows over all batch dimensions, the contraction, B's columns),
        "kv_cache" [B, H_kv, context, head_dim]. @raises ValueError where the cost is undefined (an unknown
        device, a kind the backend does not count)."""
        raise NotImplementedError
