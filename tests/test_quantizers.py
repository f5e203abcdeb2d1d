"""GPTQ, AWQ, optimized RTN and SmoothQuant candidates: each algorithm against an independent reference of its published
equations, and end to end: the integers chosen in calibration are the ones δ measures, apply (fake and native)
runs, and the saved store reloads; a layer an algorithm cannot handle is unavailable, with its reason."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpq
from mpq.artifacts.quantized_weights import QuantizedWeights
from mpq.formats import fake_quantize
from mpq.quantizers import awq_scales, collect_input_stats, gptq_quantize, optimized_rtn, smoothquant_scales
from mpq.quantizers.grid import dequantize, output_error

from _tiny_models import tiny_llama


def _inputs(tokens, k, seed=0):
    """Correlated inputs with a few outlier channels: the case the algorithms exist for."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, k, generator=g) @ (torch.eye(k) + 0.5 * torch.randn(k, k, generator=g))
    base[:, : max(1, k // 8)] *= 8.0
    return base


def _obs_reference(w, h, fmt, group_size, damp=0.01):
    """GPTQ's equations without its tricks: column by column, the inverse of the Hessian of the columns still free
    is recomputed explicitly (no Cholesky, no lazy blocks); the error of column q moves the free weights by
    −(w_q − Q(w_q)) / [H_F⁻¹]_00 · [H_F⁻¹]_0,:  (Optimal Brain Surgeon). Scales as fake_quantize computes them."""
    W = w.double().clone()
    H = h.double().clone()
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    n = W.shape[1]
    qmax = mpq.formats.format_info(fmt)["qmax"]
    codes = torch.zeros_like(W)
    scale_cols = torch.zeros_like(W)
    scale = None
    if group_size is None:
        scale = mpq.formats.compute_scales(W.float(), fmt, axis=0)[0].double()
    for q in range(n):
        if group_size is not None and q % group_size == 0:
            scale = mpq.formats.compute_scales(W[:, q:q + group_size].float().contiguous(), fmt, axis=0)[0].double()
        c = torch.round(W[:, q] * (1.0 / scale)).clamp(-qmax, qmax)
        codes[:, q], scale_cols[:, q] = c, scale
        hinv = torch.linalg.inv(H[q:, q:])
        err = (W[:, q] - c * scale) / hinv[0, 0]
        W[:, q:] -= err.unsqueeze(1) * hinv[0].unsqueeze(0)
    return codes, scale_cols


@pytest.mark.parametrize("fmt,group", [("int4", 8), ("int8", None), ("int4", None)])
def test_gptq_matches_the_obs_equations_and_beats_rtn(fmt, group):
    torch.manual_seed(0)
    w = torch.randn(6, 32)
    x = _inputs(256, 32)
    h = x.t() @ x
    codes, scales = gptq_quantize(w, h, fmt, group)
    ref_codes, ref_scales = _obs_reference(w, h, fmt, group)
    g = 1 if group is None else 32 // group
    assert torch.equal(codes.double(), ref_codes)
    torch.testing.assert_close(scales.repeat_interleave(32 // g, dim=1).double(), ref_scales, rtol=1e-5, atol=0)
    rtn = fake_quantize(w, fmt, axis=0) if group is None else fake_quantize(w, fmt, group_size=group)
    gptq_err = float(((x @ (dequantize(codes, scales) - w).t()) ** 2).sum())
    rtn_err = float(((x @ (rtn - w).t()) ** 2).sum())
    assert gptq_err < 0.9 * rtn_err


def test_gptq_refuses_a_group_that_does_not_divide_and_a_bad_hessian():
    w = torch.randn(4, 12)
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(w, torch.eye(12), "int4", 8)
    with pytest.raises(ValueError, match="finite"):
        gptq_quantize(w, torch.full((12, 12), float("nan")), "int4", 4)


def test_awq_is_the_brute_force_search_on_the_raw_inputs():
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    x = _inputs(200, 32, seed=3)
    codes, scales, s, alpha, err = awq_scales(w, x.t() @ x, x.abs().mean(0), "int4", 8)
    best = None
    for k in range(20):  # the reference: the published grid, the error measured on X itself
        a = k / 20
        sk = x.abs().mean(0).pow(a)
        sk = (sk / torch.sqrt(sk.max() * sk.min())).clamp(min=1e-4)
        q = fake_quantize(w * sk, "int4", group_size=8)
        e = float(((x @ w.t() - (x / sk) @ q.t()) ** 2).sum())
        if best is None or e < best[0]:
            best = (e, a, q, sk)
    assert alpha == best[1]
    torch.testing.assert_close(dequantize(codes, scales), best[2], rtol=0, atol=0)
    torch.testing.assert_close(s, best[3])
    rtn_err = float(((x @ (fake_quantize(w, "int4", group_size=8) - w).t()) ** 2).sum())
    assert best[0] < rtn_err and err == pytest.approx(best[0], rel=1e-3)


def test_optimized_rtn_is_the_brute_force_search_per_group():
    """Each (row, group) keeps, of the symmetric RTN grid and the full-range grids scale = −w_m / (8 − t) (w_m its
    value of largest magnitude, codes in [−8, 7]) for t on the grid, the one of least output error on the inputs
    themselves: brute force over the same choices, group by group, from the raw inputs."""
    torch.manual_seed(6)
    w = torch.randn(6, 32)
    w[1, 5] = -7.0  # a negative peak: a positive scale; w[0, 3] below a positive one: a negative scale
    w[0, 3] = 6.0
    x = _inputs(300, 32, seed=7)
    codes, scales = optimized_rtn(w, x.t() @ x, "int4", 8, n_grid=9, max_offset=2.0)
    assert codes.dtype == torch.int8 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    got = dequantize(codes, scales)
    base = fake_quantize(w, "int4", group_size=8)
    for o in range(6):
        for g in range(4):
            cols = slice(8 * g, 8 * g + 8)
            wg = w[o, cols]
            e = lambda q: float(((x[:, cols].double() @ (q - wg).double()) ** 2).sum())  # noqa: E731
            best = (e(base[o, cols]), base[o, cols])
            peak = float(wg[wg.abs().argmax()])
            for t in np.linspace(-2.0, 2.0, 9):
                s = -peak / (8 - t)
                q = torch.round(wg / s).clamp(-8, 7) * s
                if e(q) < best[0]:
                    best = (e(q), q)
            torch.testing.assert_close(got[o, cols], best[1], rtol=1e-5, atol=1e-6)
    err = lambda d: float(((x.double() @ d.double().t()) ** 2).sum())  # noqa: E731
    assert err(got - w) < 0.9 * err(base - w)  # the 16th level and the search pay on this layer
    assert (codes == -8).any() and (scales < 0).any() and (scales > 0).any()


def test_smoothquant_scales_and_what_they_buy_under_static_int8():
    torch.manual_seed(2)
    w = torch.randn(16, 32) * 0.1
    x = torch.randn(64, 32)
    x[:, 3] *= 60.0  # an outlier channel
    s = smoothquant_scales(w, x.abs().amax(0))
    expected = (x.abs().amax(0).sqrt() / w.abs().amax(0).sqrt())
    torch.testing.assert_close(s, expected)
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-4)  # exact before quantizing

    def w8a8_err(xx, ww):
        q = fake_quantize(xx, "int8") @ fake_quantize(ww, "int8", axis=0).t()
        return float(((q - x @ w.t()) ** 2).sum())
    assert w8a8_err(x / s, w * s) < 0.5 * w8a8_err(x, w)
    # channels that never fire keep s = 1 rather than 0 or NaN
    assert float(smoothquant_scales(w, torch.zeros(32))[0]) == 1.0


# --- end to end on a tiny Llama -------------------------------------------------------------------------------
CANDS = ["w8a16", "w8a16_gptq", "w8a16_awq", "int8_static_sq", "int8_sq", "w4a16_g64_gptq", "w4a16_g64_ortn",
         "w4a16_g64_awq"]


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = tiny_llama(1)
    model.unused = nn.Linear(32, 32)  # never called: no calibration activations
    g = torch.Generator().manual_seed(5)
    batches = [{"input_ids": torch.randint(0, 64, (3, 12), generator=g)} for _ in range(2)]
    with pytest.warns(UserWarning, match="unused"):
        table = mpq.calibrate(model, batches, CANDS, progress=False)
    return model, batches, table


def _per_sample_reference(model, batches, layer, delta_w, act_fn=None):
    """⟨∂ℓ_n/∂W, ΔW⟩ and ⟨∂ℓ_n/∂X_n, act_fn(X_n) − X_n⟩ by plain autograd, one sample at a time."""
    mod = dict(model.named_modules())[layer]
    wpart, apart = [], []
    for b in batches:
        for n in range(b["input_ids"].shape[0]):
            ids = b["input_ids"][n:n + 1]
            seen = {}

            def hook(m, args):
                x = args[0].detach().requires_grad_(True)
                seen["x"] = x
                return (x,)
            h = mod.register_forward_pre_hook(hook)
            try:
                mod.weight.requires_grad_(True)
                out = model(input_ids=ids)
                loss = mpq.causal_lm_loss(out, {"input_ids": ids})[0]
                gw, gx = torch.autograd.grad(loss, [mod.weight, seen["x"]])
            finally:
                h.remove()
            wpart.append(float((gw.double() * delta_w.double()).sum()))
            if act_fn is not None:
                x = seen["x"].detach()
                apart.append(float((gx.double() * (act_fn(x) - x).double()).sum()))
    return np.array(wpart), np.array(apart)


@pytest.mark.parametrize("cand", ["w8a16_gptq", "w8a16_awq", "int8_static_sq", "int8_sq", "w4a16_g64_ortn"])
def test_delta_uses_the_stored_integers(calibrated, cand):
    model, batches, table = calibrated
    layer = "model.layers.0.mlp.down_proj"
    qw = table.quantized_weights[layer, cand]
    w = dict(model.named_modules())[layer].weight.detach()
    c = mpq.CANDIDATES[cand]
    li, ci = table.index(layer), table.candidates.index(cand)
    act_fn = None
    if c.act_format is not None:
        scale = float(table.act_scales[li, ci]) if c.act_static else None
        act_fn = lambda x: c.quantize_act(qw.transform_input(x), scale) * qw.input_scale  # noqa: E731
    wpart, apart = _per_sample_reference(model, batches, layer, qw.effective_weight() - w, act_fn)
    np.testing.assert_allclose(table.delta_weight[:, li, ci], wpart, rtol=1e-4, atol=1e-12)
    if act_fn is not None:
        np.testing.assert_allclose(table.delta[:, li, ci] - table.delta_weight[:, li, ci], apart, rtol=1e-3,
                                   atol=1e-12)
        assert np.abs(apart).max() > 0
    # the algorithm changed the integers (else the test would not tell them from RTN)
    assert not torch.equal(qw.effective_weight(), c.quantize_weight(w))


def test_grouped_awq_is_its_alpha_search_then_the_full_range_search(calibrated):
    """w4a16_g64_awq: AWQ's input-channel scale s (its α search), then optimized RTN on W·diag(s) against the
    inputs x / s it meets; on the layer's own calibration inputs its output error is below both AWQ's
    round-to-nearest step alone and plain RTN, and it uses the −8 level."""
    model, batches, table = calibrated
    layer = "model.layers.0.mlp.down_proj"
    mod = dict(model.named_modules())[layer]
    xs = []
    h = mod.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    x = torch.cat(xs).double()
    w = mod.weight.detach()
    qw = table.quantized_weights[layer, "w4a16_g64_awq"]
    st = collect_input_stats(model, [(layer, mod)], batches, "cpu", {0})[0]  # H as calibration sums it
    torch.testing.assert_close(st.hessian.double(), x.t() @ x, rtol=1e-5, atol=1e-4)
    codes, scales, s, _, _ = awq_scales(w, st.hessian, st.abs_mean, "int4", 64)
    torch.testing.assert_close(qw.input_scale, s)
    want_codes, want_scales = optimized_rtn(w * s, st.hessian / (s[:, None] * s[None, :]), "int4", 64)
    assert torch.equal(qw.codes, want_codes) and torch.equal(qw.scales, want_scales)
    err = lambda wq: float(((x @ (wq.double() - w.double()).t()) ** 2).sum())  # noqa: E731
    rtn = fake_quantize(w, "int4", group_size=64)
    assert err(qw.effective_weight()) < err(dequantize(codes, scales) / s) < err(rtn)
    assert (qw.codes == -8).any()


def test_quantizer_batches_fit_the_integers_and_the_batches_measure_them():
    """calibrate(batches=A, quantizer_batches=B): the integers are those a calibration on B alone fits, and δ is the
    first-order loss change of exactly those integers on A (a plain autograd reference); a batch in both warns."""
    from mpq.calibration import fingerprint
    model = tiny_llama(1)
    g = torch.Generator().manual_seed(8)
    a = [{"input_ids": torch.randint(0, 64, (3, 12), generator=g)} for _ in range(2)]
    b = [{"input_ids": torch.randint(0, 64, (4, 12), generator=g)} for _ in range(2)]
    cands = ("w8a16_gptq", "w4a16_g64_ortn", "w8a16_awq")
    split = mpq.calibrate(model, a, cands, progress=False, quantizer_batches=b)
    on_b = mpq.calibrate(model, b, cands, progress=False)
    assert set(split.quantized_weights) == set(on_b.quantized_weights)
    for key, q in on_b.quantized_weights.items():
        assert torch.equal(split.quantized_weights[key].codes, q.codes), key
    assert split.quantized_weights.data_fingerprint == fingerprint(b) and split.data_fingerprint == fingerprint(a)
    layer = "model.layers.0.mlp.down_proj"
    w = dict(model.named_modules())[layer].weight.detach()
    li = split.index(layer)
    for cand in cands:
        qw = split.quantized_weights[layer, cand]
        wpart, _ = _per_sample_reference(model, a, layer, qw.effective_weight() - w)
        np.testing.assert_allclose(split.delta_weight[:, li, split.candidates.index(cand)], wpart, rtol=1e-4,
                                   atol=1e-12)
    same = mpq.calibrate(model, a, cands, progress=False)  # fitted where measured: other integers, other δ
    assert not np.allclose(same.delta, split.delta)
    with pytest.warns(UserWarning, match="1 of the quantizer_batches are also sensitivity batches"):
        mpq.calibrate(model, a, cands, progress=False, quantizer_batches=[a[0], b[0]])
    with pytest.raises(ValueError, match="quantizer_batches is empty"):
        mpq.calibrate(model, a, cands, progress=False, quantizer_batches=[])


def test_unavailable_layers_are_marked_with_their_reason(calibrated):
    model, _, table = calibrated
    app = table.applicable
    j = table.candidates.index("w4a16_g64_gptq")
    assert app[table.index("model.layers.0.mlp.down_proj"), j]  # in_features 64
    assert not app[table.index("model.layers.0.self_attn.q_proj"), j]  # in_features 32
    why = table.info["unavailable"]
    assert "does not divide in_features 32" in why["model.layers.0.self_attn.q_proj"]["w4a16_g64_gptq"]
    for cand in ("w8a16_gptq", "w8a16_awq", "int8_sq"):
        assert not app[table.index("unused"), table.candidates.index(cand)]
        assert "no calibration activations" in why["unused"][cand]
        assert ("unused", cand) not in table.quantized_weights
    assert app[table.index("unused"), table.candidates.index("w8a16")]  # RTN needs no activations
    assert np.isinf(table.mse[table.index("unused"), table.candidates.index("w8a16_gptq")])
    assert "no calibration activations" in table.report()


@pytest.mark.parametrize("cand", ["w8a16_gptq", "w8a16_awq", "int8_static_sq", "int8_sq"])
def test_apply_fake_and_native_run_the_stored_integers(calibrated, cand):
    model, batches, table = calibrated
    layer = "model.layers.0.mlp.down_proj"
    qw = table.quantized_weights[layer, cand]
    c = mpq.CANDIDATES[cand]
    li, ci = table.index(layer), table.candidates.index(cand)
    scales = {layer: float(table.act_scales[li, ci])} if c.act_static else None
    fake = mpq.apply(model, {layer: cand}, act_scales=scales, quantized_weights=table.quantized_weights)
    native = mpq.apply(model, {layer: cand}, mode="native", act_scales=scales,
                       quantized_weights=table.quantized_weights)
    fmod, nmod = dict(fake.named_modules())[layer], dict(native.named_modules())[layer]
    assert torch.equal(fmod.weight, qw.dequantized())
    assert torch.equal(nmod.qweight, qw.codes)  # the int8 kernels hold the very codes
    x = torch.randn(5, 64) * 3
    static = scales[layer] if scales else None
    ref = F.linear(c.quantize_act(x / qw.input_scale, static) if c.act_format else
                   x if qw.input_scale is None else x / qw.input_scale, qw.dequantized(),
                   dict(model.named_modules())[layer].bias)
    torch.testing.assert_close(fmod(x), ref, rtol=0, atol=0)
    tol = 1e-5 if c.act_format else 2 ** -7  # weight-only kernels run bf16 activations and scales
    assert float((nmod(x) - ref).abs().max() / ref.abs().max()) < tol


@pytest.mark.parametrize("cand", ["w4a16_g64_gptq", "w4a16_g64_ortn"])
def test_int4_native_kernel_runs_the_stored_groups(calibrated, cand):
    model, _, table = calibrated
    layer = "model.layers.0.mlp.down_proj"
    qw = table.quantized_weights[layer, cand]
    if cand.endswith("_ortn"):  # the full range: codes at −8 and negative scales run in the int4 kernel too
        assert (qw.codes == -8).any() and (qw.scales < 0).any()
    native = mpq.apply(model, {layer: cand}, mode="native", quantized_weights=table.quantized_weights)
    x = torch.randn(4, 64)
    ref = F.linear(x, qw.dequantized())
    y = dict(native.named_modules())[layer](x)
    assert float((y - ref).abs().max() / ref.abs().max()) < 2 ** -7
    rtn = F.linear(x, mpq.CANDIDATES["w4a16_g64"].quantize_weight(dict(model.named_modules())[layer].weight))
    assert float((y - rtn).abs().max()) > float((y - ref).abs().max())  # not the RTN integers


def test_store_round_trip_and_refusals(calibrated, tmp_path):
    model, batches, table = calibrated
    table.save(tmp_path / "s.npz")  # the reasons travel with the table; its weights in their own file
    again = mpq.SensitivityTable.load(tmp_path / "s.npz")
    assert again.info["unavailable"] == table.info["unavailable"] and again.quantized_weights is None
    assert np.array_equal(again.applicable, table.applicable)
    path = tmp_path / "qw.npz"
    table.quantized_weights.save(path)
    loaded = QuantizedWeights.load(path)
    assert set(loaded) == set(table.quantized_weights)
    for key, q in table.quantized_weights.items():
        assert torch.equal(loaded[key].codes, q.codes) and torch.equal(loaded[key].scales, q.scales)
        assert (q.input_scale is None) == (loaded[key].input_scale is None)
    plan = {"model.layers.0.mlp.down_proj": "w8a16_awq", "model.layers.0.self_attn.o_proj": "w8a16_gptq"}
    ids = batches[0]["input_ids"]
    a = mpq.apply(model, plan, quantized_weights=table.quantized_weights)(ids).logits
    b = mpq.apply(model, plan, quantized_weights=loaded)(ids).logits
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pass quantized_weights"):
        mpq.apply(model, plan)
    other = tiny_llama(1)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    with pytest.raises(ValueError, match="different weight"):
        mpq.apply(other, plan, quantized_weights=loaded)
    with pytest.raises(ValueError, match="no calibrated weight"):
        mpq.apply(model, {"unused": "w8a16_gptq"}, quantized_weights=loaded)
    with pytest.raises(ValueError, match="config cannot carry"):
        mpq.export(plan, "compressed-tensors", tmp_path / "ct.json")


def test_select_verifies_plans_with_the_tables_integers(calibrated):
    """select(verify=...) measures each plan on held-out batches by applying it: with the table's integers."""
    model, batches, table = calibrated
    gains = mpq.profile(model, {"input_ids": batches[0]["input_ids"][:1]}, table.candidates, backend="memory")
    plan = mpq.select(table, gains, max_loss_mse=1.0, verify=(model, batches[1:]))
    assert plan.verification and any(mpq.CANDIDATES[c].calibrated_weight for c in plan.quantized.values())
