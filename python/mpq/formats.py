"""Numeric formats and ``fake_quantize`` (quantize then dequantize), the function that calibration and deployment
share. On the CPU the C++ core does the work; on other devices ``mpq.reference`` (plain torch) does, with the
same result bit for bit."""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from . import _core
from ._tensors import DTYPE_TAGS, SUPPORTED_DTYPES, as_numpy

FORMATS: tuple[str, ...] = tuple(_core.format_names())
SCALE_RULES = ("maxabs", "pow2", "hw", "none")

ScaleArg = Union[None, float, torch.Tensor]


def format_info(fmt: str) -> dict:
    """The parameters of an element format (bits, max, default scale rule, ...)."""
    check_format(fmt)
    return _core.format_info(fmt)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")


def fake_quantize(
    t: torch.Tensor,
    fmt: str,
    *,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    scale: ScaleArg = None,
    zero_point: ScaleArg = None,
    scale_rule: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Quantize ``t`` to ``fmt`` and back; returns a new tensor of ``t``'s dtype, shape and device (or ``out``,
    a contiguous tensor like ``t`` to write into, which saves allocating; ``out=t`` works in place, and an ``out``
    that shares only part of ``t``'s memory raises ValueError, as torch's own ``out=`` does).

    Granularity: one scale for the whole tensor (default); ``axis=k`` one scale per index along axis k (per
    channel: ``axis=0`` for a Linear weight); ``group_size=g`` one scale per g consecutive values along the
    reduction axis, which is ``axis`` if given, else the last one.
    Scales come from ``scale_rule`` ("maxabs", "pow2", "hw"; default: the format's own) over the finite values of
    each block, unless ``scale`` gives them: a number, or a tensor with one value per block (per channel: C
    values; per group: one per group in row-major order). Asymmetric int formats with an explicit scale need
    ``zero_point`` too. ``t`` is never modified unless it is ``out``.
    """
    check_format(fmt)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fake_quantize expects a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"fake_quantize supports float32, bfloat16 and float16 tensors, got {t.dtype}")
    info = _core.format_info(fmt)
    rule = check_rule(scale_rule, info)
    moved, block, restore = _block_layout(t, axis, group_size)
    n_blocks = moved.numel() // block if block else 0
    scales, zeros = _explicit_scales(scale, zero_point, info, n_blocks)
    if out is not None:
        _check_out(out, t)
    if t.numel() == 0:
        return t.clone() if out is None else out
    if t.device.type != "cpu":
        from . import reference
        result = reference.fake_quantize(t, fmt, axis=axis, group_size=group_size, scale=scale,
                                         zero_point=zero_point, scale_rule=scale_rule)
        return result if out is None else out.copy_(result)
    src = moved.detach().contiguous()  # values only: fake_quantize is not differentiable (callers add a
    # straight-through estimator where they need one, as mpq.apply does)
    # Write straight into `out` when the blocked layout is t's own memory order; otherwise go through a buffer.
    direct = out is not None and t.is_contiguous() and restore is _same_layout
    dst = out if direct else torch.empty_like(src, memory_format=torch.contiguous_format)
    threads = torch.get_num_threads()
    if scales is None:
        _core.fake_quantize_auto_into(as_numpy(src), as_numpy(dst), DTYPE_TAGS[t.dtype], block, fmt, rule, threads)
    else:
        _core.fake_quantize_into(as_numpy(src), as_numpy(dst), DTYPE_TAGS[t.dtype], block, fmt, scales, zeros,
                                 threads)
    if direct:
        return out
    result = restore(dst)
    return result if out is None else out.copy_(result)


def _same_layout(out: torch.Tensor) -> torch.Tensor:
    """Marks a blocked layout that is the tensor's own memory order (nothing to move back)."""
    return out


def _check_out(out: torch.Tensor, t: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor) or out.shape != t.shape or out.dtype != t.dtype or out.device != t.device:
        raise ValueError(f"out must be a tensor of shape {tuple(t.shape)}, dtype {t.dtype} on {t.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if _overlaps_partially(out, t):
        raise ValueError("out overlaps the input without being the same memory (a view of the input's storage "
                         "shifted or laid out differently): pass out=t to work in place, or a disjoint tensor")


def _overlaps_partially(out: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether out (contiguous, t's shape and dtype) shares memory with t without being exactly t's memory (the
    same first element and, t being contiguous too, the same layout). As torch's own out= check
    (at::get_overlap_status, which Python cannot call: torch._C._overlaps only says "same storage"), it compares
    the byte ranges the two span, which for a strided t is conservative."""
    if out.numel() == 0 or t.numel() == 0:
        return False
    if out.data_ptr() == t.data_ptr() and t.is_contiguous():
        return False  # exactly the same memory: in place, which the kernels support
    # addresses, not storages: two storages may share memory (torch.from_numpy of overlapping numpy views)
    size = t.element_size()  # torch strides are never negative: t spans [data_ptr, data_ptr + extent)
    t_end = t.data_ptr() + size * (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())))
    return out.data_ptr() < t_end and t.data_ptr() < out.data_ptr() + size * out.numel()


def compute_scales(t: torch.Tensor, fmt: str, *, axis: Optional[int] = None, group_size: Optional[int] = None,
                   scale_rule: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-block (scale, zero_point) that ``fake_quantize`` would use, as two float32 tensors."""
    check_format(fmt)
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"compute_scales supports float32, bfloat16 and float16 tensors, got {t.dtype}")
    info = _core.format_info(fmt)
    rule = check_rule(scale_rule, info)
    moved, block, _ = _block_layout(t, axis, group_size)
    src = moved.detach().to("cpu").contiguous()
    s, z = _core.compute_scales(as_numpy(src), DTYPE_TAGS[t.dtype], block, fmt, rule, torch.get_num_threads())
    return torch.from_numpy(s), torch.from_numpy(z)


def check_rule(scale_rule: Optional[str], info: dict) -> str:
    rule = info["default_rule"] if scale_rule is None else scale_rule
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown scale_rule {scale_rule!r}; known: {', '.join(SCALE_RULES)}")
    if rule == "hw" and not info["hw_scales"]:
        raise ValueError(f"scale_rule='hw' needs a format with hardware scales (fp8_e4m3_gaudi2), not {info['name']!r}")
    return rule


def _block_layout(t: torch.Tensor, axis: Optional[int], group_size: Optional[int]):
    """Moves the quantization axis so that every scale covers one contiguous block; returns the moved tensor,
    the block length and a function that puts a result back into t's layout."""
    if axis is not None:
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"axis must be an int, got {type(axis).__name__}")
        if not -t.dim() <= axis < max(t.dim(), 1) or t.dim() == 0:
            raise ValueError(f"axis {axis} is out of range for a tensor with {t.dim()} dimensions")
        axis %= t.dim()
    if group_size is not None:
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if t.dim() == 0:
            raise ValueError("group_size needs a tensor with at least one dimension")
        gaxis = t.dim() - 1 if axis is None else axis
        if t.shape[gaxis] % group_size:
            raise ValueError(f"group_size {group_size} does not divide dimension {gaxis} of size {t.shape[gaxis]}")
        if gaxis == t.dim() - 1:
            return t, group_size, _same_layout
        return t.movedim(gaxis, -1), group_size, lambda out: out.movedim(-1, gaxis).contiguous()
    if axis is not None:
        block = t.numel() // t.shape[axis] if t.shape[axis] else 0
        if axis == 0:
            return t, block, _same_layout
        return t.movedim(axis, 0), block, lambda out: out.movedim(0, axis).contiguous()
    return t, t.numel(), _same_layout


def _explicit_scales(scale: ScaleArg, zero_point: ScaleArg, info: dict, n_blocks: int):
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point given without scale")
        return None, None
    s = _as_float_array(scale, "scale")
    with np.errstate(divide="ignore", over="ignore"):
        inverse_finite = np.all(np.isfinite(np.float32(1) / s))
    if not np.all(np.isfinite(s)) or not np.all(s > 0) or not inverse_finite:
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    if s.size not in (1, n_blocks):
        raise ValueError(f"scale has {s.size} values; expected 1 or one per block ({n_blocks})")
    if info["asymmetric"]:
        if zero_point is None:
            raise ValueError(f"format {info['name']!r} is asymmetric: an explicit scale needs a zero_point")
        z = _as_float_array(zero_point, "zero_point")
        if z.size != s.size:
            raise ValueError(f"zero_point has {z.size} values, scale has {s.size}")
        if not np.all(z == np.round(z)) or z.min() < info["qmin"] or z.max() > info["qmax"]:
            raise ValueError(f"zero_point must be integers in [{info['qmin']}, {info['qmax']}]")
    else:
        if zero_point is not None and np.any(_as_float_array(zero_point, "zero_point") != 0):
            raise ValueError(f"format {info['name']!r} is symmetric: zero_point must be 0")
        z = np.zeros_like(s)
    return s, z


def _as_float_array(value: ScaleArg, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{what} must be a real tensor, got {value.dtype}")
        return value.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return np.array([value], dtype=np.float32)
    raise ValueError(f"{what} must be a number or a tensor, got {type(value).__name__}")
