"""Fused activation (de)quantization for the cuda backend's Linears, in Triton.

Measured on an H200 (bench/RESULTS.md): quantizing activations with torch ops (cast, abs, amax, divide, multiply,
round, clamp, cast: 6–8 kernels per call) cost more than fp8/int8 GEMMs save over bf16, so every quantized Linear
ran slower than bf16. Here one kernel quantizes each row of [M, K] (per-token scale, or a static per-tensor one)
and writes the zero rows that torch._int_mm's padding needs; one kernel dequantizes the int32 GEMM output with
the row and column scales and the bias. The arithmetic is the torch-ops path's, step for step: scale =
max(amax, 1e-12) / qmax (a correctly rounded division), v = x · (1 / scale), clamp, round to nearest even (the
1.5·2^23 addition, exact for |v| <= 2^22), cast; so both paths give the same bits (checked on the GPU by
tests/test_cuda_backend.py). The kernels are compiled with ``enable_fp_fusion=False``: a multiply-add contracted
into one FMA rounds once where torch rounds twice (seen on an H200: 1-ulp differences with a bias). Triton comes
with CUDA builds of torch; without it, or with MPQ_CUDA_QUANT=torch, the backend uses the torch ops.
"""
from __future__ import annotations

import functools
import os

import torch

from ..formats import format_info

# every launch compiles with these: no FMA contraction, so a multiply then an add rounds twice, as in torch
# (tests/test_cuda_fused_compile.py checks the PTX for sm_90 without a GPU)
LAUNCH_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)
QUANT_BLOCK = 1024          # elements of a row per step of quantize_rows
DEQUANT_TILE = (32, 128)    # rows, columns of a dequantize program


def quantizer() -> str:
    """Which activation quantizer CUDA inputs get: "triton" (the fused kernels) or "torch ops" (Triton absent,
    or MPQ_CUDA_QUANT=torch)."""
    mode = os.environ.get("MPQ_CUDA_QUANT", "triton")
    if mode not in ("triton", "torch"):
        raise ValueError(f"MPQ_CUDA_QUANT must be 'triton' or 'torch', got {mode!r}")
    return "triton" if mode == "triton" and _kernels() is not None else "torch ops"


def enabled(x: torch.Tensor) -> bool:
    """Whether the fused kernels run for this input: a CUDA tensor and ``quantizer() == "triton"``."""
    return quantizer() == "triton" and x.is_cuda


@functools.lru_cache(maxsize=None)
def _kernels():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def quantize_rows(x_ptr, q_ptr, s_ptr, static_ptr, M, K, stride_x, stride_q, QMAX: tl.constexpr,
                      INT8: tl.constexpr, STATIC: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        valid = row < M  # rows past M are torch._int_mm's zero padding
        offs = tl.arange(0, BLOCK)
        if STATIC:
            s = tl.load(static_ptr + offs * 0)
        else:
            amax = tl.zeros([BLOCK], tl.float32)
            for k0 in range(0, K, BLOCK):
                o = k0 + offs
                x = tl.load(x_ptr + row * stride_x + o, mask=(o < K) & valid, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            amax = tl.maximum(tl.zeros([BLOCK], tl.float32) + tl.max(amax, axis=0), 1e-12)
            s = tl.math.div_rn(amax, tl.full([BLOCK], QMAX, tl.float32))
        inv = tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), s)
        for k0 in range(0, K, BLOCK):
            o = k0 + offs
            x = tl.load(x_ptr + row * stride_x + o, mask=(o < K) & valid, other=0.0).to(tl.float32)
            v = tl.minimum(tl.maximum(x * inv, -QMAX), QMAX)
            if INT8:  # + 1.5 * 2**23 rounds to an integer, ties to even (there is no rint in the interpreter)
                q = ((v + 12582912.0) - 12582912.0).to(tl.int8)
            else:
                q = v.to(tl.float8e4nv, fp_downcast_rounding="rtne")
            tl.store(q_ptr + row * stride_q + o, q, mask=o < K)
        tl.store(s_ptr + row + offs * 0, s, mask=offs == 0)

    @triton.jit
    def dequantize(acc_ptr, sa_ptr, ws_ptr, bias_ptr, y_ptr, M, N, stride_acc, stride_y, HAS_BIAS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        acc = tl.load(acc_ptr + rm[:, None] * stride_acc + rn[None, :], mask=mask, other=0).to(tl.float32)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
        y = acc * (sa[:, None] * ws[None, :])
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if y_ptr.dtype.element_ty != tl.float32:  # round to nearest even, as torch's .to() does
            y = y.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], y, mask=mask)

    return quantize_rows, dequantize


def quantize_rows(x2: torch.Tensor, int8: bool, static_scale=None, rows: int = 0):
    """(q [max(rows, M), K] int8 or float8_e4m3fn, scales [M, 1] float32, or the static scale as given).
    Rows past M are zeros (torch._int_mm's padding)."""
    quant, _ = _kernels()
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    rows = max(rows, m)
    q = torch.empty(rows, k, device=x2.device, dtype=torch.int8 if int8 else torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=x2.device, dtype=torch.float32)
    static = static_scale is not None
    quant[(rows,)](x2, q, s, static_scale if static else s, m, k, x2.stride(0), q.stride(0),
                   QMAX=format_info("int8" if int8 else "fp8_e4m3")["max"], INT8=int8, STATIC=static, BLOCK=QUANT_BLOCK,
                   **LAUNCH_OPTIONS)
    return q, (static_scale if static else s[:m])


def dequantize(acc: torch.Tensor, m: int, sa: torch.Tensor, ws: torch.Tensor, bias, dtype):
    """acc[:m] (int32 [rows, N]) · sa[m] · ws[n] (+ bias[n]) as ``dtype``; sa [m, 1] or a 0-dim static scale."""
    _, deq = _kernels()
    n = acc.shape[1]
    y = torch.empty(m, n, device=acc.device, dtype=dtype)
    sa = sa.reshape(-1).expand(m).contiguous() if sa.numel() == 1 else sa.reshape(-1)
    bm, bn = DEQUANT_TILE
    deq[(_cdiv(m, bm), _cdiv(n, bn))](acc, sa, ws.reshape(-1), bias if bias is not None else ws, y, m, n,
                                      acc.stride(0), y.stride(0), HAS_BIAS=bias is not None, BM=bm, BN=bn,
                                      **LAUNCH_OPTIONS)
    return y


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
