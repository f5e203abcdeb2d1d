"""fake_quantize's contract: layouts, dtypes, bad input, and that the input is never touched."""
import numpy as np
import pytest
import torch

import mpq
from mpq import reference
from mpq.formats import compute_scales


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown format 'fp7'.*fp8_e4m3.*int4"):
        mpq.fake_quantize(torch.ones(3), "fp7")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.complex64, torch.float64, torch.bool])
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises(ValueError, match="supports float32, bfloat16 and float16"):
        mpq.fake_quantize(torch.zeros(4, dtype=dtype), "int8")


def test_group_size_must_divide_the_axis():
    with pytest.raises(ValueError, match="group_size 5 does not divide dimension 1 of size 8"):
        mpq.fake_quantize(torch.ones(2, 8), "int4", group_size=5)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        mpq.fake_quantize(torch.ones(2, 8), "int4", group_size=0)


def test_axis_out_of_range():
    with pytest.raises(ValueError, match="axis 2 is out of range for a tensor with 2 dimensions"):
        mpq.fake_quantize(torch.ones(2, 8), "int8", axis=2)
    with pytest.raises(ValueError, match="out of range"):
        mpq.fake_quantize(torch.ones(2, 8), "int8", axis=-3)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 1e-45])
def test_bad_explicit_scales(bad):
    with pytest.raises(ValueError, match="scale must be"):
        mpq.fake_quantize(torch.ones(4), "fp8_e4m3", scale=bad)
    with pytest.raises(ValueError, match="scale must be"):
        mpq.fake_quantize(torch.ones(2, 4), "int8", axis=0, scale=torch.tensor([1.0, bad]))


def test_scale_count_must_match_blocks():
    with pytest.raises(ValueError, match=r"scale has 3 values; expected 1 or one per block \(2\)"):
        mpq.fake_quantize(torch.ones(2, 4), "int8", axis=0, scale=torch.ones(3))


def test_asymmetric_explicit_scale_needs_zero_point():
    with pytest.raises(ValueError, match="needs a zero_point"):
        mpq.fake_quantize(torch.ones(4), "int8_asym", scale=0.1)
    with pytest.raises(ValueError, match="zero_point must be 0"):
        mpq.fake_quantize(torch.ones(4), "int8", scale=0.1, zero_point=3)


def test_unknown_scale_rule_and_hw_without_hardware_scales():
    with pytest.raises(ValueError, match="unknown scale_rule"):
        mpq.fake_quantize(torch.ones(4), "int8", scale_rule="mse")
    with pytest.raises(ValueError, match="hardware scales"):
        mpq.fake_quantize(torch.ones(4), "fp8_e4m3", scale_rule="hw")


@pytest.mark.parametrize("fmt", mpq.FORMATS)
def test_empty_tensors(fmt):
    for shape in [(0,), (0, 8), (3, 0)]:
        x = torch.empty(shape)
        y = mpq.fake_quantize(x, fmt)
        assert y.shape == x.shape and y is not x


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int4", "bf16"])
def test_non_contiguous_input_matches_contiguous(fmt):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, 32, generator=gen)
    x = base.t()  # non-contiguous
    assert not x.is_contiguous()
    for kwargs in [dict(), dict(axis=0), dict(group_size=8)]:
        assert torch.equal(mpq.fake_quantize(x, fmt, **kwargs), mpq.fake_quantize(x.contiguous(), fmt, **kwargs))


@pytest.mark.parametrize("fmt", mpq.FORMATS)
def test_input_is_never_modified(fmt):
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(8, 32, generator=gen).to(dtype)
        before = x.clone()
        y = mpq.fake_quantize(x, fmt, group_size=8)
        assert torch.equal(x.view(torch.uint8), before.view(torch.uint8))
        assert y.data_ptr() != x.data_ptr()


def test_per_channel_axis_and_groups_use_the_right_blocks():
    w = torch.tensor([[1.0, 100.0], [2.0, 4.0]])
    # per output channel (axis=0): row 0's scale comes from 100, row 1's from 4
    s, _ = compute_scales(w, "int8", axis=0)
    assert torch.allclose(s, torch.tensor([100 / 127, 4 / 127]))
    s, _ = compute_scales(w, "int8", axis=1)
    assert torch.allclose(s, torch.tensor([2 / 127, 100 / 127]))
    x = torch.arange(1.0, 17.0).reshape(2, 8)
    s, _ = compute_scales(x, "int8", group_size=4)
    assert torch.allclose(s, torch.tensor([4.0, 8.0, 12.0, 16.0]) / 127)


def test_scale_rules():
    x = torch.tensor([3.0, -1.0])
    s, _ = compute_scales(x, "fp8_e4m3", scale_rule="pow2")
    assert s.item() == 2.0**-7  # 3 <= 448 * 2^-7 = 3.5, and 3 > 448 * 2^-8
    s, _ = compute_scales(x, "fp8_e4m3_gaudi2")  # the hardware set: 2^-8, 2^-4, 1, 16
    assert s.item() == 2.0**-4  # 3 > 240 * 2^-8 = 0.94, 3 <= 240 * 2^-4 = 15
    s, _ = compute_scales(torch.tensor([1e6]), "fp8_e4m3_gaudi2")
    assert s.item() == 16.0  # nothing fits: the largest, and the values saturate
    s, _ = compute_scales(torch.tensor([0.0, float("nan"), float("inf")]), "int8")
    assert s.item() == 1.0  # no finite non-zero value


def test_explicit_scale_overrides_the_rule():
    x = torch.tensor([1.0, 2.0, 3.0])
    y = mpq.fake_quantize(x, "int8", scale=0.5)
    assert y.tolist() == [1.0, 2.0, 3.0]
    y = mpq.fake_quantize(x, "int4", scale=0.25)
    assert y.tolist() == [1.0, 1.75, 1.75]  # saturates at 7 * 0.25


def test_nan_and_inf_handling():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    for fmt in ("fp8_e4m3", "int8"):
        y = mpq.fake_quantize(x, fmt)
        assert y[0].isnan() and y[3] == 1.0  # the scale comes from the finite values only
        assert y[1] == 1.0 and y[2] == -1.0  # Inf saturates to max * scale = the largest finite magnitude
    y = mpq.fake_quantize(x, "bf16")
    assert y[1] == float("inf") and y[2] == -float("inf")


def test_reference_runs_for_other_devices_with_the_same_contract():
    x = torch.randn(4, 8)
    assert torch.equal(reference.fake_quantize(x, "fp8_e4m3", axis=0), mpq.fake_quantize(x, "fp8_e4m3", axis=0))


def test_cuda_tensors_go_through_the_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(64, 64)
    assert torch.equal(mpq.fake_quantize(x.cuda(), "fp8_e4m3", axis=0).cpu(), mpq.fake_quantize(x, "fp8_e4m3", axis=0))


@pytest.mark.parametrize("kwargs", [dict(), dict(axis=0), dict(axis=1), dict(group_size=4), dict(group_size=2, axis=0)])
def test_out_argument_equals_the_returned_tensor(kwargs):
    x = torch.randn(6, 8)
    out = torch.empty_like(x)
    y = mpq.fake_quantize(x, "int4", out=out, **kwargs)
    assert y is out and torch.equal(out, mpq.fake_quantize(x, "int4", **kwargs))
    inplace = x.clone()
    mpq.fake_quantize(inplace, "int4", out=inplace, **kwargs)
    assert torch.equal(inplace, out)
    with pytest.raises(ValueError, match="out must be a tensor of shape"):
        mpq.fake_quantize(x, "int4", out=torch.empty(3), **kwargs)


def test_tensors_that_require_grad_are_quantized_without_autograd():
    x = torch.randn(4, 8, requires_grad=True)
    y = mpq.fake_quantize(x, "int8", axis=0)
    assert not y.requires_grad and torch.equal(y, mpq.fake_quantize(x.detach(), "int8", axis=0))


OVERLAP = "out overlaps the input without being the same memory"


@pytest.mark.parametrize("kwargs", [dict(), dict(axis=0), dict(axis=1), dict(group_size=3)])
@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3", "int4_asym"])
def test_out_partly_overlapping_the_input_is_refused(fmt, kwargs):
    base = torch.randn(37)
    before = base.clone()
    x, out = base[:-1].view(4, 9), base[1:].view(4, 9)  # out is x shifted by one element
    with pytest.raises(ValueError, match=OVERLAP):
        mpq.fake_quantize(x, fmt, out=out, **kwargs)
    with pytest.raises(ValueError, match=OVERLAP):
        mpq.fake_quantize(out, fmt, out=x, **kwargs)  # shifted the other way
    assert torch.equal(base, before)  # refused before anything was written


def test_out_overlapping_through_another_storage_is_refused():
    a = np.random.default_rng(0).standard_normal(33).astype(np.float32)
    x, out = torch.from_numpy(a[:-1]), torch.from_numpy(a[1:])  # two torch storages over overlapping memory
    with pytest.raises(ValueError, match=OVERLAP):
        mpq.fake_quantize(x, "int8", out=out)


def test_out_with_the_same_start_but_another_layout_is_refused():
    base = torch.randn(16)
    x = base.view(4, 4).t()  # the same memory as out, transposed
    with pytest.raises(ValueError, match=OVERLAP):
        mpq.fake_quantize(x, "int8", out=base.view(4, 4))
    strided = base[::2]  # every other value; out = the first 8 values overlaps half of them
    with pytest.raises(ValueError, match=OVERLAP):
        mpq.fake_quantize(strided, "int8", out=base[:8])


@pytest.mark.parametrize("kwargs", [dict(), dict(axis=0), dict(axis=1), dict(group_size=3)])
def test_out_exactly_the_input_memory_works_in_place(kwargs):
    x = torch.randn(4, 9)
    want = mpq.fake_quantize(x, "int8_asym", **kwargs)
    same = x.clone()
    alias = same.view(36).view(4, 9)  # another tensor object over exactly the same memory
    y = mpq.fake_quantize(same, "int8_asym", out=alias, **kwargs)
    assert y is alias and torch.equal(same, want)


@pytest.mark.parametrize("kwargs", [dict(), dict(axis=0), dict(group_size=3)])
def test_out_disjoint_view_of_the_same_storage_works(kwargs):
    base = torch.randn(72)
    x, out = base[:36].view(4, 9), base[36:].view(4, 9)
    x_before = x.clone()
    y = mpq.fake_quantize(x, "int4", out=out, **kwargs)
    assert y is out and torch.equal(out, mpq.fake_quantize(x_before, "int4", **kwargs))
    assert torch.equal(x, x_before)


def test_core_refuses_partly_overlapping_buffers():
    from mpq import _core
    base = torch.randn(33).numpy()
    with pytest.raises(ValueError, match="overlap without being the same buffer"):
        _core.fake_quantize_auto_into(base[:-1], base[1:], 0, 32, "int8", "maxabs", 1)
    with pytest.raises(ValueError, match="overlap without being the same buffer"):
        _core.fake_quantize_into(base[1:], base[:-1], 0, 32, "int8", np.ones(1, np.float32),
                                 np.zeros(1, np.float32), 1)
    x = base[:32].copy()
    _core.fake_quantize_auto_into(x, x, 0, 32, "int8", "maxabs", 1)  # the same buffer: in place
