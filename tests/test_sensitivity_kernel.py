"""The fused sensitivity kernel (C++, every ISA) against its plain-torch reference (mpq.sensitivity_ref), which
materialises Q(T) with mpq.fake_quantize and sums in float64."""
import numpy as np
import pytest
import torch

from mpq import _core
from mpq.calibration.kernel import TensorQuant, act_quant, delta_sums, weight_quant
from mpq.candidates import CANDIDATES
from mpq.reference import delta_sums as ref_delta_sums

QUANTS = [
    TensorQuant("fp8_e4m3", "row"), TensorQuant("fp8_e4m3", "tensor"), TensorQuant("int8", "row"),
    TensorQuant("int8", "tensor", scale=0.03), TensorQuant("fp8_e4m3_gaudi2", "tensor"),
    TensorQuant("fp8_e5m2", "row"), TensorQuant("bf16"), TensorQuant("fp16"), TensorQuant("int8_asym", "row"),
    TensorQuant("int4_asym", "tensor", scale=0.5, zero_point=7.0),
]


class _Abs:
    """A quantizer whose reference sum gives Σ |g ⊙ (Q(t) − t)|: the scale of float32 accumulation error."""

    def __init__(self, q, t):
        self.q, self._t = q, t

    def apply(self, t_abs):  # |Q(t) − t| + |t| so that ref(|t|, |g|) = Σ |g| |Q(t) − t|
        return (self.q.apply(self._t) - self._t).abs() + t_abs


def check(t, g, quants, sample_rows):
    got = delta_sums(t, g, quants, sample_rows, use_core=True)
    want = ref_delta_sums(t, g, quants, sample_rows)
    mags = [_Abs(q, t) for q in quants]
    mag = ref_delta_sums(t.abs(), g.abs() if g.dim() == 3 else g.abs().unsqueeze(0), mags, sample_rows)
    assert got.shape == want.shape
    assert torch.all((got - want).abs() <= 1e-5 * mag + 1e-30), (got - want).abs().max()


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("cols", [1, 7, 16, 17, 33, 1000])
def test_kernel_matches_reference(isa, cols, force_isa):
    gen = torch.Generator().manual_seed(cols)
    t = torch.randn(6, cols, generator=gen) * torch.where(torch.rand(6, cols, generator=gen) < 0.05, 40.0, 1.0)
    quants = QUANTS + ([TensorQuant("int4", "group", group_size=cols)] if cols > 1 else [])
    with force_isa(isa):
        for k in (1, 3, 11):
            g = torch.randn(k, 6, cols, generator=gen)
            check(t, g, quants, 2)
        check(t, torch.randn(6, cols, generator=gen), quants, 6)


@pytest.mark.parametrize("isa", _core.available_isas())
def test_kernel_large_and_every_candidate(isa, force_isa):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4 * 64, 640, generator=gen)
    w = torch.randn(96, 640, generator=gen) * 0.05
    with force_isa(isa):
        for c in CANDIDATES.values():
            if "linear" not in c.kinds:  # attention's layouts: tests/test_attention.py
                continue
            if c.act_format is not None:
                aq = act_quant(c, static_scale=0.05) if c.act_static else act_quant(c)
                check(x, torch.randn(x.shape, generator=gen), [aq], 64)
            check(w, torch.randn(3, *w.shape, generator=gen), [weight_quant(c)], 96)


def test_kernel_equals_candidate_quantizers():
    """TensorQuant reproduces Candidate.quantize_weight / quantize_act exactly."""
    gen = torch.Generator().manual_seed(2)
    w, x = torch.randn(64, 128, generator=gen), torch.randn(2, 8, 128, generator=gen)
    for c in CANDIDATES.values():
        if "linear" not in c.kinds:  # attention's layouts: tests/test_attention.py
            continue
        if c.points > 1:  # multipoint: the kernel quantizes the residual, not W (test_multipoint checks that)
            continue
        assert torch.equal(weight_quant(c).apply(w), c.quantize_weight(w))
        if c.act_format is not None:
            s = 0.05 if c.act_static else None
            got = act_quant(c, s).apply(x.reshape(-1, 128)).reshape(x.shape)
            assert torch.equal(got, c.quantize_act(x, s))


def test_nan_propagates():
    t = torch.ones(2, 8)
    t[1, 3] = float("nan")
    out = delta_sums(t, torch.ones(2, 8), [TensorQuant("int8", "row")], 1, use_core=True)
    assert torch.isfinite(out[0, 0, 0]) and torch.isnan(out[0, 1, 0])


def test_binding_refuses_bad_arrays():
    t = np.zeros(16, np.float32)
    spec = TensorQuant("int8", "row").core_spec(2, 8)
    with pytest.raises(ValueError, match="sensitivity: t"):
        _core.sensitivity(t.astype(np.float64), t, 2, 8, 1, 1, [spec])
    with pytest.raises(ValueError, match="sensitivity: g"):
        _core.sensitivity(t, np.zeros(32, np.float32)[::2], 2, 8, 1, 1, [spec])
    with pytest.raises(ValueError, match="n_grads"):
        _core.sensitivity(t, t, 2, 8, 2, 1, [spec])
    with pytest.raises(ValueError, match="sample_rows"):
        _core.sensitivity(t, t, 2, 8, 1, 3, [spec])
    with pytest.raises(ValueError, match="unknown format"):
        _core.sensitivity(t, t, 2, 8, 1, 1, [("nope", 8, "maxabs", spec[3], spec[4])])
    with pytest.raises(ValueError, match="block"):
        _core.sensitivity(t, t, 2, 8, 1, 1, [("int8", 5, "maxabs", spec[3], spec[4])])


def test_python_wrapper_checks_shapes():
    with pytest.raises(ValueError, match="2-D"):
        delta_sums(torch.zeros(8), torch.zeros(8), [TensorQuant("int8")], 1)
    with pytest.raises(ValueError, match="shape"):
        delta_sums(torch.zeros(2, 8), torch.zeros(2, 7), [TensorQuant("int8")], 1)
    with pytest.raises(ValueError, match="sample_rows"):
        delta_sums(torch.zeros(2, 8), torch.zeros(2, 8), [TensorQuant("int8")], 3)


def test_gil_released():
    """Two threads run the kernel at once (it would serialise, not fail, with the GIL held: check it runs)."""
    import threading
    t = torch.randn(512, 512)
    res = []
    th = [threading.Thread(target=lambda: res.append(delta_sums(t, t, [TensorQuant("int8", "row")], 512)))
          for _ in range(2)]
    [x.start() for x in th]
    [x.join() for x in th]
    assert len(res) == 2 and torch.equal(res[0], res[1])


@pytest.mark.parametrize("isa", _core.available_isas())
def test_values_at_float32s_extremes_give_the_reference_sums(isa, force_isa):
    """Q(t) saturates at ±FLT_MAX in the kernel as fake_quantize's does: sums stay finite and equal the reference."""
    big = torch.finfo(torch.float32).max
    t = torch.tensor([[big, -big, 1.0, 0.5] * 5, [big * 0.999, 3.0, -2.0, 1e-3] * 5])
    g = torch.full((1, 2, 20), 1e-30)
    quants = [TensorQuant("int8", "row"), TensorQuant("int8_asym", "row"), TensorQuant("fp8_e4m3", "tensor"),
              TensorQuant("int8", "tensor", scale=big / 100)]
    with force_isa(isa):
        got = delta_sums(t, g, quants, 1, use_core=True)
    want = ref_delta_sums(t, g, quants, 1)
    assert torch.isfinite(want).all() and torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert torch.allclose(got, want, rtol=1e-5, atol=0), (got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_tensors_are_the_widened_float32_ones(dtype):
    """A bf16 / fp16 model's activations and gradients: the kernel's sums are those of the same values widened to
    float32 (what the native modules quantize), not of Q computed in the half dtype."""
    torch.manual_seed(0)
    t = (torch.randn(12, 40) * 3).to(dtype)
    g = torch.randn(12, 40).to(dtype)
    got = delta_sums(t, g, QUANTS, 4)
    want = delta_sums(t.float(), g.float(), QUANTS, 4)
    assert torch.equal(got, want)
