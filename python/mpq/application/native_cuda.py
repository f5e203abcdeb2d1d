"""Native CUDA modules that ``apply(mode="native")`` installs on a CUDA model and the ``cuda`` timing backend
times: ``fp8``/``fp8_static`` through ``torch._scaled_mm`` (per-token x per-channel scales, or per-tensor),
``int8``/``int8_static`` through ``torch._int_mm``; activations are quantized by one fused Triton kernel
(``cuda_fused``; torch ops without Triton). The modules also run on CPU tensors (torch ops), which is how the
tests check their arithmetic without a GPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..candidates import get_candidate
from ..formats import format_info
from . import cuda_fused

# candidate -> kernel ("fused": the Triton quantizer, or torch ops without it: a profile's
# meta["activation_quantizer"] says which ran); fp8_e5m2 is refused: _scaled_mm has no e5m2 x e5m2 GEMM
# (cuBLASLt), and mixing it with e4m3 weights would time a different format than the one whose loss was measured
kernels = {
    "fp8": "fused per-token e4m3 quantizer + torch._scaled_mm (x per-channel scales, fp32 accumulation, bf16 out)",
    "fp8_static": "fused static e4m3 quantizer + torch._scaled_mm (per-tensor scales, bf16 out)",
    "int8": "fused per-token int8 quantizer + torch._int_mm (int32) + fused dequantizer",
    "int8_static": "fused static int8 quantizer + torch._int_mm (int32) + fused dequantizer",
}


def _padded_rows(m: int) -> int:
    """torch._int_mm needs more than 16 rows: M rounded up to a multiple of 16, at least 32."""
    return max(32, -(-m // 16) * 16)


def _scale(amax, qmax):
    """amax / qmax with a true division on every device. A tensor divided by a Python number is computed as a
    product with its reciprocal on CUDA, which can differ by one ulp from the CPU's quotient (and from mpq's
    quantizers)."""
    return amax.float().clamp_min(1e-12) / (qmax if isinstance(qmax, torch.Tensor) else torch.full_like(amax, qmax))


class _QuantLinear(nn.Module):
    """What the fp8 and int8 modules share: sizes, the candidate's name, its formats' max (``wmax`` of the weights,
    ``fmax`` of the activations, from ``mpq.formats``), the activation max and the static activation scale as
    buffers on the layer's device (a call moves nothing from the host), and the torch-ops activation scale."""

    def __init__(self, linear, cand, act_scale):
        super().__init__()
        device = linear.weight.device
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.candidate = cand.name
        self.wmax = format_info(cand.weight_format)["max"]
        self.fmax = format_info(cand.act_format)["max"]
        self.register_buffer("qmax", torch.tensor(self.fmax, device=device))
        self.register_buffer("act_scale", None if act_scale is None else torch.tensor(float(act_scale), device=device))

    def _torch_act_scale(self, x2):
        """The static scale, or per-token amax / qmax."""
        return self.act_scale if self.act_scale is not None else _scale(x2.abs().amax(1, keepdim=True), self.qmax)


class CudaFp8Linear(_QuantLinear):
    """y = (Q(x) Q(W)^T) · s_x · s_w (+ b) through ``torch._scaled_mm`` (fp32 accumulation, bf16 out, cast back
    to the input's dtype). Weights: e4m3 per output channel (per tensor for ``fp8_static``), scale amax / max;
    activations: per token (amax / max) or the static per-tensor scale. Q is ``Candidate.quantize_weight`` /
    ``quantize_act``'s rule, computed the same way (x · (1 / s), round to nearest even)."""

    def __init__(self, linear, cand, act_scale=None):
        super().__init__(linear, cand, act_scale)
        w = linear.weight.detach().float()
        if cand.weight_granularity == "tensor":
            s = _scale(w.abs().amax().reshape(1, 1), self.wmax)
            ws = s.reshape(())
        else:
            s = _scale(w.abs().amax(1, keepdim=True), self.wmax)
            ws = s.reshape(1, -1).contiguous()
        self.register_buffer("qw", (w * (1.0 / s)).to(torch.float8_e4m3fn))
        self.register_buffer("ws", ws)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if cuda_fused.enabled(x2):  # one kernel
            qx, sa = cuda_fused.quantize_rows(x2, False, self.act_scale)
        else:
            sa = self._torch_act_scale(x2)
            qx = (x2.float() * (1.0 / sa)).clamp_(-self.fmax, self.fmax).to(torch.float8_e4m3fn)
        sb = self.ws
        if sa.dim() != sb.dim():  # _scaled_mm takes both scales per tensor or both row-/column-wise
            if sa.dim() == 0:
                sa = sa.expand(x2.shape[0], 1).contiguous()
            else:
                sb = sb.expand(1, self.out_features).contiguous()
        y = torch._scaled_mm(qx, self.qw.t(), scale_a=sa, scale_b=sb, bias=self.bias, out_dtype=torch.bfloat16)
        return y.to(x.dtype).reshape(*lead, self.out_features)


class CudaInt8Linear(_QuantLinear):
    """y = (Q(x) Q(W)^T) · s_x · s_w (+ b) through ``torch._int_mm`` (exact int32 sums), dequantized in fp32 and
    cast to the input's dtype. Weights int8 per output channel (amax / max), held [out, in] so that the GEMM
    runs in the layout cuBLASLt's int8 kernels take (row-major activations times column-major weights; other
    layouts are refused for most shapes on Hopper); activations per token (amax / max) or the static
    per-tensor scale."""

    def __init__(self, linear, cand, act_scale=None):
        super().__init__(linear, cand, act_scale)
        w = linear.weight.detach().float()
        s = _scale(w.abs().amax(1, keepdim=True), self.wmax)
        self.register_buffer("qw", torch.round(w * (1.0 / s)).clamp(-self.wmax, self.wmax).to(torch.int8))
        self.register_buffer("ws", s.reshape(1, -1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        m = x2.shape[0]
        rows = _padded_rows(m)
        if cuda_fused.enabled(x2):  # one kernel to quantize (and pad), one to dequantize
            q, sa = cuda_fused.quantize_rows(x2, True, self.act_scale, rows=rows)
            y = cuda_fused.dequantize(torch._int_mm(q, self.qw.t()), m, sa, self.ws, self.bias, x.dtype)
            return y.reshape(*lead, self.out_features)
        sa = self._torch_act_scale(x2)
        q = (x2.float() * (1.0 / sa)).clamp_(-self.fmax, self.fmax).round_().to(torch.int8)
        if rows != m:  # F.pad copies even when it adds nothing
            q = F.pad(q, (0, 0, 0, rows - m))
        y = torch._int_mm(q, self.qw.t())[:m].float() * (sa * self.ws)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)


def make_module(linear, candidate: str, act_scale=None):
    cand = get_candidate(candidate)
    k, n = linear.in_features, linear.out_features
    if k % 16 or n % 16:
        raise ValueError(f"cuda {candidate}: in/out features must be multiples of 16, got {k}x{n}")
    if candidate.startswith("fp8"):
        return CudaFp8Linear(linear, cand, act_scale)
    return CudaInt8Linear(linear, cand, act_scale)
