"""Gain backends for ``mpq.profile``: one module per backend.

- ``cpu``: real kernels (``mpq.native``) timed inside the model, one thread, warm-up, median of repeats.
- ``cuda``: bf16 baseline, fp8 through ``torch._scaled_mm``, int8 through ``torch._int_mm``, CUDA events.
- ``hpu``: Gaudi through ``habana_frameworks.torch`` (detected at run time), bf16 baseline, FP8 matmul.
- ``macs``: theoretical seconds from MACs and a per-format peak-rate table per device.
- ``memory``: bytes of weights saved.

Each module defines ``NAME``, ``UNIT``, ``available() -> (bool, reason)``, ``supported(candidate) -> bool``
and ``kernels`` (candidate -> kernel description).
"""
from __future__ import annotations

import importlib

BACKENDS = ("cpu", "cuda", "hpu", "macs", "memory")


class BackendUnavailable(RuntimeError):
    """The backend's hardware or software is absent here; the message says what is missing."""


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def check_available(name: str):
    mod = get_backend(name)
    ok, reason = mod.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
    return mod


