"""mpq.attention: routed attention equals each model's own eager attention (Llama, Qwen2, Qwen3, Gemma2's
soft-capping, Gemma3's sliding and full layers, gpt-oss's sinks, GQA and MHA, with padding), the model comes back
as it was (also after an error), re-quantizing a quantized KV cache changes nothing, and calibrate's δ of
matmul_qk / matmul_av / k_cache / v_cache against finite differences of the loss; custom attention falls back."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mpq.calibration as calib
from mpq.attention import AttentionNotRoutable, KVCache, MatMul, routed_attention
from mpq.attention.quantize import quantize_attention_input
from mpq.candidates import ATTENTION_CANDIDATES, CANDIDATES, Candidate, get_candidate
from mpq.formats import compute_scales
from mpq.models import model_inputs
from _tiny_models import padded_lm_batch as _batch, tiny_gemma3, tiny_llama

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(cls_name, cfg_name, **kw):
    if not hasattr(transformers, cls_name):
        pytest.skip(f"transformers {transformers.__version__} has no {cls_name}")
    cfg = getattr(transformers, cfg_name)(vocab_size=64, hidden_size=32, intermediate_size=64,
                                          max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg).eval()


MODELS = {
    "llama_gqa": lambda: tiny_llama(2),  # 4 query heads, 2 K/V heads
    "llama_gqa_8_2": lambda: _build("LlamaForCausalLM", "LlamaConfig", num_hidden_layers=2, num_attention_heads=8,
                                    num_key_value_heads=2),
    "qwen2_mha": lambda: _build("Qwen2ForCausalLM", "Qwen2Config", num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4),
    "qwen3": lambda: _build("Qwen3ForCausalLM", "Qwen3Config", num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8),
    "gemma2_softcap": lambda: _build("Gemma2ForCausalLM", "Gemma2Config", num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=5.0,
                                     final_logit_softcapping=None),
    "gemma3_sliding_full": lambda: tiny_gemma3(("sliding_attention", "full_attention")),
    "gpt_oss_sinks": lambda: _build("GptOssForCausalLM", "GptOssConfig", num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, sliding_window=4, num_local_experts=4,
                                    num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_eager_attention(name):
    model = MODELS[name]()
    model.set_attn_implementation("eager")
    if name == "gpt_oss_sinks":  # sinks start at zero: make them matter
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "sinks"):
                    m.sinks.normal_(0, 2)
    batch = _batch()
    with torch.no_grad():
        want = model(**batch).logits
        with routed_attention(model) as routed:
            assert model.config._attn_implementation == "mpq_routed"
            got = model(**batch).logits
            assert routed.not_called() == [] and len(routed.layers()) == 4 * len(routed.attention) > 0
            calls = [m.calls for _, m in routed.layers() if isinstance(m, MatMul)]
        assert model.config._attn_implementation == "eager"
        assert not any(isinstance(m, (MatMul, KVCache)) for m in model.modules())
    assert all(c == 1 for c in calls)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel <= 1e-5, rel
    # the reference is not trivially equal to something else: without the mask or the softcap it differs
    if name == "gemma2_softcap":
        assert model.config.attn_logit_softcapping == 5.0


def test_gemma3_has_no_attention_softcap_but_sliding_matters():
    """Gemma3 keeps attn_logit_softcapping in its config but does not pass it to attention (transformers 5):
    the routed logits equal eager's either way; the sliding window does change them."""
    model = tiny_gemma3(("sliding_attention", "full_attention"))
    model.set_attn_implementation("eager")
    batch = _batch(pad=False)
    with torch.no_grad():
        want = model(**batch).logits
        full = tiny_gemma3(("full_attention", "full_attention"))
        full.set_attn_implementation("eager")
        assert (full(**batch).logits - want).abs().max() > 1e-4  # window 4 < 12 tokens: the mask is exercised


def test_routing_restores_after_an_error():
    model = tiny_llama(1)
    impl = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with routed_attention(model):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == impl
    assert not any(isinstance(m, (MatMul, KVCache)) for m in model.modules())
    # a failing calibration restores it too
    def bad_loss(out, batch):
        raise RuntimeError("loss failed")
    with pytest.raises(RuntimeError, match="loss failed"):
        calib.calibrate(model, [_batch()], ("fp8", "mm_fp8"), loss_fn=bad_loss, progress=False)
    assert model.config._attn_implementation == impl
    assert not any(isinstance(m, (MatMul, KVCache)) for m in model.modules())


def test_routing_twice_is_refused():
    model = tiny_llama(1)
    with routed_attention(model):
        with pytest.raises(AttentionNotRoutable, match="already has"):
            with routed_attention(model):
                pass


# --- the KV cache: quantized as it enters the cache == quantized inside attention ---------------------------
def _kv_scales(c, x):
    if not c.act_static:
        return None
    if c.act_granularity == "head":
        r = torch.stack([-x.abs().amax((0, 2, 3)), x.abs().amax((0, 2, 3))], 1)
        return [float(s) for s in compute_scales(r, c.act_format, axis=0)[0]]
    return [float(compute_scales(x, c.act_format)[0][0])]


@pytest.mark.parametrize("name", [n for n in ATTENTION_CANDIDATES if n.startswith("kv_")])
def test_requantizing_a_quantized_kv_cache_is_exact(name):
    """Q(Q(K)) == Q(K) bit for bit over many rows of very different magnitudes (max-abs per token: the row's
    maximum maps to the format's maximum and back; static scales: the grid is fixed)."""
    c = get_candidate(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 512, 16, generator=g) * torch.logspace(-6, 6, 512).view(1, 1, -1, 1)
    x[:, :, ::7] *= 300
    scales = _kv_scales(c, x)
    q1 = quantize_attention_input(c, x, scales)
    assert not torch.equal(q1, x)
    assert torch.equal(quantize_attention_input(c, q1, scales), q1)


class _QuantizingCache(transformers.DynamicCache):
    """Quantizes K and V as they enter the cache (what a quantized KV cache stores)."""

    def __init__(self, quant, **kw):
        super().__init__(**kw)
        self.quant = quant

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(self.quant(key_states), self.quant(value_states), layer_idx, *args, **kwargs)


def _decode_logits(model, ids, cache, steps=3):
    out = [model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]]
    nxt = ids[:, -1:]
    for _ in range(steps):
        nxt = (nxt * 7 + 3) % 64
        out.append(model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1])
    return torch.stack(out, 1)


@pytest.mark.parametrize("name", ["kv_fp8_token", "kv_int8_token", "kv_fp8", "kv_int8_head"])
def test_cache_entry_quantization_equals_quantizing_in_attention(name):
    """Prefill + 3 decode steps: quantizing K/V on entry to the cache gives the logits of quantizing the whole
    K/V in attention at every step (k_cache / v_cache), because re-quantizing the cached tokens is exact."""
    c = get_candidate(name)
    model = tiny_llama(2)
    ids = _batch(2, 8, pad=False)["input_ids"]
    fixed = torch.full((1, 2, 1, 1), 0.02)  # static scales, fixed up front (as calibrated ones are)
    scales = _kv_scales(c, fixed.expand(1, 2, 1, 8)) if c.act_static else None
    quant = lambda t: quantize_attention_input(c, t, scales)
    with torch.no_grad():
        entry = _decode_logits(model, ids, _QuantizingCache(quant, config=model.config))
        with routed_attention(model) as routed:
            hooks = [m.register_forward_hook(lambda m, a, out: quant(out))
                     for _, m in routed.layers() if isinstance(m, KVCache)]
            inside = _decode_logits(model, ids, transformers.DynamicCache(config=model.config))
            for h in hooks:
                h.remove()
        plain = _decode_logits(model, ids, transformers.DynamicCache(config=model.config))
    assert (entry - plain).abs().max() > 0  # the quantization does something
    torch.testing.assert_close(inside, entry, rtol=1e-5, atol=1e-6)


def test_per_tensor_dynamic_kv_would_not_be_cache_compatible():
    """Why no dynamic per-tensor KV candidate exists: its scale changes as tokens arrive, so quantizing on entry
    and in attention differ (the matmul candidate mm_fp8 has that rule)."""
    c = get_candidate("mm_fp8")
    model = tiny_llama(2)
    ids = _batch(2, 8, pad=False)["input_ids"]
    quant = lambda t: quantize_attention_input(c, t)
    with torch.no_grad():
        entry = _decode_logits(model, ids, _QuantizingCache(quant, config=model.config))
        with routed_attention(model) as routed:
            for _, m in routed.layers():
                if isinstance(m, KVCache):
                    m.register_forward_hook(lambda m, a, out: quant(out))
            inside = _decode_logits(model, ids, transformers.DynamicCache(config=model.config))
    assert (inside - entry).abs().max() > 1e-4


# --- candidates -------------------------------------------------------------------------------------------------
def test_candidate_kinds():
    assert get_candidate("fp8").kinds == ("linear",)
    assert {get_candidate(n).kinds for n in ATTENTION_CANDIDATES} == {("matmul",), ("kv_cache",)}
    with pytest.raises(ValueError, match="weight_format goes with"):
        Candidate("x", None, act_format="fp8_e4m3")
    with pytest.raises(ValueError, match="weight_format goes with"):
        Candidate("x", "fp8_e4m3", act_format="fp8_e4m3", kinds=("matmul",))
    with pytest.raises(ValueError, match="per tensor"):
        Candidate("x", None, act_format="fp8_e4m3", act_granularity="token", kinds=("matmul",))
    with pytest.raises(ValueError, match="per-head scales"):
        Candidate("x", None, act_format="int8", act_granularity="head", kinds=("kv_cache",))
    with pytest.raises(ValueError, match="change with every token"):
        Candidate("x", None, act_format="int8", act_granularity="tensor", kinds=("kv_cache",))
    with pytest.raises(ValueError, match="kinds must be"):
        Candidate("x", None, act_format="int8", kinds=("conv",))
    with pytest.raises(ValueError, match="no weight"):
        get_candidate("kv_fp8").weight_bits


# --- calibration ------------------------------------------------------------------------------------------------
def _rmsnorm64(m64):
    for norm in m64.modules():  # the RMSNorms compute in float32 even in a float64 model: keep them in float64
        name = type(norm).__name__
        if name.startswith("Gemma") and name.endswith("RMSNorm"):  # (1 + w) · x / rms(x)
            norm.forward = (lambda n: lambda h: (1 + n.weight) * h * torch.rsqrt(
                h.pow(2).mean(-1, keepdim=True) + n.eps))(norm)
        elif name.endswith("RMSNorm"):
            norm.forward = (lambda n: lambda h: n.weight * h * torch.rsqrt(
                h.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))(norm)


def fd_attention_delta(model, layer, cand, batch, scales, eps=1e-4):
    """Per-sample d/dε ℓ_n(X + ε(Q(X) − X)) at ε = 0 for every input X of a routed attention module, by central
    differences in float64 (Q computed on the float32 values, as calibration sees them)."""
    c = CANDIDATES[cand]
    m64 = copy.deepcopy(model).double()
    _rmsnorm64(m64)
    state = {"eps": 0.0}

    def pre(module, args):
        out = []
        for k, x in enumerate(args):
            x32 = x.float()
            sc = None if scales is None else scales[k:k + 1] if isinstance(module, MatMul) else scales
            out.append(x + state["eps"] * (quantize_attention_input(c, x32, sc) - x32).double())
        return tuple(out)

    vals = []
    with torch.no_grad(), routed_attention(m64):
        h = dict(m64.named_modules())[layer].register_forward_pre_hook(pre)
        for e in (eps, -eps):
            state["eps"] = e
            args, kwargs = model_inputs(batch)
            vals.append(calib.causal_lm_loss(m64(*args, **kwargs), batch).double())
        h.remove()
    return ((vals[0] - vals[1]) / (2 * eps)).numpy()


ATT = ("mm_fp8", "mm_int8", "mm_fp8_static", "mm_fp8_gaudi2", "kv_fp8_token", "kv_int8_token", "kv_fp8",
       "kv_int8_head", "kv_fp8_head")


@pytest.fixture(scope="module")
def llama_table():
    model = tiny_llama(2)
    batch = _batch(4, 12)
    table = calib.calibrate(model, [batch], ("fp8", "int8_static") + ATT, progress=False)
    return model, batch, table


def test_attention_delta_matches_finite_differences(llama_table):
    model, batch, table = llama_table
    assert table.info["attention"] == {"routed": True, "attention_modules": 2}
    for layer in ("model.layers.0.self_attn.matmul_qk", "model.layers.0.self_attn.matmul_av",
                  "model.layers.1.self_attn.k_cache", "model.layers.1.self_attn.v_cache"):
        li = table.index(layer)
        kind = "matmul" if "matmul" in layer else "kv_cache"
        for ci, cand in enumerate(table.candidates):
            c = CANDIDATES[cand]
            if kind not in c.kinds:
                assert np.isnan(table.delta[:, li, ci]).all() and table.mse[li, ci] == np.inf
                assert cand in table.info["unavailable"][layer]
                continue
            scales = table.info["attention_scales"][layer][cand] if c.act_static else None
            want = fd_attention_delta(model, layer, cand, batch, scales)
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(table.delta[:, li, ci], want, rtol=3e-3,
                                       atol=1e-3 * np.abs(want).max() + 1e-12, err_msg=f"{layer}/{cand}")
            assert not table.delta_weight[:, li, ci].any()  # no weight: all of δ is the activations'


@pytest.mark.parametrize("name", ["qwen3", "gemma3_sliding_full"])
def test_attention_delta_finite_differences_qwen3_gemma3(name):
    """Q/K norms (both), Gemma3's sliding layer 0 (window 4 of 12 tokens) and full layer 1, with padding."""
    model = MODELS[name]()
    batch = _batch(3, 12)
    cands = ("mm_fp8_static", "mm_int8", "kv_int8_head", "kv_fp8_token")
    table = calib.calibrate(model, [batch], cands, progress=False)
    for layer in ("model.layers.0.self_attn.matmul_av", "model.layers.0.self_attn.k_cache",
                  "model.layers.1.self_attn.matmul_qk", "model.layers.1.self_attn.v_cache"):
        li = table.index(layer)
        for ci, cand in enumerate(cands):
            c = CANDIDATES[cand]
            if ("matmul" in layer) != (c.kinds == ("matmul",)):
                continue
            scales = table.info["attention_scales"][layer][cand] if c.act_static else None
            want = fd_attention_delta(model, layer, cand, batch, scales)
            np.testing.assert_allclose(table.delta[:, li, ci], want, rtol=3e-3,
                                       atol=1e-3 * np.abs(want).max() + 1e-12, err_msg=f"{name}/{layer}/{cand}")


def test_attention_calibration_keeps_linear_results():
    """Routing attention changes no Linear δ: the same numbers as a Linear-only calibration (right padding: with
    left padding the model's own sdpa and eager attention compute different losses, see the README)."""
    model = tiny_llama(2)
    batch = _batch(4, 12)
    batch["attention_mask"][0] = 1
    cands = ("fp8", "int8_static", "mm_fp8", "kv_fp8")
    table = calib.calibrate(model, [batch], cands, progress=False)
    plain = calib.calibrate(model, [batch], cands[:2], progress=False)
    assert "attention" not in plain.info and len(table.layers) == len(plain.layers) + 8
    idx = [table.index(n) for n in plain.layers]
    np.testing.assert_allclose(table.delta[:, idx, :2], plain.delta, rtol=1e-4, atol=1e-6 * np.abs(plain.delta).max())
    np.testing.assert_allclose(table.act_scales[idx, :2], plain.act_scales, rtol=1e-6)
    assert all(np.isnan(table.delta[:, i, 2:]).all() for i in idx)  # attention candidates do not apply
    # only the kinds the candidates apply to: matmul candidates alone leave the caches out
    mm = calib.calibrate(model, [batch], ("mm_fp8",), progress=False)
    assert mm.layers == tuple(n for n in table.layers if "matmul" in n)
    # layers= names routed modules too
    qk = "model.layers.1.self_attn.matmul_qk"
    one = calib.calibrate(model, [batch], ("mm_fp8",), progress=False, layers=[qk])
    assert one.layers == (qk,)
    np.testing.assert_allclose(one.delta[:, 0, 0], mm.delta[:, mm.index(qk), 0], rtol=1e-6)


def test_attention_table_saves_and_loads(llama_table, tmp_path):
    from mpq.artifacts import SensitivityTable
    _, _, table = llama_table
    table.save(tmp_path / "t.npz")
    back = SensitivityTable.load(tmp_path / "t.npz")
    assert back.layers == table.layers and back.info["attention"] == table.info["attention"]
    assert back.info["attention_scales"] == table.info["attention_scales"]
    np.testing.assert_array_equal(back.delta, table.delta)


def test_attention_static_scales_are_amax_of_unpadded_tokens(llama_table):
    """A static KV scale is the max-abs of K over non-padded tokens: recomputed here from the model's K."""
    model, batch, table = llama_table
    seen = {}
    with torch.no_grad(), routed_attention(model) as routed:
        mod = dict(model.named_modules())["model.layers.0.self_attn.k_cache"]
        h = mod.register_forward_hook(lambda m, a, out: seen.setdefault("k", out))
        model(**batch)
        h.remove()
    k = seen["k"].transpose(1, 2)[batch["attention_mask"].bool()]  # [tokens, H_kv, D]
    amax_head = k.abs().amax((0, 2))
    sc = table.info["attention_scales"]["model.layers.0.self_attn.k_cache"]
    np.testing.assert_allclose(sc["kv_fp8"], [float(amax_head.max()) / 448], rtol=1e-6)
    np.testing.assert_allclose(sc["kv_fp8_head"], (amax_head / 448).numpy(), rtol=1e-6)
    np.testing.assert_allclose(sc["kv_int8_head"], (amax_head / 127).numpy(), rtol=1e-6)


def test_attention_delta_ignores_padding(llama_table):
    """Padded tokens do not change the δ of per-token KV candidates (a dynamic per-tensor matmul scale sees the
    padded rows of Q too, so mm_fp8 is left out). Samples 1-3 only: sample 0 is left-padded, and causal_lm_loss
    then also scores the first real token as predicted from the last pad, which the unpadded sequence has not."""
    model, batch, table = llama_table
    singles = []
    for i in range(4):
        keep = batch["attention_mask"][i].bool()
        singles.append({"input_ids": batch["input_ids"][i:i + 1, keep],
                        "attention_mask": torch.ones(1, int(keep.sum()), dtype=torch.long)})
    alone = calib.calibrate(model, singles, table.candidates, progress=False)
    assert alone.info["attention_scales"].keys() == table.info["attention_scales"].keys()
    for cand in ("kv_fp8_token", "kv_int8_token"):
        j = table.candidates.index(cand)
        np.testing.assert_allclose(alone.delta[1:, :, j], table.delta[1:, :, j], rtol=1e-3,
                                   atol=1e-4 * np.nanmax(np.abs(table.delta[..., j])), err_msg=cand)


def test_gemma3_attention_calibrates():
    model = tiny_gemma3(("sliding_attention", "full_attention"))
    table = calib.calibrate(model, [_batch(2, 10)], ("fp8", "mm_fp8_static", "kv_fp8_token"), progress=False)
    names = [n for n in table.layers if n.endswith(("matmul_qk", "matmul_av", "k_cache", "v_cache"))]
    assert len(names) == 8
    for n in names:
        j = 1 if "matmul" in n else 2
        assert np.isfinite(table.mse[table.index(n), j]) and table.mse[table.index(n), j] > 0


# --- bad input: attention that cannot be routed -----------------------------------------------------------------
class _CustomAttentionLM(nn.Module):
    """A causal LM with its own attention code: no transformers config, no attention interface."""

    def __init__(self, with_config=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(64, 16)
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)
        self.head = nn.Linear(16, 64)
        if with_config:  # a config that is not used by any attention interface
            self.config = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        q, k, v = self.qkv(h).chunk(3, -1)
        s = q @ k.transpose(1, 2) / 4 + torch.triu(torch.full((h.shape[1],) * 2, -1e9), 1)
        return self.head(h + self.out(s.softmax(-1) @ v))


@pytest.mark.parametrize("with_config,reason", [(False, "no transformers config"),
                                                (True, "custom attention code cannot be routed")])
def test_custom_attention_falls_back_to_linear_only(with_config, reason):
    model = _CustomAttentionLM(with_config)
    batch = {"input_ids": _batch(2, 8, pad=False)["input_ids"]}
    with pytest.warns(UserWarning, match="attention candidates left out.*" + reason):
        table = calib.calibrate(model, [batch], ("fp8", "mm_fp8", "kv_fp8_token"), progress=False)
    assert table.layers == ("qkv", "out", "head")
    assert table.info["attention"]["routed"] is False and reason in table.info["attention"]["reason"]
    assert np.isfinite(table.mse[:, 0]).all() and (table.mse[:, 1:] == np.inf).all()
    assert set(table.info["unavailable"]["qkv"]) == {"mm_fp8", "kv_fp8_token"}
    with warnings.catch_warnings():  # Linear-only candidates: nothing to say about attention
        warnings.simplefilter("error")
        assert "attention" not in calib.calibrate(model, [batch], ("fp8",), progress=False).info
    with pytest.warns(UserWarning, match="attention candidates left out"):
        with pytest.raises(ValueError, match="none of the candidates.*" + reason):
            calib.calibrate(model, [batch], ("mm_fp8",), progress=False)


@pytest.mark.parametrize("name", ATTENTION_CANDIDATES)
def test_kernel_layouts_equal_the_candidate_quantizer(name):
    """The fused kernel's δ for each attention layout (per-sample matmul scale, per-token rows, static tensor,
    per-head scales by rescaling) equals Σ G ⊙ (Q(X) − X) with Q = quantize_attention_input, per sample."""
    from types import SimpleNamespace
    from mpq.calibration.attention import AttentionLayer
    c = get_candidate(name)
    g = torch.Generator().manual_seed(3)
    B, H, S, D = 3, 2, 9, 16
    if c.kinds == ("matmul",):
        mod, xs = MatMul(), [torch.randn(B, H, S, D, generator=g), torch.randn(B, H, D, S, generator=g) * 3]
    else:
        mod, xs = KVCache(), [torch.randn(B, H, S, D, generator=g) * torch.tensor([1.0, 7.0]).view(1, H, 1, 1)]
    grads = [torch.randn(x.shape, generator=g) for x in xs]
    if not c.act_static:
        sc = None
    elif c.act_granularity == "head":
        sc = [0.011, 0.07]
    else:
        sc = [0.013, 0.031][:len(xs)]
    got = np.zeros((B, 1))
    run = SimpleNamespace(batch_samples=B, batch_index=0, calls=[], extra=None,
                          add=lambda i, idx, v, weight: got.__iadd__(v.numpy()))
    layer = AttentionLayer(run, 0, "x", mod, [c], {(0, name): [(s, 0.0) for s in sc]} if sc else {}, {})
    aliases = layer.pre(mod, tuple(xs))
    sum((a * gr).sum() for a, gr in zip(aliases, grads)).backward()
    want = np.zeros(B)
    for k, (x, gr) in enumerate(zip(xs, grads)):
        s_k = None if sc is None else sc if c.act_granularity == "head" else sc[k:k + 1]
        want += (gr.double() * (quantize_attention_input(c, x, s_k) - x).double()).flatten(1).sum(1).numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


# --- partition and profile ----------------------------------------------------------------------------------------
def test_partition_puts_attention_modules_in_their_attention_subgraph():
    import mpq
    model = tiny_llama(2)
    ids = _batch(2, 10, pad=False)["input_ids"]
    plain = mpq.partition(model, ids)
    with routed_attention(model):
        routed = mpq.partition(model, ids, method="export")
    assert [s.name for s in routed] == [s.name for s in plain]
    att = "model.layers.1.self_attn"
    sg = next(s for s in routed if s.name == att)
    assert sg.layers == tuple(f"{att}.{n}" for n in ("q_proj", "k_proj", "v_proj", "matmul_qk", "matmul_av",
                                                      "k_cache", "v_cache", "o_proj"))
    assert (f"{att}.k_cache", f"{att}.v_cache") in sg.ties
    assert len(sg.groups) == 5  # q/k/v, matmul_qk, matmul_av, the cache, o_proj
    for a, b in zip(plain, routed):  # the MLP and head sub-graphs are the same
        if "self_attn" not in a.name:
            assert a == b


def test_profile_macs_and_memory_count_attention():
    import mpq
    from mpq.profiling.backends.macs import DEVICES
    model = tiny_llama(2)
    B, S = 2, 10
    H, H_kv, D = 4, 2, 8
    ids = _batch(B, S, pad=False)["input_ids"]
    cands = ("fp8", "mm_fp8", "kv_fp8_token", "kv_int8_head")
    macs = mpq.profile(model, ids, candidates=cands, backend="macs", device="gaudi2")
    mem = mpq.profile(model, ids, candidates=cands, backend="memory")
    assert model.config._attn_implementation == "sdpa" and not any(isinstance(m, MatMul) for m in model.modules())
    qk, av, kc = (f"model.layers.0.self_attn.{n}" for n in ("matmul_qk", "matmul_av", "k_cache"))
    j = {c: macs.candidates.index(c) for c in macs.candidates}
    _, rates = DEVICES["gaudi2"]
    for name in (qk, av):  # MACs = B·H·S·S·D at bf16 (base) vs fp8 rates
        i = macs.layers.index(name)
        assert macs.layer_gain[i, j["mm_fp8"]] == pytest.approx(B * H * S * S * D * (1 / rates["bf16"] - 1 / rates["fp8"]))
        assert np.isnan(macs.layer_gain[i, [j["fp8"], j["kv_fp8_token"]]]).all()
    i = mem.layers.index(kc)  # K cache bytes: B·H_kv·S·D elements, fp32 model, scales 4 bytes each
    elems = B * H_kv * S * D
    assert mem.layer_gain[i, j["kv_fp8_token"]] == elems * 4 - (elems + 4 * B * H_kv * S)
    assert mem.layer_gain[i, j["kv_int8_head"]] == elems * 4 - (elems + 4 * H_kv)
    assert mem.layer_gain[mem.layers.index(qk), j["mm_fp8"]] == 0  # a matmul stores nothing
    assert macs.layer_gain[i, j["kv_fp8_token"]] == 0  # a cache computes nothing
    # calibrate + profile + select: the cache is chosen jointly with the projections of its sub-graph
    table = calib.calibrate(model, [ids], cands, progress=False)
    plan = mpq.select(table, mem, max_loss_mse=float(table.mse[np.isfinite(table.mse)].sum()))
    assert plan.mapping[kc] in ("kv_fp8_token", "kv_int8_head")
    assert plan.mapping[kc] == plan.mapping[kc.replace("k_cache", "v_cache")]
    # average bits per weight count the Linear weights only, as without attention
    lin_only = mpq.profile(model, ids, candidates=("fp8",), backend="memory")
    mapping = {l: "fp8" for l in lin_only.layers}
    from mpq.selection import avg_bits
    assert avg_bits(mem, mapping) == avg_bits(lin_only, mapping)
    assert 8 < avg_bits(mem, mapping) < 10  # 8-bit values plus one fp32 scale per row of 32 inputs


def test_profile_attention_bad_backend_and_custom_model():
    import mpq
    model = tiny_llama(1)
    ids = _batch(1, 6, pad=False)["input_ids"]
    with pytest.raises(ValueError, match="backend 'ebops' does not measure attention.*mm_fp8"):
        mpq.profile(model, ids, candidates=("fp8", "mm_fp8"), backend="ebops")
    custom = _CustomAttentionLM()
    with pytest.warns(UserWarning, match="attention candidates left out.*no transformers config"):
        gains = mpq.profile(custom, ids, candidates=("fp8", "mm_fp8"), backend="macs")
    assert gains.candidates == ("base", "fp8") and gains.layers == ("qkv", "out", "head")


def test_apply_refuses_attention_candidates_on_linears_and_native_attention():
    import mpq  # fake-applied attention: tests/test_attention_apply.py
    model = tiny_llama(1)
    with pytest.raises(ValueError, match="no native kernel in mpq"):
        mpq.apply(model, {"model.layers.0.self_attn.k_cache": "kv_fp8_token"}, mode="native")
    with pytest.raises(ValueError, match="is for attention's kv_cache layers, not an nn.Linear"):
        mpq.apply(model, {"model.layers.0.self_attn.q_proj": "kv_fp8_token"})
    # a plan that keeps attention at base applies (select's plans list every table layer)
    qm = mpq.apply(model, {"model.layers.0.self_attn.k_cache": "base", "model.layers.0.self_attn.q_proj": "fp8"})
    assert type(qm.model.layers[0].self_attn.q_proj).__name__ != "Linear"
