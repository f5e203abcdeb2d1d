"""The ``cuda`` timing backend: a bf16 copy of the model is the baseline; ``fp8``/``fp8_static`` run through
``torch._scaled_mm`` (per-token x per-channel scales, or per-tensor), ``int8``/``int8_static`` through
``torch._int_mm``; activations are quantized by one fused Triton kernel (``cuda_fused``; torch ops without
Triton); timed with CUDA events around each sub-graph. ``apply(mode="native")`` installs the same modules on a
CUDA model. Without a CUDA device ``available()`` says why and ``profile`` raises ``BackendUnavailable``.
The modules also run on CPU tensors (torch ops), which is how the tests check their arithmetic without a GPU."""
from __future__ import annotations

import torch
from ...application import cuda_fused
from ...application.native_cuda import kernels, make_module
from ...models import prepare_bf16_on

NAME = "cuda"
UNIT = "seconds"
BASE_FORMAT = "bf16"
def available():
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no CUDA GPU here, or a CPU-only torch build)"
    return True, ""


def supported(candidate: str) -> bool:
    return candidate in kernels


def extra_meta() -> dict:
    """What a GainTable of this backend records beside the kernels: which activation quantizer ran."""
    return {"activation_quantizer": cuda_fused.quantizer()}


def prepare(model, example_input):
    return prepare_bf16_on("cuda", model, example_input)


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


def clock():
    return CudaClock()
