"""Native low-precision Linear modules for the CPU: what ``mpq.profile(backend="cpu")`` times and
``mpq.apply(mode="native")`` swaps in, so what is measured is what runs. Which module runs a candidate on this
CPU, and with what numerics, is the registry's business (``cpu_kernels``); here are the modules:

- ``Int8Linear`` / ``Int8IntMmLinear``: int8 / int8_static through mpq's C++ activation quantizer, then mpq's C++
  int8 GEMM on weights packed for it, the dequantization fused (one C++ call), or ``torch._int_mm`` followed by
  mpq's C++ dequantization.
- ``W8A16Linear``, ``W4A16Linear``: ``torch._weight_int8pack_mm``, ``torch._weight_int4pack_mm_for_cpu`` (bf16
  activations and scales).
- ``HalfLinear``: ``F.linear`` in bf16 / fp16. ``Fp8Linear``: ``torch._scaled_mm`` on float8 operands.

Calibrated-weight candidates (GPTQ, AWQ, SmoothQuant) pass ``quantized``: the module packs those stored codes and
scales instead of quantizing W, and divides its input by their per-input-channel factor first (``input_scale``).
Otherwise the weights are quantized with exactly the rule of ``Candidate.quantize_weight`` (scale = amax / qmax,
round-to-nearest-even); scales held in bf16 (weight-only kernels) round the scale itself, an error below 2^-8
relative. Activations of weight-only kernels are rounded to bf16 as the kernels require. The kernels take float32
inputs and give float32 outputs; in a model loaded in bf16 (or fp16) the input is widened first (exact) and the
output rounded back to the input's dtype, so the module fits where the model's own Linear was.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _core
from ..candidates import Candidate
from ..formats import compute_scales, format_info

__all__ = ["Fp8Linear", "HalfLinear", "Int8IntMmLinear", "Int8Linear", "NativeLinear", "W4A16Linear",
           "W8A16Linear"]

_FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


class NativeLinear(nn.Module):
    """Base: flattens leading dimensions, runs ``_forward2d`` on a contiguous float32 [M, K], restores them.
    Inference only: the kernels read the input's memory directly, so the output carries no gradient (a caller
    outside ``torch.no_grad()`` gets the same numbers, not an error)."""

    candidate: str = ""

    def __init__(self, in_features: int, out_features: int, bias: Optional[torch.Tensor], quantized=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous().clone())
        xs = None if quantized is None else quantized.input_scale
        self.register_buffer("input_scale", None if xs is None else xs.float().contiguous().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lean on purpose: at one token the kernel itself takes ~15 µs and each torch or Module call here ~1–2 µs
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected last dimension {self.in_features}, got {x.shape[-1]}")
        x2 = x.reshape(-1, self.in_features)
        if x2.requires_grad:
            x2 = x2.detach()
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        input_scale = self._buffers["input_scale"]  # not self.input_scale: Module.__getattr__ is slower
        if input_scale is not None:  # AWQ / SmoothQuant: the stored codes meet x / s
            x2 = x2 / input_scale
        y = self._forward2d(x2)
        if x.dtype in (torch.bfloat16, torch.float16):  # a bf16 / fp16 model: hand the next layer its dtype
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, candidate={self.candidate}"

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")


def _stored_rows(quantized):
    """(int8 codes [N, K], scales [N]) of a per-channel stored weight."""
    if quantized.scales.shape[1] != 1:
        raise ValueError(f"expected a per-channel stored weight, got {quantized.scales.shape[1]} groups per row")
    return quantized.codes.contiguous(), quantized.scales[:, 0].contiguous()


def _quantize_rows(w: torch.Tensor):
    """Per-row symmetric int8 (the int8 per-channel rule of Candidate.quantize_weight): (int8 [N, K], scales [N])."""
    q, s = _core.quantize_rows_int8(w.detach().float().contiguous().numpy())
    return torch.from_numpy(q), torch.from_numpy(s)


class _Int8Base(NativeLinear):
    """W8A8: int8 weights per channel; activations per token (dynamic) or one static scale, quantized by mpq's C++
    quantizer; the GEMM and its dequantization ``acc · (s_x · s_w) + b`` are the subclass's (``_store_codes``
    keeps the int8 codes [N, K] in the layout it reads)."""

    def __init__(self, linear: nn.Linear, static_scale: Optional[float] = None, quantized=None,
                 name: Optional[str] = None):
        super().__init__(linear.in_features, linear.out_features, linear.bias, quantized)
        self.candidate = name or ("int8" if static_scale is None else "int8_static")
        q, s = _quantize_rows(linear.weight) if quantized is None else _stored_rows(quantized)
        self._store_codes(q)
        self.register_buffer("wscale", s)           # [N] float32
        self.static_scale = None if static_scale is None else float(static_scale)

    def _bias(self):
        return None if self.bias is None else self.bias.numpy()


class Int8Linear(_Int8Base):
    """The int8 GEMM is mpq's C++ kernel on weights packed once into its layout (``_core.pack_int8_weights``: 8
    columns × 4 inputs per 32 bytes), the dequantization fused. ``qweight`` unpacks the codes as a view."""

    implementation = "mpq_int8"

    def _store_codes(self, q):
        self.register_buffer("packed", torch.from_numpy(_core.pack_int8_weights(q.numpy())))

    @property
    def qweight(self) -> torch.Tensor:
        """The int8 codes [N, K]: a view of the packed buffer (blocks of 8 rows × groups of 4 inputs, zero-padded)."""
        n, k = self.out_features, self.in_features
        blocks, k4 = -(-n // 8), -(-k // 4)
        return self.packed.view(blocks, k4, 8, 4).permute(0, 2, 1, 3).reshape(blocks * 8, k4 * 4)[:n, :k]

    def _weight_arrays(self) -> tuple:
        """numpy views of packed, wscale and bias, made once and remade when a buffer is replaced (``.to()``,
        ``load_state_dict(assign=True)``): a buffer lookup and ``.numpy()`` cost ~2 µs each, every call."""
        b, views = self._buffers, self.__dict__.get("_weight_views")
        if views is None or views[0] is not b["packed"] or views[1] is not b["wscale"] or views[2] is not b["bias"]:
            arrays = tuple(None if t is None else t.numpy() for t in (b["packed"], b["wscale"], b["bias"]))
            views = (b["packed"], b["wscale"], b["bias"], arrays)
            self.__dict__["_weight_views"] = views
        return views[3]

    def _forward2d(self, x):  # the quantizer and the GEMM in one C++ call, and no more Python than that
        packed, wscale, bias = self._weight_arrays()
        out = np.empty((x.shape[0], self.out_features), np.float32)
        _core.int8_linear_from_float_into(x.numpy(), self.static_scale, packed, wscale, bias, out)
        return torch.from_numpy(out)


class Int8IntMmLinear(_Int8Base):
    """``Int8Linear``'s numerics (the same quantizer, int8 weights and fused dequantization) with the int32 GEMM
    done by ``torch._int_mm``: oneDNN's AMX/VNNI kernels where the CPU has them, a reference loop elsewhere."""

    implementation = "torch_int_mm"

    def _store_codes(self, q):
        self.register_buffer("qweight", q)          # [N, K] int8; _int_mm takes its transposed view

    def _forward2d(self, x):
        xn = x.numpy()
        if self.static_scale is None:
            q, rs = _core.quantize_rows_int8(xn)
        else:
            q = _core.quantize_int8_static(xn, self.static_scale)
            rs = np.full(x.shape[0], self.static_scale, dtype=np.float32)
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        acc = torch._int_mm(torch.from_numpy(q), self.qweight.t())
        _core.dequantize_int32_into(acc.numpy(), rs, self.wscale.numpy(), self._bias(), out.numpy())
        return out


class W8A16Linear(NativeLinear):
    candidate = "w8a16"

    def __init__(self, linear: nn.Linear, quantized=None, name: Optional[str] = None):
        super().__init__(linear.in_features, linear.out_features, linear.bias, quantized)
        self.candidate = name or "w8a16"
        q, s = _quantize_rows(linear.weight) if quantized is None else _stored_rows(quantized)
        self.register_buffer("qweight", q)
        self.register_buffer("wscale", s.to(torch.bfloat16))

    def _forward2d(self, x):
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.wscale).float()
        return y if self.bias is None else y + self.bias


class W4A16Linear(NativeLinear):
    def __init__(self, linear: nn.Linear, group_size: int, name: str, quantized=None):
        super().__init__(linear.in_features, linear.out_features, linear.bias, quantized)
        self.candidate = name
        n, k = linear.weight.shape
        if k % group_size:
            raise ValueError(f"{name}: group size {group_size} does not divide in_features {k}")
        if quantized is not None:
            if quantized.group_size != group_size:
                raise ValueError(f"{name}: the stored weight has groups of {quantized.group_size}, not {group_size}")
            s, q = quantized.scales, quantized.codes.float()
        else:
            w = linear.weight.detach().float().contiguous()
            s, _ = compute_scales(w, "int4", group_size=group_size)           # [N * K/g], row-major
            s = s.reshape(n, k // group_size)
            q = (w.reshape(n, k // group_size, group_size) * (1.0 / s).unsqueeze(-1)).round().clamp(-7, 7)
        q = (q.reshape(n, k) + 8).to(torch.int32)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        sz = torch.zeros(k // group_size, n, 2)
        sz[..., 0] = s.t()
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16).contiguous())
        self.group_size = group_size

    def _forward2d(self, x):
        y = torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.group_size,
                                              self.scales_zeros).float()
        return y if self.bias is None else y + self.bias


class HalfLinear(NativeLinear):
    def __init__(self, linear: nn.Linear, dtype: torch.dtype, name: str):
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        self.candidate = name
        self.dtype = dtype
        self.register_buffer("weight", linear.weight.detach().to(dtype).contiguous())
        self.register_buffer("hbias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def _forward2d(self, x):
        return F.linear(x.to(self.dtype), self.weight, self.hbias).float()


class Fp8Linear(NativeLinear):
    def __init__(self, linear: nn.Linear, cand: Candidate, static_scale: Optional[float] = None):
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        self.candidate = cand.name
        self.fmt = cand.weight_format
        self.dtype = _FP8_DTYPES[self.fmt]
        w = linear.weight.detach().float().contiguous()
        if cand.weight_granularity == "channel":
            s, _ = compute_scales(w, self.fmt, axis=0)
            qw = (w * (1.0 / s).unsqueeze(1)).to(self.dtype)
            self.register_buffer("wscale", s.reshape(1, -1).contiguous())
        else:
            s, _ = compute_scales(w, self.fmt)
            qw = (w * (1.0 / s)).to(self.dtype)
            self.register_buffer("wscale", s.reshape(()).clone())
        self.register_buffer("qweight", qw)
        self.static_scale = None if static_scale is None else float(static_scale)
        self.per_token = cand.act_granularity == "token" and not cand.act_static

    def _forward2d(self, x):
        if self.static_scale is not None:
            sa = torch.tensor(self.static_scale, dtype=torch.float32)
            fmax = format_info(self.fmt)["max"]
            qx = (x * (1.0 / sa)).clamp(-fmax, fmax).to(self.dtype)
        elif self.per_token:
            sa, _ = compute_scales(x, self.fmt, axis=0)
            sa = sa.reshape(-1, 1)
            qx = (x * (1.0 / sa)).to(self.dtype)
        else:
            sa, _ = compute_scales(x, self.fmt)
            sa = sa.reshape(())
            qx = (x * (1.0 / sa)).to(self.dtype)
        sb = self.wscale
        if sa.dim() != sb.dim():  # _scaled_mm wants both scales per tensor or both row/column-wise
            if sa.dim() == 0:
                sa = sa.expand(x.shape[0], 1).contiguous()
            else:
                sb = sb.expand(1, self.out_features).contiguous()
        y = torch._scaled_mm(qx, self.qweight.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
        return y if self.bias is None else y + self.bias
