"""fake_quantize at the ends of every input dtype: ±max, subnormals, and both mixed with ordinary values.

Every format, every input dtype, every ISA: the C++ core equals mpq.reference bit for bit, a finite input gives a
finite output (the plain bf16/fp16 casts excepted where the value lies beyond that format's range: they overflow
to Inf by definition, as torch's casts do), and every value comes back within the format's resolution at its
block's scale, so an extreme value is neither lost to 0 nor blown up to Inf.
"""
import math

import pytest
import torch

import mpq
from mpq import _core, reference
from mpq.formats import compute_scales, format_info
from _format_specs import INPUT_DTYPES, TORCH_CASTS

ISAS = _core.available_isas()


def bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def extreme_cases(dtype):
    """Named 1-D inputs at the ends of `dtype` (written in float64, rounded to `dtype`)."""
    fi = torch.finfo(dtype)
    big, tiny, sub = fi.max, fi.tiny, fi.smallest_normal * fi.eps  # sub: the smallest subnormal
    cases = {
        "+-max": [big, -big],
        "+-max,1": [big, -big, 1.0],
        "max,small": [big, 1e-3, -2.5, 0.0, 7.0],
        "-max,small": [-big, 1e-3, 2.5, 0.0, -7.0],
        "near max": [big, big * 0.75, -big * 0.9, big / 3, -big / 2, big / 255, 1.0],
        "+-max,subnormals": [big, -big, sub, -sub, tiny, -tiny * 3],
        "subnormals": [sub, -sub, sub * 3, -sub * 7, sub * 100, tiny / 2, -tiny / 4],
        "tiny,subnormals": [tiny, -tiny, sub, tiny * 4, -sub * 5],
        "max,-0,+0": [big, -0.0, 0.0],
        "max,inf,nan": [big, -big, float("inf"), float("-inf"), float("nan"), 2.0],
    }
    if dtype == torch.float32:
        cases["3.4e38"] = [3.4e38, -3.4e38, 1.0]
        cases["fp16 range in fp32"] = [65504.0, -65504.0, 1.0]
        cases["bf16 max in fp32"] = [3.3895313892515355e38, -3.3895313892515355e38, 0.5]
    # 19 values: the 16-wide minmax step, then the 8-wide quantize steps and the tails of both
    rng = [((-1) ** i) * big / (i + 1) for i in range(17)]
    cases["max, 17 spread"] = rng + [sub, -tiny]
    return {k: torch.tensor(v, dtype=torch.float64).to(dtype) for k, v in cases.items()}


def rules_for(fmt, scaled_casts=False):
    """The scale rules to try. bf16/fp16 are plain casts (rule "none"); with a scale rule they are non-saturating
    formats on a scaled grid, whose grid points may overflow to Inf: only compared bit for bit."""
    info = format_info(fmt)
    if info["hw_scales"]:
        return ["hw", "maxabs", "pow2"]
    if fmt in TORCH_CASTS:
        return ["none", "maxabs", "pow2"] if scaled_casts else ["none"]
    return ["maxabs", "pow2"]


def cases_for(dtype):
    return [(n, x) for n, x in extreme_cases(dtype).items()]


def quantize_both(x, fmt, rule, isa, force_isa, **kwargs):
    with force_isa(isa):
        got = mpq.fake_quantize(x, fmt, scale_rule=rule, **kwargs)
    want = reference.fake_quantize(x, fmt, scale_rule=rule, **kwargs)
    return got, want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", mpq.FORMATS)
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
def test_core_equals_reference_at_the_extremes(isa, fmt, dtype, force_isa):
    for rule in rules_for(fmt, scaled_casts=True):
        for name, x in cases_for(dtype):
            got, want = quantize_both(x, fmt, rule, isa, force_isa)
            assert torch.equal(bits(got), bits(want)), (name, rule, got.tolist(), want.tolist())
        # the same values per row (one scale per block: the blocks path) and in groups of 8 (AVX2 steps)
        rows = torch.stack([torch.cat([x, x.flip(0)])[:8] if x.numel() >= 8 else
                            torch.cat([x] * (8 // x.numel() + 1))[:8] for _, x in cases_for(dtype)])
        for kwargs in (dict(axis=0), dict(group_size=4), dict(axis=1)):
            got, want = quantize_both(rows, fmt, rule, isa, force_isa, **kwargs)
            assert torch.equal(bits(got), bits(want)), (rule, kwargs)


def expected_overflow(x, fmt):
    """Where a finite input may become ±Inf: only the non-saturating casts, where torch's casts overflow (a value
    beyond the format's range, or a format value beyond the input dtype's: bf16 rounds 65504 up to 65536)."""
    if fmt in TORCH_CASTS:
        return ~x.float().to(TORCH_CASTS[fmt]).to(x.dtype).isfinite()
    return torch.zeros_like(x, dtype=torch.bool)


def tolerance(x, fmt, rule, scale):
    """The largest |y - x| the format allows at `scale` (float64): half a step of the format's grid, doubled
    for slack, plus one ulp of the input dtype for the final rounding."""
    info = format_info(fmt)
    fi = torch.finfo(x.dtype)
    a = x.double().abs()
    dtype_ulp = a * fi.eps + fi.smallest_normal * fi.eps
    s = float(scale)
    if info["is_int"]:
        return 0.51 * s + dtype_ulp
    v = a / s
    step = torch.clamp(v, min=2.0 ** info["emin"]) * 2.0 ** -info["mbits"]  # the grid step at v (subnormal floor)
    return step * s + dtype_ulp


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", mpq.FORMATS)
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
def test_extremes_stay_finite_and_near_themselves(isa, fmt, dtype, force_isa):
    info = format_info(fmt)
    for rule in rules_for(fmt):
        for name, x in cases_for(dtype):
            with force_isa(isa):
                y = mpq.fake_quantize(x, fmt, scale_rule=rule)
            s, _ = compute_scales(x, fmt, scale_rule=rule)
            assert bool(s.isfinite().all()) and bool((s > 0).all()), (name, rule, s)
            finite = x.isfinite()
            overflow = expected_overflow(x, fmt)
            assert bool(y[finite & ~overflow].isfinite().all()), (name, rule, x.tolist(), y.tolist())
            check = finite & ~overflow
            if not info["is_int"] and fmt not in TORCH_CASTS:  # saturating float formats: within ±max * s
                check &= x.double().abs() <= info["max"] * float(s)
            err = (y.double() - x.double()).abs()
            tol = tolerance(x, fmt, rule, s)
            bad = check & ~(err <= tol)
            assert not bool(bad.any()), (name, rule, float(s), x[bad].tolist(), y[bad].tolist())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["int8_asym", "int4_asym"])
def test_asymmetric_fp32_range_wider_than_fp32(isa, fmt, force_isa):
    """hi - lo overflows fp32: the scale is still (hi - lo) / (qmax - qmin), computed without overflowing."""
    x = torch.tensor([3.4e38, -3.4e38, 1.0])
    qrange = 255 if fmt == "int8_asym" else 15
    s, zp = compute_scales(x, fmt)
    assert math.isclose(float(s), 6.8e38 / qrange, rel_tol=1e-6)
    with force_isa(isa):
        y = mpq.fake_quantize(x, fmt)
    assert bool(y.isfinite().all())
    assert abs(float(y[0]) - 3.4e38) <= 0.51 * float(s) and abs(float(y[1]) + 3.4e38) <= 0.51 * float(s)
    assert torch.equal(bits(y), bits(reference.fake_quantize(x, fmt)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["int8_asym", "int4_asym", "int8", "int4"])
def test_fp16_max_stays_finite(isa, fmt, force_isa):
    x = torch.tensor([65504.0, -65504.0, 1.0], dtype=torch.float16)
    with force_isa(isa):
        y = mpq.fake_quantize(x, fmt)
    s, _ = compute_scales(x, fmt)
    assert bool(y.isfinite().all()), y
    assert bool(((y.double() - x.double()).abs() <= 0.51 * float(s) + 32).all()), (y, s)
    assert torch.equal(bits(y), bits(reference.fake_quantize(x, fmt)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
def test_explicit_scale_saturates_at_the_dtype_max(isa, dtype, force_isa):
    """A grid point beyond the input dtype's range (scale too large for it) saturates at ±max, not ±Inf."""
    big = torch.finfo(dtype).max
    x = torch.tensor([big, -big, 1.0], dtype=torch.float64).to(dtype)
    for fmt, scale in (("int8", big / 99.6), ("fp8_e4m3", big / 440), ("int8_asym", big / 99.6)):
        zp = dict(zero_point=128.0) if fmt == "int8_asym" else {}
        with force_isa(isa):
            y = mpq.fake_quantize(x, fmt, scale=scale, **zp)
        assert y[0] == big and y[1] == -big, (fmt, y)
        assert torch.equal(bits(y), bits(reference.fake_quantize(x, fmt, scale=scale, **zp)))


def test_scales_equal_the_reference_at_the_extremes():
    for dtype in INPUT_DTYPES:
        for fmt in mpq.FORMATS:
            for rule in rules_for(fmt, scaled_casts=True):
                for name, x in cases_for(dtype):
                    s, zp = compute_scales(x, fmt, scale_rule=rule)
                    rs, rzp = reference._scales(x.float().reshape(1, -1), fmt, rule)
                    assert torch.equal(s.view(torch.int32), rs.reshape(-1).view(torch.int32)), (fmt, rule, name)
                    assert torch.equal(zp, rzp.reshape(-1)), (fmt, rule, name)
