"""The CPU kernel registry: every implementation against its candidate's quantizer, the exactness probe (it must
reject a kernel that saturates), forced ISA dispatch, and what the profile records is what apply installs."""
import dataclasses

import pytest
import torch
from torch import nn

import mpq
from mpq import _core
from mpq.application import cpu_features, cpu_kernels as K
from mpq.application.swap import FakeQuantLinear
from mpq.candidates import get_candidate

PAIRS = [(impl.name, c) for impl in K.IMPLEMENTATIONS for c in impl.candidates]


def test_the_cpu_is_described():
    d = cpu_features.describe()
    assert d["cpu"] and d["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert d["mpq_isa"] == _core.isa() and set(d["flags"]) <= set(cpu_features.FLAGS)


@pytest.mark.parametrize("impl,cand", PAIRS)
def test_every_admitted_implementation_computes_its_candidate(impl, cand):
    ok, reason = K.admission(impl, cand)
    if not ok:
        pytest.skip(f"{impl} is not admitted on this CPU: {reason}")
    c = get_candidate(cand)
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    x = torch.randn(5, 3, 256) * torch.logspace(-2, 1, 256)  # outlier channels, as LLM activations have
    scale = 0.05 if c.act_static else None
    stored = stored_weight(lin, c) if c.calibrated_weight else None  # GPTQ/AWQ/SmoothQuant: integers given
    native = K.native_linear(lin, cand, scale, impl, quantized=stored)
    assert native.implementation == impl
    with torch.no_grad():
        y, ref = native(x), FakeQuantLinear(lin, c, scale, stored)(x)
    tol = K.BY_NAME[impl].tolerance
    err = float((y - ref).abs().max() / ref.abs().max())
    # int8 paths: the same integers and exact sums, so only float32 rounding of the dequantization differs
    assert err <= max(tol, 1e-6), f"{impl} on {cand}: relative error {err:.3g}"


def stored_weight(lin, c):
    """A calibrated candidate's stored weight as calibration makes them: codes of W·diag(s) on the candidate's grid
    with a non-trivial per-input-channel s (AWQ, SmoothQuant; none for GPTQ)."""
    from mpq.artifacts import QuantizedWeight
    from mpq.quantizers.grid import rtn
    s = None if c.algorithm == "gptq" else torch.linspace(0.5, 2.0, lin.in_features)
    w = lin.weight.detach() * (1 if s is None else s)
    return QuantizedWeight(*rtn(w, c.weight_format, c.group_size), s)


def saturating_int16_pairs(linear, cand, scale):
    """An int8 GEMM like oneDNN's u8s8 path on AVX2: activations shifted to u8, pairs summed in saturating int16."""
    class Saturating(nn.Module):
        implementation = "saturating"

        def forward(self, x):
            sx = x.abs().amax(1, keepdim=True) / 127
            qx = torch.round(x / sx).clamp(-127, 127)
            w = linear.weight.detach()
            sw = w.abs().amax(1, keepdim=True) / 127
            qw = torch.round(w / sw).clamp(-127, 127)
            u = qx + 128                                         # u8
            prod = u[:, None, :] * qw[None, :, :]                # [M, N, K]
            pairs = (prod[..., 0::2] + prod[..., 1::2]).clamp(-32768, 32767)
            acc = pairs.sum(-1) - 128 * qw.sum(1)[None, :]       # undo the shift
            return acc * sx * sw.t() + (0 if linear.bias is None else linear.bias.detach())
    return Saturating()


def test_the_probe_rejects_a_kernel_that_saturates_int16_pairs(monkeypatch):
    bad = K.Implementation("saturating", ("int8",), "u8s8 with saturating int16 pairs", saturating_int16_pairs)
    assert K.probe_error(bad, get_candidate("int8")) > 1e-3
    monkeypatch.setattr(K, "IMPLEMENTATIONS", K.IMPLEMENTATIONS + (bad,))
    monkeypatch.setattr(K, "BY_NAME", dict(K.BY_NAME, saturating=bad))
    ok, reason = K.admission("saturating", "int8")
    assert not ok and "wrong on this CPU" in reason
    assert "saturating" not in [i.name for i in K.admitted("int8")]


def test_an_implementation_needing_a_missing_feature_is_refused(monkeypatch):
    needy = dataclasses.replace(K.BY_NAME["torch_int_mm"], name="needs_amx", needs=("amx_int8", "no_such_flag"))
    monkeypatch.setattr(K, "BY_NAME", dict(K.BY_NAME, needs_amx=needy))
    ok, reason = K.admission("needs_amx", "int8")
    assert not ok and "this CPU lacks" in reason and "no_such_flag" in reason


@pytest.mark.parametrize("isa", [i for i in _core.available_isas()])
def test_int8_paths_stay_exact_under_every_isa_the_machine_has(isa):
    old = _core.isa()
    try:
        _core._set_isa(isa)
        for impl in ("mpq_int8", "torch_int_mm"):
            assert K.probe_error(K.BY_NAME[impl], get_candidate("int8")) == 0.0, (impl, isa)
            assert K.admission(impl, "int8") == (True, "")
    finally:
        _core._set_isa(old)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))


def test_what_the_profile_timed_is_what_apply_installs(tmp_path):
    m = mlp()
    x = torch.randn(8, 128)
    gains = mpq.profile(m, x, candidates=("int8", "w8a16"), backend="cpu", repeats=3, per_layer=False)
    timed = gains.meta["implementations"]
    assert set(timed) == {"0", "2", "4"} and all(set(v) == {"int8", "w8a16"} for v in timed.values())
    assert all(t["chosen"] == min(t["seconds"], key=t["seconds"].get) for t in gains.meta["implementation_timings"])
    assert gains.meta["cpu"] == cpu_features.describe()
    gains.save(tmp_path / "g.npz")
    back = mpq.GainTable.load(tmp_path / "g.npz")
    assert back.meta["implementations"] == timed
    plan = mpq.Plan({"0": "int8", "2": "w8a16", "4": "base"}, 0.0, 0.0,
                    implementations={"0": timed["0"]["int8"], "2": timed["2"]["w8a16"]})
    q = mpq.apply(m, plan, mode="native")
    assert q[0].implementation == timed["0"]["int8"] and q[2].implementation == timed["2"]["w8a16"]


def test_select_carries_the_timed_implementations_into_the_plan():
    m = mlp()
    x = torch.randn(8, 128)
    gains = mpq.profile(m, x, candidates=("int8",), backend="cpu", repeats=3, per_layer=False)
    table = mpq.calibrate(m, [(x, torch.randn(8, 64))], ("int8",), loss_fn=lambda out, b: ((out - b[1]) ** 2)
                          .mean(1), progress=False)
    plan = mpq.select(table, gains, max_loss_mse=1e9, pin={"0": "int8", "4": "int8"})
    assert set(plan.quantized) >= {"0", "4"}
    assert plan.implementations == {l: gains.meta["implementations"][l]["int8"] for l in plan.quantized}


def test_a_plan_timed_with_a_kernel_this_machine_lacks_is_refused(monkeypatch):
    m = mlp()
    plan = mpq.Plan({"0": "int8"}, 0.0, 0.0, implementations={"0": "torch_int_mm"})
    real = K._admission.__wrapped__

    def lacking(impl, cand, isa):
        return (False, "this CPU lacks amx_int8 (test)") if impl == "torch_int_mm" else real(impl, cand, isa)
    monkeypatch.setattr(K, "_admission", lacking)
    with pytest.raises(ValueError, match="layer '0': candidate 'int8' was timed with 'torch_int_mm', which cannot "
                                         "run on this machine: this CPU lacks amx_int8"):
        mpq.apply(m, plan, mode="native")
    assert isinstance(mpq.apply(m, plan, mode="fake")[0], FakeQuantLinear)  # fake mode needs no kernel
    with pytest.raises(ValueError, match="unknown CPU implementation 'vnni512'"):
        mpq.apply(m, mpq.Plan({"0": "int8"}, 0.0, 0.0, implementations={"0": "vnni512"}), mode="native")


def test_a_candidate_no_kernel_here_runs_is_named_with_the_reason(monkeypatch):
    real = K._admission.__wrapped__
    monkeypatch.setattr(K, "_admission", lambda impl, cand, isa: (False, "this CPU lacks avx512_bf16 (test)")
                        if cand == "bf16" else real(impl, cand, isa))
    m = mlp()
    with pytest.raises(ValueError, match=r"backend 'cpu' cannot run 'bf16' \(torch_bf16: this CPU lacks "
                                         r"avx512_bf16 \(test\)\)"):
        mpq.profile(m, torch.randn(4, 128), candidates=("int8", "bf16"), backend="cpu", repeats=3)
    with pytest.raises(ValueError, match="candidate 'bf16' cannot run natively on this CPU: torch_bf16: this CPU "
                                         "lacks avx512_bf16"):
        mpq.apply(m, {"0": "bf16"}, mode="native")


def test_bad_static_scales_are_refused_when_given():
    m = mlp()
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        for mode in ("fake", "native"):
            with pytest.raises(ValueError, match="positive finite"):
                mpq.apply(m, {"0": "int8_static"}, mode=mode, act_scales={"0": bad})


def test_shapes_an_implementation_cannot_run_are_refused_not_run():
    """torch 2.13's _weight_int8pack_mm gives wrong sums for K = 68 and crashes for K = 70; int4pack needs N % 16."""
    with pytest.raises(ValueError, match="in_features divisible by 8, got 70"):
        K.native_linear(nn.Linear(70, 32), "w8a16")
    with pytest.raises(ValueError, match="out_features divisible by 16, got 300"):
        K.native_linear(nn.Linear(64, 300), "w4a16", None, "torch_int4pack")
    assert K.runnable(nn.Linear(64, 300), "w4a16") == ()
    assert [i.name for i in K.runnable(nn.Linear(70, 32), "int8")] == ["mpq_int8", "torch_int_mm"]
    m = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 300))
    gains = mpq.profile(m, torch.randn(4, 64), candidates=("w4a16",), backend="cpu", repeats=3, per_layer=False)
    used = {l: set(sg.configs[:, i].tolist()) for sg in gains.subgraphs for i, l in enumerate(sg.layers)}
    assert used["2"] == {0} and used["0"] == {0, 1}  # the 96x300 layer stays base: no kernel runs it
