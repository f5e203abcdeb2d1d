"""The ``hpu`` timing backend (Intel Gaudi), detected at run time through ``habana_frameworks.torch``.
Baseline: a bf16 copy of the model on "hpu". FP8 candidates (``fp8``, ``fp8_static``, ``fp8_gaudi2``) run through
the platform FP8 GEMM (``torch.ops.hpu.fp8_gemm_v2`` with ``torch.ops.hpu.cast_to_fp8_v2``), per-tensor scales.
Timing: wall clock around segments with ``htcore.mark_step()`` and ``torch.hpu.synchronize()`` (lazy mode needs
the graph flushed). Written against the documented Gaudi ops; not run on Gaudi hardware by its author."""
from __future__ import annotations

import time

import torch
from torch import nn

from ...models import prepare_bf16_on

NAME = "hpu"
UNIT = "seconds"
BASE_FORMAT = "bf16"
kernels = {
    "fp8": "torch.ops.hpu.fp8_gemm_v2, e4m3, per-tensor scales (dynamic)",
    "fp8_static": "torch.ops.hpu.fp8_gemm_v2, e4m3, static per-tensor scales",
    "fp8_gaudi2": "torch.ops.hpu.fp8_gemm_v2, e4m3 (max 240 on Gaudi 2), static hardware scales",
}


def _htcore():
    import habana_frameworks.torch.core as htcore  # noqa: F401
    return htcore


def available():
    try:
        _htcore()
    except Exception as e:  # noqa: BLE001
        return False, (f"habana_frameworks.torch is not importable ({type(e).__name__}: {e}); the hpu backend "
                       f"needs an Intel Gaudi machine with the Habana PyTorch bridge")
    if not hasattr(torch, "hpu") or not torch.hpu.is_available():
        return False, "habana_frameworks.torch imported but torch.hpu.is_available() is False"
    return True, ""


def supported(candidate: str) -> bool:
    return candidate in kernels


def prepare(model, example_input):
    return prepare_bf16_on("hpu", model, example_input)


class HpuFp8Linear(nn.Module):
    def __init__(self, linear, candidate, act_scale=None):
        super().__init__()
        maxv = 240.0 if candidate == "fp8_gaudi2" else 448.0
        w = linear.weight.detach()
        ws = (w.float().abs().amax() / maxv).clamp_min(1e-12)
        self.register_buffer("ws_inv", (1.0 / ws).reshape(()))
        self.register_buffer("ws", ws.reshape(()))
        qw, _ = torch.ops.hpu.cast_to_fp8_v2(w, self.ws_inv, False, False, torch.float8_e4m3fn)
        self.register_buffer("qw", qw)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.static, self.maxv = act_scale, maxv
        self.out_features = linear.out_features

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        sa = (torch.tensor(float(self.static), device=x.device) if self.static is not None
              else (x2.float().abs().amax() / self.maxv).clamp_min(1e-12))
        qx, _ = torch.ops.hpu.cast_to_fp8_v2(x2, 1.0 / sa, False, False, torch.float8_e4m3fn)
        y = torch.ops.hpu.fp8_gemm_v2(qx, False, self.qw, True, None, x.dtype, sa, self.ws, self.bias, False)
        return y.reshape(*lead, self.out_features)


def make_module(linear, candidate: str, act_scale=None):
    return HpuFp8Linear(linear, candidate, act_scale)


class HpuClock:
    def __init__(self):
        self.htcore = _htcore()

    def mark(self):
        self.htcore.mark_step()
        torch.hpu.synchronize()
        return time.perf_counter_ns()

    def seconds(self, t0, t1):
        return (t1 - t0) * 1e-9

    def sync(self):
        torch.hpu.synchronize()


def clock():
    return HpuClock()
