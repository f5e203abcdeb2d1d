"""The ``cuda`` timing backend: a bf16 copy of the model is the baseline; the modules of
``mpq.application.native_cuda`` (``fp8``/``fp8_static`` through ``torch._scaled_mm``, ``int8``/``int8_static``
through ``torch._int_mm``, activations quantized by one fused Triton kernel) are timed with CUDA events around each
sub-graph. ``apply(mode="native")`` installs the same modules on a CUDA model. Without a CUDA device
``available()`` says why and ``profile`` raises ``BackendUnavailable``. The modules also run on CPU tensors (torch
ops), which is how the tests check their arithmetic without a GPU."""
from __future__ import annotations

import torch

from ...application import cuda_fused, native_cuda
from ...models import prepare_bf16_on
from .base import TimedBackend


class CudaClock:
    """CUDA events: mark() records an event on the current stream; seconds() needs sync() first."""

    def mark(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def seconds(self, e0, e1):
        return e0.elapsed_time(e1) * 1e-3

    def sync(self):
        torch.cuda.synchronize()


class CudaBackend(TimedBackend):
    name = "cuda"
    base_format = "bf16"
    kernels = native_cuda.kernels

    def available(self):
        if not torch.cuda.is_available():
            return False, "torch.cuda.is_available() is False (no CUDA GPU here, or a CPU-only torch build)"
        return True, ""

    def extra_meta(self) -> dict:
        """Which activation quantizer ran (the fused kernel or torch ops)."""
        return {"activation_quantizer": cuda_fused.quantizer()}

    def prepare(self, model, example_input):
        return prepare_bf16_on("cuda", model, example_input)

    def make_module(self, linear, candidate: str, act_scale=None, implementation=None):
        return native_cuda.make_module(linear, candidate, act_scale)

    def clock(self):
        return CudaClock()


BACKEND = CudaBackend()
