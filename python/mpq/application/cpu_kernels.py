"""The registry of CPU implementations: for each candidate, every kernel that can run it, what it needs and the
numbers it computes, and whether it is admitted on this CPU.

An implementation is admitted when the CPU has the features it states *and* a short exactness probe passes on
this machine: full-range adversarial data whose scales are exact powers of two, so the int8 paths' outputs are
the exact integer sums (a saturating int16 pair, as oneDNN's u8s8 path does on AVX2, or any other wrong sum shows as a
difference), and the other paths stay within the error their numerics state. Which admitted implementation is
*fastest* is a matter of timing on this machine: ``mpq.profile`` (``profiling.kernel_choice``) measures it per
layer shape and phase and records the choice; ``apply(mode="native")`` installs exactly that choice.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import _core
from ..candidates import BASE, Candidate, get_candidate
from ..formats import format_info
from . import cpu_features
from . import native_cpu as N


@dataclass(frozen=True)
class Implementation:
    name: str
    candidates: tuple[str, ...]
    numerics: str                       # what it computes, and where that differs from the candidate's quantizer
    build: Callable[..., nn.Module]     # (linear, candidate, static scale, stored QuantizedWeight or None)
    needs: tuple[str, ...] = ()         # /proc/cpuinfo flags it cannot run without
    tolerance: float = 0.0              # the probe's bound on |y − exact| / max|exact| (0: bit-exact integers)
    shapes: Callable[[int, int, Candidate], str] = lambda k, n, cand: ""  # why (K, N) is refused; "" = accepted

    def refuses(self, linear: nn.Linear, cand: Candidate) -> str:
        """Why this implementation cannot run ``linear`` in ``cand`` ("" when it can)."""
        return self.shapes(linear.in_features, linear.out_features, cand)


def _int8pack_shapes(k, n, cand):
    # torch 2.13's CPU kernel reads K in blocks of 8: other K gave wrong sums (K = 68, 4) or a segfault (K = 70)
    return "" if k % 8 == 0 else f"torch._weight_int8pack_mm needs in_features divisible by 8, got {k}"


def _int4pack_shapes(k, n, cand):
    if n % 16:
        return f"torch._weight_int4pack_mm_for_cpu needs out_features divisible by 16, got {n}"
    if cand.group_size not in (32, 64, 128, 256):
        return f"torch._weight_int4pack_mm_for_cpu takes groups of 32, 64, 128 or 256, not {cand.group_size}"
    return ""


def _int8(linear, cand, scale, quantized=None):
    return N.Int8Linear(linear, scale if cand.act_static else None, quantized, cand.name)


def _int8_int_mm(linear, cand, scale, quantized=None):
    return N.Int8IntMmLinear(linear, scale if cand.act_static else None, quantized, cand.name)


_INT8_NUMERICS = ("int8 weights per channel (amax/127, round half to even), activations per token or static "
                  "(mpq's quantizer), exact int32 sums, acc·(s_x·s_w)+b in float32: the candidate's quantizer")
# bf16 rounds each output (2^-8 relative) and, in the weight-only kernels, the activations and scales (2^-8 each)
_BF16_TOL = 2.0 ** -7

IMPLEMENTATIONS = (
    Implementation("mpq_int8", ("int8", "int8_static", "int8_sq", "int8_static_sq"), _INT8_NUMERICS + "; mpq's C++ GEMM (AVX-512 "
                   "VNNI vpdpbusd on (w+128)·x less 128·Σx, int32 lanes with no int16 step; AVX2 vpmaddubsw with "
                   "|x|·sign(w, x), never a saturating pair; scalar without AVX2)", _int8),
    Implementation("torch_int_mm", ("int8", "int8_static", "int8_sq", "int8_static_sq"), _INT8_NUMERICS + "; torch._int_mm for the GEMM "
                   "(oneDNN AMX/VNNI kernels, a reference loop on CPUs without them)", _int8_int_mm),
    Implementation("torch_int8pack", ("w8a16", "w8a16_gptq", "w8a16_awq"), "torch._weight_int8pack_mm: int8 weights per channel, the scales "
                   "and activations rounded to bf16, bf16 output (differs from the candidate by up to 2^-7 "
                   "relative)", lambda linear, cand, scale, q=None: N.W8A16Linear(linear, q, cand.name), tolerance=_BF16_TOL,
                   shapes=_int8pack_shapes),
    Implementation("torch_int4pack", ("w4a16", "w4a16_g128", "w4a16_g64", "w4a16_g128_gptq", "w4a16_g128_awq",
                                      "w4a16_g128_ortn", "w4a16_g64_gptq", "w4a16_g64_awq", "w4a16_g64_ortn"),
                   "torch._weight_int4pack_mm_for_cpu: int4 groups (codes + 8 as nibbles: optimized RTN's -8 and "
                   "negative scales too), bf16 group scales and activations, bf16 output (up to 2^-7 relative from "
                   "the candidate)",
                   lambda linear, cand, scale, q=None: N.W4A16Linear(linear, cand.group_size, cand.name, q),
                   tolerance=_BF16_TOL, shapes=_int4pack_shapes),
    Implementation("torch_bf16", ("bf16",), "F.linear in bfloat16 (AMX or AVX512-BF16 where the CPU has them, "
                   "emulated elsewhere), bf16 output", lambda linear, cand, scale: N.HalfLinear(
                       linear, torch.bfloat16, cand.name), tolerance=_BF16_TOL),
    Implementation("torch_fp16", ("fp16",), "F.linear in float16, fp16 output",
                   lambda linear, cand, scale: N.HalfLinear(linear, torch.float16, cand.name),
                   tolerance=2.0 ** -9),
    Implementation("torch_scaled_mm", ("fp8", "fp8_static", "fp8_e5m2"), "torch._scaled_mm on float8 operands "
                   "quantized by the candidate's rule, float32 output",
                   lambda linear, cand, scale: N.Fp8Linear(linear, cand, scale if cand.act_static else None),
                   tolerance=1e-5),
)


def _multipoint(layout):
    def build(linear, cand, scale, quantized=None):
        from .multipoint_linear import MultipointLinear
        return MultipointLinear(linear, cand.weight_format, cand.group_size, cand.points, layout)
    return build


def _multipoint_shapes(k, n, cand):  # the weight-only kernel of the points' format decides
    return _int4pack_shapes(k, n, cand) if cand.weight_format == "int4" else _int8pack_shapes(k, n, cand)


_MULTIPOINT = tuple(f"{b}_mp{k}" for b in ("w8a16", "w4a16_g128", "w4a16_g64") for k in (2, 3))
IMPLEMENTATIONS += tuple(
    Implementation(f"multipoint_{layout}", _MULTIPOINT, f"multipoint: the k points on the weight-only int8pack / "
                   f"int4pack kernels ({what}); each point as that kernel computes it (bf16 activations and "
                   "scales, up to 2^-7 relative per point)", _multipoint(layout), tolerance=3 * _BF16_TOL,
                   shapes=_multipoint_shapes)
    for layout, what in (("stacked", "one GEMM on the stacked [k·out, in] points, then the sum of the k output "
                                     "blocks"), ("points", "k GEMMs, summed")))
BY_NAME = {impl.name: impl for impl in IMPLEMENTATIONS}
# candidate -> the implementations that can run it (admitted on this CPU or not: ``admitted`` says)
CPU_KERNELS = {c: ", ".join(impl.name for impl in IMPLEMENTATIONS if c in impl.candidates)
               for c in dict.fromkeys(c for impl in IMPLEMENTATIONS for c in impl.candidates)}


def implementations(candidate: str) -> tuple[Implementation, ...]:
    """Every registered implementation of ``candidate``, admitted here or not."""
    name = get_candidate(candidate).name
    return tuple(impl for impl in IMPLEMENTATIONS if name in impl.candidates)


def admitted(candidate: str) -> tuple[Implementation, ...]:
    return tuple(impl for impl in implementations(candidate) if admission(impl.name, candidate)[0])


def runnable(linear: nn.Linear, candidate: str) -> tuple[Implementation, ...]:
    """The admitted implementations of ``candidate`` that accept ``linear``'s shape."""
    cand = get_candidate(candidate)
    return tuple(impl for impl in admitted(cand.name) if not impl.refuses(linear, cand))


def why_not(candidate: str) -> str:
    """Why no implementation of ``candidate`` is admitted here ("" when one is)."""
    impls = implementations(candidate)
    if not impls:
        return f"no CPU implementation exists for {candidate!r}"
    reasons = [f"{impl.name}: {admission(impl.name, candidate)[1]}" for impl in impls]
    return "" if admitted(candidate) else "; ".join(reasons)


def admission(implementation: str, candidate: str) -> tuple[bool, str]:
    """(True, "") when ``implementation`` runs ``candidate`` correctly on this CPU, else (False, the reason):
    a missing CPU feature, an error, or the probe's measured error. Probed once per process and core ISA (the
    tests force the C++ core down to each ISA the machine has)."""
    return _admission(implementation, get_candidate(candidate).name, _core.isa())


@functools.lru_cache(maxsize=None)
def _admission(implementation: str, candidate: str, isa: str) -> tuple[bool, str]:
    impl = BY_NAME.get(implementation)
    if impl is None:
        raise ValueError(f"unknown CPU implementation {implementation!r}; known: {', '.join(BY_NAME)}")
    cand = get_candidate(candidate)
    if cand.name not in impl.candidates:
        raise ValueError(f"implementation {implementation!r} does not run {cand.name!r} (it runs "
                         f"{', '.join(impl.candidates)})")
    missing = [f for f in impl.needs if not cpu_features.has(f)]
    if missing:
        return False, f"this CPU lacks {', '.join(missing)} ({cpu_features.cpu_name()})"
    try:
        err = probe_error(impl, cand)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # an op this torch build or CPU cannot run
        return False, f"fails on this CPU: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if not err <= impl.tolerance:
        return False, (f"wrong on this CPU: the exactness probe's relative error is {err:.3g} (allowed "
                       f"{impl.tolerance:.3g})")
    return True, ""


def _probe_data(k: int, m: int, n: int, seed: int):
    """Integer-valued weights and activations in [-127, 127] whose every row reaches ±127 (so int8 per-row scales
    are exactly 1), with the adversarial rows that break int16-pair kernels: +127 everywhere against +127 weights
    (the largest sums), alternating signs, and -127 everywhere (the largest negative sums)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), generator=g).float()
    x = torch.randint(-127, 128, (m, k), generator=g).float()
    w[:, 0], x[:, 0] = 127.0, -127.0
    w[0], x[0] = 127.0, 127.0                   # the largest positive sums
    if n > 1:
        w[1] = torch.where(torch.arange(k) % 2 == 0, 127.0, -127.0)
    if m > 1:
        x[-1] = -127.0
    return x, w


def probe_error(impl: Implementation, cand: Candidate) -> float:
    """max |y − reference| / max |reference| of ``impl`` on adversarial data at several row counts (1, an odd
    count, a full tile), the reference being the candidate's own quantizer with float64 sums: Q(x) Q(W)ᵀ. K = 1024
    keeps every sum of the int8 paths below 2^24, so float32 holds it exactly and their error must be 0; the
    activations are scaled by 2^-9 (exactly: scales become 2^-9, the codes stay) so fp16 outputs do not overflow."""
    k, n = 1024, 48
    static_scale = 2.0 ** -9 * 127.0 / cand_act_max(cand) if cand.act_static else None  # ±max|x| -> ±max code
    worst = 0.0
    for m in (1, 7, 64):
        x, w = _probe_data(k, m, n, seed=m)
        x = x * 2.0 ** -9
        lin = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
            y = impl.build(lin, cand, static_scale)(x).double()
            ref = cand.quantize_act(x, static_scale).double() @ cand.quantize_weight(w).double().t()
        worst = max(worst, float((y - ref).abs().max() / ref.abs().max()))
    return worst


def cand_act_max(cand: Candidate) -> float:
    """The largest activation code of ``cand`` (a static scale of 127 / max maps ±127 to ±max)."""
    return float(format_info(cand.act_format)["max"]) if cand.act_format else 127.0


# The dtypes a model may be loaded in for the native CPU modules (and so for the cpu backend's timing).
MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def widened(linear: nn.Linear) -> nn.Linear:
    """A float32 Linear holding ``linear``'s weights and bias widened (exact for bf16 / fp16), for building a module."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    out.weight = nn.Parameter(linear.weight.detach().float(), requires_grad=False)
    if linear.bias is not None:
        out.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)
    return out


def native_linear(linear: nn.Linear, candidate: str, act_scale: Optional[float] = None,
                  implementation: Optional[str] = None, *, quantized=None) -> nn.Module:
    """The CPU module of ``implementation`` (default: the first admitted one, in registry order) for ``linear``.
    Static-activation candidates need ``act_scale``; calibrated-weight candidates (GPTQ, AWQ, SmoothQuant) the
    stored ``quantized`` weight (a ``QuantizedWeight``), whose codes the module runs.
    @raises ValueError naming the candidate and why no implementation runs it here (or why the one asked for
    does not), for a missing or bad static scale, a group size that does not divide the layer, or a Linear that
    is not float32, bf16 or fp16 on the CPU (a bf16 / fp16 Linear is quantized from its weights widened to
    float32, exactly; the module then returns the input's dtype)."""
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"native_linear expects an nn.Linear, got {type(linear).__name__}")
    if candidate == BASE:
        return linear
    cand = get_candidate(candidate)
    if not implementations(cand.name):
        raise ValueError(f"candidate {cand.name!r} has no native CPU kernel; CPU kernels exist for "
                         f"{', '.join(CPU_KERNELS)}")
    if linear.weight.dtype not in MODEL_DTYPES or linear.weight.device.type != "cpu":
        raise ValueError(f"native CPU kernels replace {' / '.join(str(d) for d in MODEL_DTYPES)} CPU Linear layers, "
                         f"got {linear.weight.dtype} on {linear.weight.device}")
    if linear.weight.dtype != torch.float32:  # the kernels quantize float32 values: the same weights, widened
        linear = widened(linear)
    if not cand.applies_to(linear.weight):
        raise ValueError(f"candidate {cand.name!r} does not apply to a Linear with in_features "
                         f"{linear.in_features} (group size {cand.group_size})")
    if cand.act_static and act_scale is None:
        raise ValueError(f"candidate {cand.name!r} has static activation scales: pass act_scale")
    if cand.calibrated_weight and quantized is None:
        raise ValueError(f"candidate {cand.name!r} runs integers chosen in calibration: pass quantized= (its "
                         "QuantizedWeight)")
    if quantized is not None and tuple(quantized.shape) != tuple(linear.weight.shape):
        raise ValueError(f"the stored weight has shape {quantized.shape}, the Linear {tuple(linear.weight.shape)}")
    if cand.act_static and not (math.isfinite(act_scale) and act_scale > 0):
        raise ValueError(f"candidate {cand.name!r}: the static activation scale must be positive and finite, "
                         f"got {act_scale}")
    if implementation is None:
        impls = admitted(cand.name)
        if not impls:
            raise ValueError(f"candidate {cand.name!r} cannot run natively on this CPU: {why_not(cand.name)}")
        fitting = [impl for impl in impls if not impl.refuses(linear, cand)]
        if not fitting:
            raise ValueError(f"candidate {cand.name!r} cannot run a {linear.in_features}x{linear.out_features} "
                             f"Linear natively: " + "; ".join(f"{i.name}: {i.refuses(linear, cand)}" for i in impls))
        impl = fitting[0]
    else:
        ok, reason = admission(implementation, cand.name)
        if not ok:
            raise ValueError(f"candidate {cand.name!r}: implementation {implementation!r} cannot run here: {reason}")
        impl = BY_NAME[implementation]
        if impl.refuses(linear, cand):
            raise ValueError(f"candidate {cand.name!r}: {impl.refuses(linear, cand)}")
    module = impl.build(linear, cand, act_scale, quantized) if quantized is not None else \
        impl.build(linear, cand, act_scale)
    module.implementation = impl.name
    return module
