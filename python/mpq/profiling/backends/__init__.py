"""Gain backends for ``mpq.profile``: one ``Backend`` instance per backend (``base``), each defined in its module.

- ``cpu``: real kernels (``mpq.application.native_cpu``) timed inside the model, one thread, warm-up, median of
  repeats.
- ``cuda``: bf16 baseline, fp8 through ``torch._scaled_mm``, int8 through ``torch._int_mm``, CUDA events.
- ``hpu``: Gaudi through ``habana_frameworks.torch`` (detected at run time), bf16 baseline, FP8 matmul.
- ``macs``: theoretical seconds from MACs and a per-format peak-rate table per device.
- ``memory``: bytes of weights saved.
- ``ebops``: effective bit operations saved (weight bits × activation bits per multiply-accumulate, as HGQ counts).

``get_backend(name)`` gives the instance (the module ``mpq.profiling.backends.<name>`` holds it as ``BACKEND``).
"""
from __future__ import annotations

import importlib

from .base import Backend, TheoreticalBackend, TimedBackend

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "TheoreticalBackend", "TimedBackend", "check_available",
           "get_backend"]

BACKENDS = ("cpu", "cuda", "hpu", "macs", "memory", "ebops")


class BackendUnavailable(RuntimeError):
    """The backend's hardware or software is absent here; the message says what is missing."""


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}").BACKEND


def check_available(name: str) -> Backend:
    backend = get_backend(name)
    ok, reason = backend.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
    return backend
