"""Properties every quantizer must have, on inputs hypothesis picks: idempotence, bounded error, monotonicity."""
import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mpq
from mpq.formats import format_info

FMTS = [f for f in mpq.FORMATS]
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
vectors = st.lists(finite, min_size=1, max_size=64)
pow2_scales = st.integers(min_value=-12, max_value=12).map(lambda e: 2.0**e)


@settings(max_examples=150, deadline=None)
@given(vectors, st.sampled_from(FMTS), pow2_scales)
def test_idempotent_with_a_fixed_scale(values, fmt, scale):
    x = torch.tensor(values, dtype=torch.float32)
    kwargs = dict(scale=scale, zero_point=0 if format_info(fmt)["asymmetric"] else None)
    once = mpq.fake_quantize(x, fmt, **kwargs)
    assert torch.equal(mpq.fake_quantize(once, fmt, **kwargs), once)


@settings(max_examples=150, deadline=None)
@given(vectors, st.sampled_from(FMTS), st.sampled_from(["pow2", None]))
def test_idempotent_with_power_of_two_and_hardware_scales(values, fmt, rule):
    x = torch.tensor(values, dtype=torch.float32)
    info = format_info(fmt)
    if rule is None and info["default_rule"] != "hw":
        rule = "pow2"  # max-abs scales are not exactly reproducible from a quantized tensor; powers of two are
    if info["default_rule"] == "none":
        rule = None
    assume(not info["asymmetric"])  # a zero point moves when the minimum does: covered with a fixed scale above
    once = mpq.fake_quantize(x, fmt, scale_rule=rule)
    assert torch.equal(mpq.fake_quantize(once, fmt, scale_rule=rule), once)


def step_at(v, info, scale):
    """The spacing of the format's grid around v (scaled)."""
    if info["is_int"]:
        return scale
    a = abs(v) / scale
    e = max(math.floor(math.log2(a)) if a > 0 else info["emin"], info["emin"])
    return 2.0 ** (e - info["mbits"]) * scale


@settings(max_examples=200, deadline=None)
@given(vectors, st.sampled_from(["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e4m3_gaudi2", "int8", "int4"]))
def test_error_at_most_half_a_step(values, fmt):
    x = torch.tensor(values, dtype=torch.float32)
    info = format_info(fmt)
    from mpq.formats import compute_scales
    scale = compute_scales(x, fmt)[0].item()
    y = mpq.fake_quantize(x, fmt)
    for v, q in zip(x.tolist(), y.tolist()):
        if abs(v) > info["max"] * scale:
            continue  # saturated (only when the hardware scale set cannot cover the range)
        # half a step, plus float32 rounding of v / s and q * s
        assert abs(q - v) <= step_at(v, info, scale) / 2 * (1 + 1e-6) + abs(v) * 2e-7


@settings(max_examples=150, deadline=None)
@given(vectors, st.sampled_from(FMTS))
def test_monotone(values, fmt):
    x = torch.tensor(sorted(values), dtype=torch.float32)
    y = mpq.fake_quantize(x, fmt)
    assert bool((y[1:] >= y[:-1]).all())
