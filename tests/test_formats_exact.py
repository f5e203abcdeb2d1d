"""fake_quantize against torch's own casts, bit for bit, on every 16-bit input and on hand-picked fp32 values."""
import pytest
import torch

import mpq
from mpq import _core, reference
from _format_specs import (INPUT_DTYPES, TORCH_CASTS, TORCH_FP8, every_16bit, gaudi2_e4m3_grid, grid_midpoints,
                           round_to_grid, special_fp32)

ISAS = _core.available_isas()


def bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", sorted(TORCH_FP8))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_every_16bit_input(isa, fmt, dtype, force_isa):
    dt, fmax = TORCH_FP8[fmt]
    x = every_16bit(dtype)
    with force_isa(isa):
        got = mpq.fake_quantize(x, fmt, scale=1.0)
    want = x.float().clamp(-fmax, fmax).to(dt).to(dtype)  # saturate, then torch's cast; NaN bits included
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", sorted(TORCH_FP8))
def test_fp8_fp32_ties_subnormals_and_specials(isa, fmt, force_isa):
    dt, fmax = TORCH_FP8[fmt]
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        grid_midpoints(dt),                                     # every tie
        special_fp32(fmax),
        torch.randn(20000, generator=gen) * fmax / 8,           # normal range
        torch.randn(20000, generator=gen) * 2.0**-9,            # subnormal range of the e4m3 formats
        torch.randn(5000, generator=gen) * 2.0**-17,            # subnormal range of e5m2 and below
    ])
    with force_isa(isa):
        got = mpq.fake_quantize(x, fmt, scale=1.0)
    want = x.clamp(-fmax, fmax).to(dt).float()
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gaudi2_every_16bit_input_against_spec_table(isa, dtype, force_isa):
    x = every_16bit(dtype)
    with force_isa(isa):
        got = mpq.fake_quantize(x, "fp8_e4m3_gaudi2", scale=1.0)
    want = round_to_grid(x.float(), gaudi2_e4m3_grid())
    same = (got.double() == want) & (got.double().signbit() == want.signbit())
    assert bool((same | (got.isnan() & want.isnan())).all())


def test_gaudi2_grid_facts():
    grid = gaudi2_e4m3_grid()
    assert grid[-1] == 240 and grid[1] == 2.0**-9 and len(grid.unique()) == 120
    x = torch.tensor([240.0, 244.0, 250.0, 1e9, float("inf"), 2.0**-10, 2.0**-10 * 3, 0.0])
    y = mpq.fake_quantize(x, "fp8_e4m3_gaudi2", scale=1.0)
    assert y.tolist() == [240.0, 240.0, 240.0, 240.0, 240.0, 0.0, 2.0**-8, 0.0]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", sorted(TORCH_CASTS))
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
def test_bf16_fp16_formats_equal_torch_casts(isa, fmt, dtype, force_isa):
    gen = torch.Generator().manual_seed(1)
    if dtype == torch.float32:
        x = torch.cat([special_fp32(65504.0), torch.randn(50000, generator=gen) * 1e3,
                       torch.randn(20000, generator=gen) * 2.0**-20,
                       torch.tensor([65519.0, 65520.0, -65520.0, 2.0**-25, 2.0**-25 * 3, 3.4e38])])
    else:
        x = every_16bit(dtype)
    with force_isa(isa):
        got = mpq.fake_quantize(x, fmt)
    want = x.float().to(TORCH_CASTS[fmt]).to(dtype)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(bits(got)[~nan], bits(want)[~nan])  # NaN payloads: torch's own differ by code path


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_symmetric_int_equals_torch_fake_quantize(fmt, per_channel):
    qmax = 127 if fmt == "int8" else 7
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(64, 96, generator=gen) * torch.rand(64, 1, generator=gen) * 3
    if per_channel:
        scale = w.abs().amax(dim=1) / qmax
        want = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(64, dtype=torch.int32), 0, -qmax, qmax)
        got = mpq.fake_quantize(w, fmt, axis=0)
    else:
        scale = (w.abs().max() / qmax).item()
        want = torch.fake_quantize_per_tensor_affine(w, scale, 0, -qmax, qmax)
        got = mpq.fake_quantize(w, fmt)
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", ["int8_asym", "int4_asym"])
def test_asymmetric_int_equals_torch_fake_quantize(fmt):
    qmax = 255 if fmt == "int8_asym" else 15
    gen = torch.Generator().manual_seed(3)
    w = torch.rand(32, 64, generator=gen) * 5 - 1  # mostly positive: a zero point far from the middle
    lo = torch.minimum(w.amin(dim=1), torch.zeros(32))
    hi = torch.maximum(w.amax(dim=1), torch.zeros(32))
    scale = (hi - lo) / qmax
    zp = torch.round(-lo / scale).clamp(0, qmax)
    want = torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), 0, 0, qmax)
    got = mpq.fake_quantize(w, fmt, axis=0)
    assert torch.equal(got, want)
    assert torch.equal(mpq.fake_quantize(w, fmt, axis=0, scale=scale, zero_point=zp), want)


def test_int_rounding_ties_go_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 200.0, -200.0])
    got = mpq.fake_quantize(x, "int8", scale=1.0)
    assert got.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 126.0, 127.0, 127.0, -127.0]


LAYOUTS = [dict(), dict(axis=0), dict(axis=1), dict(group_size=16), dict(group_size=8, axis=0)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", mpq.FORMATS)
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_core_equals_reference(isa, fmt, dtype, layout, force_isa):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(24, 48, generator=gen) * torch.logspace(-3, 3, 48)).to(dtype)
    x[3, 5] = float("nan")
    x[7, 9] = float("inf")
    x[8] = 0.0
    kwargs = LAYOUTS[layout]
    with force_isa(isa):
        got = mpq.fake_quantize(x, fmt, **kwargs)
    want = reference.fake_quantize(x, fmt, **kwargs)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "int4", "fp8_e5m2", "int8_asym"])
@pytest.mark.parametrize("rule", ["maxabs", "pow2"])
def test_scale_rules_equal_reference(fmt, rule):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 64, generator=gen) * torch.logspace(-30, 30, 16).unsqueeze(1)
    got = mpq.fake_quantize(x, fmt, axis=0, scale_rule=rule)
    want = reference.fake_quantize(x, fmt, axis=0, scale_rule=rule)
    assert torch.equal(bits(got), bits(want))
