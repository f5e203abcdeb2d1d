"""The C++ int8 pieces (vs mpq.fake_quantize and numpy, every ISA) and the native CPU Linear modules."""
import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq import _core
from mpq.application import native_cpu as NC
from mpq.application.cpu_kernels import CPU_KERNELS, native_linear

SIZES = [(1, 1), (1, 7), (3, 9), (2, 15), (5, 17), (4, 31), (3, 33), (2, 64), (7, 100)]


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("shape", SIZES)
def test_quantize_rows_matches_fake_quantize(isa, shape, force_isa):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    x = torch.randn(*shape, generator=g) * torch.logspace(-3, 3, shape[0]).unsqueeze(1)
    x[0, 0] = 0.0
    if shape[1] > 2:
        x[-1, 1] = -x[-1].abs().max() * 1.0   # a negative maximum
    with force_isa(isa):
        q, s = _core.quantize_rows_int8(x.numpy())
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == shape
    want = mpq.fake_quantize(x, "int8", axis=0)
    assert torch.equal(torch.from_numpy(q).float() * torch.from_numpy(s)[:, None], want)
    assert np.abs(q).max() <= 127


@pytest.mark.parametrize("isa", _core.available_isas())
def test_quantize_rows_special_values(isa, force_isa):
    x = torch.tensor([[0.0] * 40,
                      [float("inf"), 2.0, -1.0] + [0.5] * 37,
                      [float("nan"), 3.0, -3.0] + [1.0] * 37,
                      [1e-40, -1e-40] + [0.0] * 38], dtype=torch.float32)
    with force_isa(isa):
        q, s = _core.quantize_rows_int8(x.numpy())
    assert s[0] == 1.0 and not q[0].any()               # all-zero row: scale 1
    assert s[1] == np.float32(2.0) / np.float32(127.0)  # inf ignored by the scale, saturates to 127
    assert q[1, 0] == 127 and q[1, 1] == 127 and q[1, 2] == -64
    assert q[2, 0] == -127 and q[2, 1] == 127            # NaN -> -127 (documented)
    with force_isa("scalar"):
        q2, s2 = _core.quantize_rows_int8(x.numpy())
    assert np.array_equal(q, q2) and np.array_equal(s, s2)
    # finite rows equal fake_quantize
    assert torch.equal(torch.from_numpy(q[[0, 3]]).float() * torch.from_numpy(s[[0, 3]])[:, None],
                       mpq.fake_quantize(x[[0, 3]], "int8", axis=0))


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("n", [1, 7, 31, 33, 70000])
def test_quantize_static_matches_fake_quantize(isa, n, force_isa):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2
    with force_isa(isa):
        q = _core.quantize_int8_static(x.numpy(), 0.0123)
    assert torch.equal(torch.from_numpy(q).float() * torch.tensor(0.0123, dtype=torch.float32),
                       mpq.fake_quantize(x, "int8", scale=0.0123))


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 17), (4, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_dequantize_int32(isa, shape, bias, force_isa):
    rng = np.random.default_rng(1)
    acc = rng.integers(-2**20, 2**20, shape, dtype=np.int32)
    rs = rng.random(shape[0], dtype=np.float32)
    cs = rng.random(shape[1], dtype=np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32) if bias else None
    out = np.empty(shape, np.float32)
    with force_isa(isa):
        _core.dequantize_int32_into(acc, rs, cs, b, out)
    want = acc.astype(np.float64) * (rs[:, None] * cs[None, :]).astype(np.float32) + (0 if b is None else b)
    np.testing.assert_allclose(out, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("mkn", [(1, 1, 1), (3, 33, 5), (2, 64, 8), (5, 100, 7), (1, 31, 4), (4, 96, 9)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_exact(isa, mkn, bias, force_isa):
    m, k, n = mkn
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    x = rng.integers(-127, 128, (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x[0, :] = 127
    w[0, :] = -127                                    # extreme pairs: no int16 saturation
    rs = rng.random(m, dtype=np.float32)
    cs = rng.random(n, dtype=np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    out = np.empty((m, n), np.float32)
    with force_isa(isa):
        _core.int8_linear_into(x, rs, w, cs, b, out)
    acc = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)   # independent exact sums
    want = np.empty((m, n), np.float32)
    with force_isa("scalar"):
        _core.dequantize_int32_into(acc, rs, cs, b, want)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("mkn", [(1, 1, 1), (3, 33, 5), (4, 64, 16), (5, 100, 7), (7, 130, 24), (9, 67, 17),
                                 (13, 576, 40), (2, 3, 9), (4, 1024, 16), (3, 1025, 9), (6, 2100, 20)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_linear_packed_exact(isa, mkn, bias, threads, force_isa):
    """The packed kernel at every row, column and input tail, and over several passes of 1024 inputs, on
    full-range codes (-128 activations included): bit for bit the exact int64 sums dequantized by the scalar
    reference."""
    m, k, n = mkn
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x[0, :], w[0, :] = 127, 127                       # the largest sums
    x[-1, :], w[-1, :] = -128, 127                    # the most negative ones
    rs = rng.random(m, dtype=np.float32)
    cs = rng.random(n, dtype=np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    out = np.full((m, n), np.nan, np.float32)
    with force_isa(isa):
        _core.int8_linear_packed_into(x, rs, _core.pack_int8_weights(w), cs, b, out, threads)
    acc = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)
    want = np.empty((m, n), np.float32)
    with force_isa("scalar"):
        _core.dequantize_int32_into(acc, rs, cs, b, want)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("isa", _core.available_isas())
@pytest.mark.parametrize("static_scale", [None, 0.02])
@pytest.mark.parametrize("mkn", [(1, 576, 40), (7, 130, 24), (2, 3, 9)])
def test_int8_linear_from_float_is_quantizer_then_gemm(isa, static_scale, mkn, force_isa):
    m, k, n = mkn
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    x[0, :3] = [np.inf, np.nan, -1e30]                # the quantizer's own edge cases pass through unchanged
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    cs = rng.random(n, dtype=np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    packed = _core.pack_int8_weights(w)
    out, want = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    with force_isa(isa):
        _core.int8_linear_from_float_into(x, static_scale, packed, cs, b, out)
        if static_scale is None:
            q, rs = _core.quantize_rows_int8(x)
        else:
            q, rs = _core.quantize_int8_static(x, static_scale), np.full(m, static_scale, np.float32)
        _core.int8_linear_packed_into(q, rs, packed, cs, b, want)
    assert np.array_equal(out, want, equal_nan=True)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="static_scale must be positive and finite"):
            _core.int8_linear_from_float_into(x, bad, packed, cs, b, out)


def test_int8_packed_layout_and_errors():
    w = np.arange(-60, 60, dtype=np.int8).reshape(10, 12)
    packed = _core.pack_int8_weights(w)
    assert packed.shape == (2 * 3 * 32,)              # ceil(10 / 8) blocks × ceil(12 / 4) groups × 32 bytes
    assert packed.reshape(2, 3, 8, 4).transpose(0, 2, 1, 3).reshape(16, 12)[:10].tolist() == w.tolist()
    assert not packed.reshape(2, 3, 8, 4)[1, :, 2:].any()  # padding columns are zero
    w[3, 5] = -128
    with pytest.raises(ValueError, match=r"w\[3, 5\] is -128"):
        _core.pack_int8_weights(w)
    with pytest.raises(ValueError, match=r"packed holds 192 bytes, weights \[17, 12\] pack into 288"):
        _core.int8_linear_packed_into(np.zeros((2, 12), np.int8), np.ones(2, np.float32), packed,
                                      np.ones(17, np.float32), None, np.zeros((2, 17), np.float32))
    k = 132105                                        # 128 · 127 · k > INT32_MAX: the sums could overflow
    wide = _core.pack_int8_weights(np.zeros((1, k), np.int8))
    with pytest.raises(ValueError, match="in_features 132105 exceeds 132104"):
        _core.int8_linear_packed_into(np.zeros((1, k), np.int8), np.ones(1, np.float32), wide,
                                      np.ones(1, np.float32), None, np.zeros((1, 1), np.float32))


def test_int8_binding_errors():
    with pytest.raises(ValueError, match="x: expected a C-contiguous float32"):
        _core.quantize_rows_int8(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="non-contiguous"):
        _core.quantize_rows_int8(np.zeros((4, 3), np.float32)[::2])
    with pytest.raises(ValueError, match="2-D"):
        _core.quantize_rows_int8(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="positive and finite"):
        _core.quantize_int8_static(np.zeros(3, np.float32), 0.0)
    with pytest.raises(ValueError, match="w must be"):
        _core.int8_linear_into(np.zeros((2, 4), np.int8), np.ones(2, np.float32), np.zeros((3, 5), np.int8),
                               np.ones(3, np.float32), None, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="row_scale"):
        _core.dequantize_int32_into(np.zeros((2, 2), np.int32), np.ones(3, np.float32), np.ones(2, np.float32),
                                    None, np.zeros((2, 2), np.float32))


def reference_fake(lin, cand_name, x, scale=None):
    c = mpq.candidates.get_candidate(cand_name)
    return nn.functional.linear(c.quantize_act(x, scale), c.quantize_weight(lin.weight.detach()), lin.bias)


# exact kernels agree with the fake model up to float32 accumulation; kernels with bf16 activations or bf16
# scales (weight-only, bf16) agree within bf16 rounding of x and of the scale
@pytest.mark.parametrize("cand", sorted(CPU_KERNELS))
def test_native_matches_fake(cand):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    x = torch.randn(2, 5, 128)
    c = mpq.candidates.get_candidate(cand)
    scale = 0.03 if c.act_static else None
    stored = None
    if c.calibrated_weight:  # GPTQ/AWQ/SmoothQuant run given integers: codes of W·diag(s), input divided by s
        from mpq.artifacts import QuantizedWeight
        from mpq.quantizers.grid import rtn
        s = None if c.algorithm == "gptq" else torch.linspace(0.5, 2.0, 128)
        stored = QuantizedWeight(*rtn(lin.weight.detach() * (1 if s is None else s), c.weight_format,
                                      c.group_size), s)
    mod = native_linear(lin, cand, scale, quantized=stored)
    with torch.no_grad():
        got = mod(x)
        if stored is None:
            want = reference_fake(lin, cand, x, scale)
        else:
            want = nn.functional.linear(c.quantize_act(stored.transform_input(x), scale), stored.dequantized(),
                                        lin.bias)
        mag = (x.abs() @ lin.weight.abs().t()).max()
    assert got.shape == want.shape == (2, 5, 48) and got.dtype == torch.float32
    exact = cand in ("int8", "int8_static", "fp8", "fp8_static", "fp8_e5m2", "int8_sq", "int8_static_sq")
    tol = 1e-5 * mag if exact else 2 ** -7 * mag
    assert (got - want).abs().max() <= tol, (cand, (got - want).abs().max().item(), tol.item())


def test_native_refusals():
    lin = nn.Linear(64, 8)
    with pytest.raises(ValueError, match="no native CPU kernel"):
        native_linear(lin, "fp8_gaudi2", 1.0)
    with pytest.raises(ValueError, match="static activation scales"):
        native_linear(lin, "int8_static")
    with pytest.raises(ValueError, match="does not apply"):
        native_linear(lin, "w4a16_g128")
    with pytest.raises(ValueError, match="torch.bfloat16 / torch.float16 CPU Linear layers, got torch.float64"):
        native_linear(nn.Linear(64, 8).double(), "int8")
    assert native_linear(lin, "base") is lin
    with pytest.raises(ValueError, match="pass quantized"):
        native_linear(lin, "w8a16_gptq")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cand", [c for c in CPU_KERNELS if c not in ("fp8_static", "int8_static")
                                  and not mpq.CANDIDATES[c].calibrated_weight])  # those need calibration's integers
def test_native_module_of_a_half_model(cand, dtype):
    """A model loaded in bf16 / fp16: the module is the one of its weights widened to float32 (the same quantized
    integers), fed the widened input, its output rounded to the model's dtype, bit for bit; never a float32
    tensor handed to the next bf16 layer."""
    if not mpq.application.cpu_kernels.admitted(cand):
        pytest.skip(f"{cand}: {mpq.application.cpu_kernels.why_not(cand)}")
    torch.manual_seed(0)
    half = nn.Linear(128, 48).to(dtype)
    wide = nn.Linear(128, 48)
    with torch.no_grad():
        wide.weight.copy_(half.weight.float())
        wide.bias.copy_(half.bias.float())
    x = torch.randn(2, 5, 128).to(dtype)
    got = native_linear(half, cand)(x)
    want = native_linear(wide, cand)(x.float()).to(dtype)
    assert got.dtype == dtype and got.shape == (2, 5, 48)
    assert torch.equal(got, want)


def test_a_bf16_model_is_profiled_and_runs_as_loaded():
    """profile(backend="cpu") times the model as loaded in bf16 (its GainTable says so), and the native plan
    model it chose runs in bf16 with logits near the fake-quantized plan's."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 16))
    cands = ["int8", "w8a16"]
    table = mpq.calibrate(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], cands,
                          progress=False)
    gains = mpq.profile(model, {"input_ids": ids[:1]}, cands, backend="cpu", repeats=3, warmup=1)
    assert gains.meta["base_format"] == "bf16"
    plan = mpq.select(table, gains, max_loss_mse=1e9)
    assert plan.quantized
    native = mpq.apply(model, plan, mode="native")
    fake = mpq.apply(model, plan, mode="fake")
    with torch.no_grad():
        got, want = native(ids).logits, fake(ids).logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 0.05 * want.float().abs().max()


@pytest.mark.parametrize("assign", [False, True])
def test_int8_linear_follows_replaced_buffers(assign):
    """The module keeps numpy views of its weights between calls; loading other weights (copied in place, or
    replacing the buffers) must change what it computes, not leave it running the old ones."""
    torch.manual_seed(0)
    a, b = nn.Linear(40, 24), nn.Linear(40, 24)
    x = torch.randn(3, 40)
    native, other = NC.Int8Linear(a), NC.Int8Linear(b)
    before = native(x)
    native.load_state_dict(other.state_dict(), assign=assign)
    assert torch.equal(native(x), other(x)) and not torch.equal(before, other(x))


@pytest.mark.parametrize("cand", ["int8", "w8a16"])
def test_native_input_forms(cand):
    """The forward takes what a float Linear takes: one vector, a batch that requires grad (outside no_grad, the
    same numbers, no error), a non-contiguous view and float64, each the same as the contiguous float32 batch."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    mod = native_linear(lin, cand)
    x = torch.randn(3, 64)
    want = mod(x)
    assert torch.equal(mod(x[1]), want[1]) and mod(x[1]).shape == (24,)
    assert torch.equal(mod(x.clone().requires_grad_()), want)
    wide = torch.randn(64, 3).t()                    # non-contiguous [3, 64]
    assert not wide.is_contiguous() and torch.equal(mod(wide), mod(wide.contiguous()))
    assert torch.equal(mod(x.double()), want)
    with pytest.raises(ValueError, match="expected last dimension 64, got 63"):
        mod(torch.randn(2, 63))
