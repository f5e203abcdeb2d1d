"""The ``hpu`` timing backend (Intel Gaudi), detected at run time through ``habana_frameworks.torch``.

Baseline: a bf16 copy of the model on "hpu". FP8 candidates (``fp8``, ``fp8_static``, ``fp8_gaudi2``) quantize
exactly as the candidate does (``Candidate.quantize_weight`` / ``quantize_act``): weight scales from
``mpq.formats.compute_scales`` with the candidate's format, granularity and scale rule (for ``fp8_gaudi2`` the
Gaudi-2 hardware scale set of ``fp8_e4m3_gaudi2``), activations with the static scale calibration chose or per
token (``fp8``), v = x · (1/s) saturated to the format's max and rounded by torch's cast. The quantizer is plain
torch, so it runs (and is tested) on CPU tensors; on Gaudi the GEMM is ``torch.ops.hpu.fp8_gemm_v2``, with the
per-tensor scales passed to it, or per-token x per-channel scales applied to its output; on other devices a
float32 matmul of the same quantized values stands in for it. ``fp8``/``fp8_static`` are OCP E4M3 (max 448), which
Gaudi 2's FP8 (max 240) does not hold: there only ``fp8_gaudi2`` is the format that was calibrated.
Timing: wall clock around segments with ``htcore.mark_step()`` and ``torch.hpu.synchronize()`` (lazy mode needs
the graph flushed). Written against the documented Gaudi ops; not run on Gaudi hardware by its author."""
from __future__ import annotations

import time

import torch
from torch import nn

from ...candidates import get_candidate
from ...formats import compute_scales, format_info
from ...models import prepare_bf16_on
from .base import TimedBackend

# the torch dtype that holds each format's values (Gaudi-2 E4M3 is the e4m3fn grid limited to its own max)
FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e4m3_gaudi2": torch.float8_e4m3fn}


def _htcore():
    import habana_frameworks.torch.core as htcore  # noqa: F401
    return htcore


def quantize(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """Q(x) / scale in ``fmt``'s torch dtype: v = x · (1/s) in float32, saturated to ±max, rounded by the cast
    (``mpq.fake_quantize``'s rule; scale broadcasts against x)."""
    fmax = format_info(fmt)["max"]
    return (x.float() * (1.0 / scale)).clamp_(-fmax, fmax).to(FP8_DTYPES[fmt])


def dynamic_scales(x2: torch.Tensor, fmt: str) -> torch.Tensor:
    """Per-row (token) scales of ``fmt``'s own rule on the device, [rows, 1] float32: amax / max by a true
    division, 1 for an all-zero row (as ``compute_scales``; rows are assumed finite)."""
    info = format_info(fmt)
    if info["default_rule"] != "maxabs":
        raise ValueError(f"hpu: dynamic scales of {fmt!r} (rule {info['default_rule']!r}) are not implemented")
    amax = x2.float().abs().amax(1, keepdim=True)
    s = (amax / torch.full_like(amax, info["max"])).clamp_min_(torch.finfo(torch.float32).tiny)
    return torch.where(amax > 0, s, torch.ones_like(s))


class HpuFp8Linear(nn.Module):
    """y = (Q(x) Q(W)^T) · s_x · s_w (+ b), cast to the input's dtype. Buffers: ``qw`` (FP8 [out, in]), ``ws``
    (weight scales: [] per tensor, [1, out] per channel), ``act_scale`` (the static scale, [] float32, or None)."""

    def __init__(self, linear: nn.Linear, candidate, act_scale=None):
        super().__init__()
        cand = get_candidate(candidate)
        if cand.weight_format not in FP8_DTYPES or cand.act_format not in FP8_DTYPES:
            raise ValueError(f"hpu: no FP8 kernel for candidate {cand.name!r}")
        self.candidate, self.wfmt, self.afmt = cand.name, cand.weight_format, cand.act_format
        self.out_features = linear.out_features
        w = linear.weight.detach()
        per_channel = cand.weight_granularity == "channel"
        if cand.weight_granularity not in ("tensor", "channel"):
            raise ValueError(f"hpu: candidate {cand.name!r} has {cand.weight_granularity} weight scales")
        s, _ = compute_scales(w, self.wfmt, axis=0 if per_channel else None)
        s = s.to(w.device)
        self.register_buffer("qw", quantize(w, s.reshape(-1, 1) if per_channel else s.reshape(()), self.wfmt))
        self.register_buffer("ws", s.reshape(1, -1) if per_channel else s.reshape(()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        if cand.act_static:
            if act_scale is None:
                raise ValueError(f"candidate {cand.name!r} has static activation scales: pass act_scale")
            hw = format_info(self.afmt)["hw_scales"]
            if hw and float(act_scale) not in hw:
                raise ValueError(f"hpu {cand.name}: activation scale {float(act_scale)!r} is not one of the "
                                 f"hardware scales of {self.afmt} {hw}")
            self.register_buffer("act_scale", torch.tensor(float(act_scale), device=w.device))
        else:
            self.register_buffer("act_scale", None)

    def quantize_act(self, x2: torch.Tensor):
        """(Q(x) in FP8, its scales: [] static or [rows, 1] per token) for x2 [rows, in]."""
        sa = self.act_scale if self.act_scale is not None else dynamic_scales(x2, self.afmt)
        return quantize(x2, sa, self.afmt), sa

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        qx, sa = self.quantize_act(x2)
        per_tensor = sa.dim() == 0 and self.ws.dim() == 0
        if x2.device.type == "hpu":
            y = torch.ops.hpu.fp8_gemm_v2(qx, False, self.qw, True, None, x.dtype if per_tensor else torch.float32,
                                          sa if per_tensor else None, self.ws if per_tensor else None,
                                          self.bias if per_tensor else None, False)
        else:  # what the Gaudi GEMM computes, on the same FP8 values
            y = qx.float() @ self.qw.float().t()
            per_tensor = False
        if not per_tensor:
            y = y * (sa * self.ws)
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)


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


class HpuBackend(TimedBackend):
    name = "hpu"
    base_format = "bf16"
    kernels = {
        "fp8": "torch.ops.hpu.fp8_gemm_v2, e4m3, per-token x per-channel scales (dynamic)",
        "fp8_static": "torch.ops.hpu.fp8_gemm_v2, e4m3, static per-tensor scales",
        "fp8_gaudi2": "torch.ops.hpu.fp8_gemm_v2, e4m3 (max 240 on Gaudi 2), static hardware scales",
    }

    def available(self):
        try:
            _htcore()
        except Exception as e:  # noqa: BLE001
            return False, (f"habana_frameworks.torch is not importable ({type(e).__name__}: {e}); the hpu "
                           f"backend needs an Intel Gaudi machine with the Habana PyTorch bridge")
        if not hasattr(torch, "hpu") or not torch.hpu.is_available():
            return False, "habana_frameworks.torch imported but torch.hpu.is_available() is False"
        return True, ""

    def prepare(self, model, example_input):
        return prepare_bf16_on("hpu", model, example_input)

    def make_module(self, linear, candidate: str, act_scale=None, implementation=None):
        return HpuFp8Linear(linear, candidate, act_scale)

    def clock(self):
        return HpuClock()


BACKEND = HpuBackend()
