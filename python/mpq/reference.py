"""Plain-torch definitions of mpq's kernels: the path for devices other than the CPU, and the reference the tests
compare the C++ core against. Written independently of the C++ code (torch's own casts and rounding do the work);
not part of the stable public surface.

Semantics (as in cpp/include/mpq/formats.hpp): v = x * (1/s) in float32; fp8 formats saturate to ±max and round
with torch's casts; bf16/fp16 are plain casts; ints round half to even and clamp; y = q * s, which for the
saturating formats (fp8, int) saturates at ±the input dtype's largest finite value (never Inf from a finite
input); NaN stays NaN with the bits torch's fp8 casts give; the result is rounded to the input dtype.
Asymmetric scales are (hi - lo) / (qmax - qmin); where hi - lo overflows float32 they come from
(hi/2 - lo/2) against (qmax - qmin)/2, the float32 result with an unbounded exponent.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

_FLT_MIN = torch.finfo(torch.float32).tiny
_FLT_MAX = torch.finfo(torch.float32).max
_CAST_MAX = {torch.bfloat16: _FLT_MAX, torch.float16: 65504.0}  # the core's Format::max of bf16 / fp16

# name: (torch dtype to cast through or None, max, int range or None, asymmetric, default rule, hardware scales)
_SPECS = {
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0, None, False, "maxabs", ()),
    "fp8_e4m3fnuz": (torch.float8_e4m3fnuz, 240.0, None, False, "maxabs", ()),
    # Gaudi-2 E4M3 is the e4m3fn grid limited to ±240 (exponent 15 reserved, as in IEEE formats)
    "fp8_e4m3_gaudi2": (torch.float8_e4m3fn, 240.0, None, False, "hw", (2.0**-8, 2.0**-4, 1.0, 16.0)),
    "fp8_e5m2": (torch.float8_e5m2, 57344.0, None, False, "maxabs", ()),
    "bf16": (torch.bfloat16, None, None, False, "none", ()),
    "fp16": (torch.float16, None, None, False, "none", ()),
    "int8": (None, 127.0, (-127, 127), False, "maxabs", ()),
    "int4": (None, 7.0, (-7, 7), False, "maxabs", ()),
    "int8_asym": (None, 255.0, (0, 255), True, "maxabs", ()),
    "int4_asym": (None, 15.0, (0, 15), True, "maxabs", ()),
}


def fake_quantize(t: torch.Tensor, fmt: str, *, axis: Optional[int] = None, group_size: Optional[int] = None,
                  scale=None, zero_point=None, scale_rule: Optional[str] = None) -> torch.Tensor:
    """The same contract as ``mpq.fake_quantize``, in plain torch, on any device."""
    cast, fmax, irange, asym, default_rule, hw = _SPECS[fmt]
    rule = scale_rule or default_rule
    x = t.detach().float()
    view, unview = _blocks(x, axis, group_size)  # view: [..., blocks, block] with one scale per row
    if scale is None:
        s, zp = _scales(view, fmt, rule)
    else:
        nblocks = view.shape[:-1]
        s = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(-1)
        s = (s.expand(nblocks.numel()) if s.numel() == 1 else s).reshape(*nblocks, 1)
        if zero_point is None:
            zp = torch.zeros_like(s)
        else:
            zp = torch.as_tensor(zero_point, dtype=torch.float32, device=x.device).reshape(-1)
            zp = (zp.expand(nblocks.numel()) if zp.numel() == 1 else zp).reshape(*nblocks, 1)
    inv = 1.0 / s
    v = view * inv
    if irange is not None:
        q = (torch.round(v) + zp).clamp(irange[0], irange[1]) - zp
        y = q * s
        y = torch.where(view.isnan(), torch.full_like(y, float("nan")), y)
    else:
        if fmax is not None:
            v = v.clamp(-fmax, fmax)  # saturate (Inf too); NaN passes through clamp
        q = v.to(cast).float()  # torch's own rounding, subnormals and NaN bits
        if fmax is None:  # bf16/fp16: torch's NaN bits depend on its code path; mpq's are canonical
            q = torch.where(q.isnan(), torch.full_like(q, float("nan")), q)
        y = torch.where(q.isnan(), q, q * s)  # keep the cast's NaN bits (q * s would quiet them)
    if irange is not None or fmax is not None:  # saturating formats: a grid point past the dtype's range
        dmax = torch.finfo(t.dtype).max         # gives ±its max, not ±Inf (comparisons leave NaN bits alone)
        y = torch.where(y > dmax, torch.full_like(y, dmax), torch.where(y < -dmax, torch.full_like(y, -dmax), y))
    return _to_dtype(unview(y), t.dtype)


def _blocks(x: torch.Tensor, axis: Optional[int], group_size: Optional[int]):
    """A view of x with the values sharing a scale in the last dimension, and the inverse."""
    if group_size is not None:
        gaxis = x.dim() - 1 if axis is None else axis % x.dim()
        moved = x.movedim(gaxis, -1)
        shape = moved.shape
        view = moved.reshape(*shape[:-1], shape[-1] // group_size, group_size)
        return view, lambda y: y.reshape(shape).movedim(-1, gaxis)
    if axis is not None:
        a = axis % x.dim()
        moved = x.movedim(a, 0)
        shape = moved.shape
        return moved.reshape(shape[0], -1), lambda y: y.reshape(shape).movedim(0, a)
    return x.reshape(1, -1), lambda y: y.reshape(x.shape)


def _scales(view: torch.Tensor, fmt: str, rule: str):
    cast, fmax, irange, asym, _, hw = _SPECS[fmt]
    finite = view.isfinite()
    inf = torch.tensor(float("inf"), device=view.device)
    lo = torch.where(finite, view, inf).amin(-1, keepdim=True)
    hi = torch.where(finite, view, -inf).amax(-1, keepdim=True)
    empty = lo > hi
    zero = torch.zeros_like(lo)
    ones = torch.ones_like(lo)
    if rule == "none":
        return ones, zero
    if asym:
        lo0, hi0 = torch.minimum(lo, zero), torch.maximum(hi, zero)
        span = hi0 - lo0
        rng = torch.full_like(span, float(irange[1] - irange[0]))
        # hi - lo overflows float32: halve both span and range (exact for values that large), which every rule
        # below compares and divides only by each other
        wide = ~span.isfinite() & ~empty
        span = torch.where(wide, hi0 * 0.5 - lo0 * 0.5, span)
        rng = torch.where(wide, rng * 0.5, rng)
    else:
        lo0 = zero
        span = torch.maximum(-lo, hi)
        # bf16/fp16 have no saturation bound in _SPECS; a scale rule divides by their largest value (as the core)
        rng = torch.full_like(span, fmax if fmax is not None else _CAST_MAX[cast])
    # a true quotient on every device: CUDA computes "tensor / Python number" as a product with the reciprocal,
    # one ulp away from the C++ core's division
    quotient = span / rng
    if rule == "maxabs":
        s = quotient
    elif rule == "pow2":
        _, e = torch.frexp(quotient)
        s = torch.ldexp(ones, e.float())
        # a quotient that underflows to 0 (bf16's range is FLT_MAX) asks for a power below FLT_MIN: the clamp's
        s = torch.where(quotient == 0, torch.full_like(s, _FLT_MIN), s)
        # exact corrections: the smallest power of two with span <= rng * s
        for _ in range(2):
            s = torch.where((span <= rng * (s * 0.5)) & (s > _FLT_MIN), s * 0.5, s)
            s = torch.where(span > rng * s, s * 2.0, s)
    elif rule == "hw":
        s = torch.full_like(span, hw[-1])
        for h in reversed(hw):
            s = torch.where(span <= rng * h, torch.full_like(span, h), s)
    else:
        raise ValueError(f"unknown scale rule {rule!r}")
    s = torch.clamp(s, min=_FLT_MIN)
    degenerate = empty | (span == 0)
    s = torch.where(degenerate, ones, s)
    zp = zero
    if asym:
        zp = torch.clamp(torch.round(irange[0] - lo0 / s), irange[0], irange[1])
        zp = torch.where(degenerate, zero, zp)
    return s, zp


def _to_dtype(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rounds a float32 result to the input dtype, with mpq's NaN bits (torch's own fp32→bf16 NaN bits depend
    on the code path it takes)."""
    if dtype == torch.float32:
        return y
    out = y.to(dtype)
    nan = y.isnan()
    if not nan.any():
        return out
    if dtype == torch.bfloat16:
        canon = torch.full_like(out.view(torch.int16), 0x7FC0)
    else:  # fp16 as F16C converts: sign | quiet bit | top 10 payload bits
        b = y.view(torch.int32)
        canon = ((((b >> 16) & 0x8000) | 0x7E00 | ((b >> 13) & 0x3FF))).to(torch.int16)
    return torch.where(nan, canon, out.view(torch.int16)).view(dtype)


# --- the fused sensitivity kernel (cpp/include/mpq/sensitivity.hpp) ------------------------------------------
# It materialises Q_c(T) with the deployment quantizer and sums in float64: no code shared with the C++ kernel.
def delta_sums(t: torch.Tensor, g: torch.Tensor, quants: Sequence, sample_rows: int) -> torch.Tensor:
    """out[k, b, c] = Σ_{rows of block b} g[k] ⊙ (Q_c(t) − t) in float64. t: [rows, cols]; g: [K, rows, cols]."""
    rows, cols = t.shape
    g3 = g.unsqueeze(0) if g.dim() == 2 else g
    t = t.detach()
    n_blocks = rows // sample_rows
    gd = g3.detach().to(torch.float64)
    out = torch.zeros(g3.shape[0], n_blocks, len(quants), dtype=torch.float64, device=t.device)
    td = t.to(torch.float64)
    for c, q in enumerate(quants):
        d = q.apply(t).to(torch.float64) - td
        out[:, :, c] = (gd * d).reshape(g3.shape[0], n_blocks, -1).sum(-1)
    return out
