"""The ``cuda`` timing backend: a bf16 copy of the model is the baseline; ``fp8``/``fp8_static``/``fp8_e5m2`` run
through ``torch._scaled_mm`` (per-token x per-channel scales, or per-tensor), ``int8``/``int8_static`` through
``torch._int_mm`` with activation quantization in torch ops; timed with CUDA events around each sub-graph.
Without a CUDA device ``available()`` says why and ``profile`` raises ``BackendUnavailable``."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..candidates import get_candidate
from . import prepare_bf16_on

NAME = "cuda"
UNIT = "seconds"
BASE_FORMAT = "bf16"
kernels = {
    "fp8": "torch._scaled_mm e4m3, row-wise scales, bf16 out",
    "fp8_static": "torch._scaled_mm e4m3, per-tensor scales, bf16 out",
    "fp8_e5m2": "torch._scaled_mm e5m2 x e4m3 weights is not allowed; e5m2 x e5m2 unsupported: refused",
    "int8": "per-token int8 (torch ops) + torch._int_mm + dequant",
    "int8_static": "static int8 (torch ops) + torch._int_mm + dequant",
}
kernels.pop("fp8_e5m2")  # cuBLASLt has no e5m2 x e5m2 GEMM


def available():
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no CUDA GPU here, or a CPU-only torch build)"
    return True, ""


def supported(candidate: str) -> bool:
    return candidate in kernels


def prepare(model, example_input):
    return prepare_bf16_on("cuda", model, example_input)


def _pad_rows(x, mult=16, minimum=17):
    m = x.shape[0]
    target = max(minimum, -(-m // mult) * mult)
    return (F.pad(x, (0, 0, 0, target - m)) if target != m else x), m


class CudaFp8Linear(nn.Module):
    def __init__(self, linear, cand, act_scale=None):
        super().__init__()
        w = linear.weight.detach().float()
        self.static = act_scale
        self.per_tensor = cand.weight_granularity == "tensor"
        if self.per_tensor:
            s = w.abs().amax().clamp_min(1e-12) / 448.0
            self.register_buffer("ws", s.reshape(()).float())
            self.register_buffer("qw", (w / s).to(torch.float8_e4m3fn))
        else:
            s = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
            self.register_buffer("ws", s.reshape(1, -1).float().contiguous())
            self.register_buffer("qw", (w / s).to(torch.float8_e4m3fn))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        self.out_features = linear.out_features

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.static is not None:
            sa = torch.tensor(float(self.static), device=x.device)
            qx = (x2.float() / sa).clamp(-448, 448).to(torch.float8_e4m3fn)
        else:
            sa = x2.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
            qx = (x2.float() / sa).to(torch.float8_e4m3fn)
        sb = self.ws
        if sa.dim() != sb.dim():
            if sa.dim() == 0:
                sa = sa.expand(x2.shape[0], 1).contiguous()
            else:
                sb = sb.expand(1, self.out_features).contiguous()
        y = torch._scaled_mm(qx, self.qw.t(), scale_a=sa, scale_b=sb, bias=self.bias, out_dtype=torch.bfloat16)
        return y.reshape(*lead, self.out_features)


class CudaInt8Linear(nn.Module):
    def __init__(self, linear, cand, act_scale=None):
        super().__init__()
        w = linear.weight.detach().float()
        s = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        self.register_buffer("qw_t", (w / s).round().clamp(-127, 127).to(torch.int8).t().contiguous())
        self.register_buffer("ws", s.reshape(1, -1).float())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.static = act_scale
        self.out_features = linear.out_features

    def forward(self, x):
        lead, dtype = x.shape[:-1], x.dtype
        x2 = x.reshape(-1, x.shape[-1]).float()
        if self.static is not None:
            sa = torch.full((x2.shape[0], 1), float(self.static), device=x.device)
        else:
            sa = x2.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        q = (x2 / sa).round().clamp(-127, 127).to(torch.int8)
        q, m = _pad_rows(q)
        acc = torch._int_mm(q, self.qw_t)[:m]
        y = acc.float() * sa * self.ws
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype).reshape(*lead, self.out_features)


def make_module(linear, candidate: str, act_scale=None):
    cand = get_candidate(candidate)
    k, n = linear.in_features, linear.out_features
    if k % 16 or n % 16:
        raise ValueError(f"cuda {candidate}: in/out features must be multiples of 16, got {k}x{n}")
    if candidate.startswith("fp8"):
        return CudaFp8Linear(linear, cand, act_scale)
    return CudaInt8Linear(linear, cand, act_scale)


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
