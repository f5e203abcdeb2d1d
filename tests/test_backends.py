"""The gain backends behind one base class, and the accelerator modules' quantizers against the candidates' own (on
CPU tensors: no GPU or Gaudi needed)."""
import importlib

import pytest
import torch
from torch import nn

import mpq.candidates as C
from mpq.formats import compute_scales, format_info
from mpq.profiling.backends import (BACKENDS, Backend, BackendUnavailable, TheoreticalBackend, TimedBackend,
                                    check_available, get_backend)
from mpq.profiling.backends import hpu as hpu_module


def test_every_backend_is_one_instance_of_the_base_class():
    for name in BACKENDS:
        b = get_backend(name)
        assert isinstance(b, Backend) and b.name == name
        assert b is get_backend(name) is importlib.import_module(f"mpq.profiling.backends.{name}").BACKEND
        assert b.timed == isinstance(b, TimedBackend) != isinstance(b, TheoreticalBackend)
        assert b.timed == (name in ("cpu", "cuda", "hpu"))
        assert b.unit == {"memory": "bytes", "ebops": "bit operations"}.get(name, "seconds")
        ok, reason = b.available()
        assert isinstance(ok, bool) and isinstance(reason, str) and ok == (reason == "")
    assert get_backend("cpu").base_format == "fp32"
    assert get_backend("cuda").base_format == get_backend("hpu").base_format == "bf16"
    assert get_backend("memory").supported("w4a16") and get_backend("macs").kernel("int8") == "theoretical"
    assert get_backend("cpu").supported("int8") and not get_backend("cpu").supported("fp8_gaudi2")
    hpu = get_backend("hpu")
    assert hpu.kernel("fp8_gaudi2").startswith("torch.ops.hpu") and not hpu.supported("int8")
    assert check_available("cpu") is get_backend("cpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    if not get_backend("hpu").available()[0]:
        with pytest.raises(BackendUnavailable, match="backend 'hpu' is not available here"):
            check_available("hpu")


def test_the_cpu_module_keeps_its_functions_for_callers_that_import_it():
    from mpq.profiling.backends import cpu as cpu_backend
    assert type(cpu_backend.clock()).__name__ == "ThreadClock"
    m = cpu_backend.make_module(nn.Linear(32, 16), "int8")
    assert m(torch.randn(3, 32)).shape == (3, 16)


def test_theoretical_costs_through_the_interface():
    mem, macs = get_backend("memory"), get_backend("macs")
    assert mem.layer_cost([4, 64, 32], "base", element_size=2) == 64 * 32 * 2
    assert mem.layer_cost([4, 64, 32], "w4a16") == 64 * 32 / 2 + 4 * 32 * 2
    assert macs.layer_cost([4, 64, 32], "int8", device="h100") == 4 * 64 * 32 / 989.5e12
    assert macs.layer_cost([4, 64, 32], "w8a16") == macs.layer_cost([4, 64, 32], "base") == 4 * 64 * 32 / 40e9
    assert macs.meta(None) == {"device": "cpu-avx2", "base_format": "fp32"}
    with pytest.raises(ValueError, match="unknown macs device"):
        macs.layer_cost([1, 1, 1], "int8", device="abacus")


def test_ebops_count_weight_bits_times_activation_bits_per_multiply_accumulate():
    eb = get_backend("ebops")
    macs = 4 * 64 * 32
    assert eb.layer_cost([4, 64, 32], "base") == macs * 32 * 32            # fp32 weights and activations
    assert eb.layer_cost([4, 64, 32], "base", element_size=2) == macs * 16 * 16
    assert eb.layer_cost([4, 64, 32], "int8") == macs * 8 * 8
    assert eb.layer_cost([4, 64, 32], "fp8") == macs * 8 * 8
    assert eb.layer_cost([4, 64, 32], "w4a16", element_size=2) == macs * 4 * 16  # weight-only: the model's activations
    assert eb.layer_cost([4, 64, 32], "w8a16") == macs * 8 * 32


def test_an_ebops_profile_is_the_sum_of_its_layers_and_select_meets_a_bit_operation_target():
    import mpq
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(5, 16)
    gains = mpq.profile(model, x, ("int8", "w4a16"), backend="ebops")
    eb = get_backend("ebops")
    shapes = {"0": [5, 16, 32], "2": [5, 32, 8]}
    for sg in gains.subgraphs:
        for row, gain in zip(sg.configs, sg.gain):
            want = sum(eb.layer_cost(shapes[l], "base") - eb.layer_cost(shapes[l], gains.candidates[int(k)])
                       for l, k in zip(sg.layers, row) if k)
            assert gain == pytest.approx(want, rel=1e-12)
    batches = [(torch.randn(4, 16), torch.randint(0, 8, (4,))) for _ in range(2)]
    ce = lambda out, b: nn.functional.cross_entropy(out, b[1], reduction="none")
    table = mpq.calibrate(model, batches, ("int8", "w4a16"), loss_fn=ce, progress=False)
    need = 0.5 * (eb.layer_cost(shapes["0"], "base") - eb.layer_cost(shapes["0"], "int8"))
    plan = mpq.select(table, gains, min_gain=need)
    assert plan.predicted_gain >= need and plan.quantized and plan.gain_unit == "bit operations"


def _bounded_table(monkeypatch, module, maxima):
    """Replaces the format table a module reads with one where some formats have another max."""
    real = module.format_info

    def fake(fmt):
        return dict(real(fmt), **({"max": maxima[fmt]} if fmt in maxima else {}))
    monkeypatch.setattr(module, "format_info", fake)


def test_the_cuda_modules_take_their_ranges_from_the_format_table(monkeypatch):
    from mpq.application import native_cuda
    _bounded_table(monkeypatch, native_cuda, {"int8": 100.0, "fp8_e4m3": 224.0})
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    i8 = native_cuda.make_module(lin, "int8")
    amax = lin.weight.detach().abs().amax(1)
    assert i8.qw.abs().amax(1).tolist() == [100] * 16
    assert torch.equal(i8.ws.reshape(-1), amax / 100.0)
    f8 = native_cuda.make_module(lin, "fp8_static", 0.5)
    assert float(f8.qw.float().abs().max()) == 224.0 and f8.wmax == f8.fmax == float(f8.qmax) == 224.0


def test_the_hpu_module_takes_its_ranges_from_the_format_table(monkeypatch):
    _bounded_table(monkeypatch, hpu_module, {"fp8_e4m3_gaudi2": 224.0})
    m = hpu_module.HpuFp8Linear(nn.Linear(16, 8), "fp8_gaudi2", 1.0)
    qx, _ = m.quantize_act(torch.full((2, 16), 1000.0))
    assert float(qx.float().max()) == 224.0


HPU_CANDIDATES = ["fp8_gaudi2", "fp8_static", "fp8"]


def _static_scale(cand, x):
    """The scale calibration gives a static candidate on this input (its format's own rule)."""
    return float(compute_scales(x, cand.act_format)[0][0]) if cand.act_static else None


@pytest.mark.parametrize("name", HPU_CANDIDATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_hpu_module_quantizes_as_its_candidate(name, dtype):
    cand = C.get_candidate(name)
    torch.manual_seed(1)
    lin = nn.Linear(64, 24).to(dtype)
    with torch.no_grad():
        lin.weight.mul_(30)          # |w| up to ~4: the Gaudi-2 hardware scale 2^-4, not amax / 240
        lin.weight[3] *= 0.01        # a small row: per-channel scales differ
    x = (torch.randn(5, 64) * torch.tensor([0.01, 1, 3, 40, 300])[:, None]).to(dtype)
    static = _static_scale(cand, x)
    m = get_backend("hpu").make_module(lin, name, static)
    w = lin.weight.detach()
    axis = 0 if cand.weight_granularity == "channel" else None
    s = compute_scales(w, cand.weight_format, axis=axis)[0]
    assert torch.equal(m.ws.reshape(-1), s)
    ws = m.ws.reshape(-1, 1) if axis == 0 else m.ws
    assert torch.equal((m.qw.float() * ws).to(dtype), cand.quantize_weight(w))
    qx, sa = m.quantize_act(x)
    if cand.act_static:
        assert sa.dim() == 0 and float(sa) == static
    else:
        assert sa.shape == (5, 1)
    assert torch.equal((qx.float() * sa).to(dtype), cand.quantize_act(x, static))
    with torch.no_grad():
        y = m(x)
    ref = nn.functional.linear(cand.quantize_act(x, static).double(), cand.quantize_weight(w).double(),
                               lin.bias.detach().double())
    assert y.dtype == dtype and y.shape == (5, 24)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    assert (y.double() - ref).abs().max() <= tol * ref.abs().max()


def test_the_gaudi2_candidate_gets_hardware_scales_not_amax_over_240():
    torch.manual_seed(2)
    lin = nn.Linear(32, 8)
    with torch.no_grad():
        lin.weight.mul_(30)
    m = get_backend("hpu").make_module(lin, "fp8_gaudi2", 1.0)
    hw = format_info("fp8_e4m3_gaudi2")["hw_scales"]
    assert float(m.ws) in hw and float(m.ws) != pytest.approx(float(lin.weight.detach().abs().max()) / 240)
    with pytest.raises(ValueError, match="not one of the hardware scales"):
        get_backend("hpu").make_module(lin, "fp8_gaudi2", 0.0123)
    with pytest.raises(ValueError, match="static activation scales"):
        get_backend("hpu").make_module(lin, "fp8_static")
    with pytest.raises(ValueError, match="no FP8 kernel"):
        hpu_module.HpuFp8Linear(lin, "int8")
