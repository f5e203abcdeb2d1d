"""``mpq.apply(mode="fake")`` of a plan's attention entries (matmul_qk, matmul_av, k_cache, v_cache): the logits
equal an attention written here, in plain torch, that quantizes Q·Kᵀ's and P·V's inputs and K/V with its own
quantizers (not mpq's); the input model keeps its own attention; select copies the calibrated attention scales into
the Plan, whose JSON holds them as lists."""
import copy

import numpy as np
import pytest
import torch

import mpq
import mpq.calibration as calib
from mpq.artifacts import Plan
from _tiny_models import tiny_llama

transformers = pytest.importorskip("transformers")

A = "model.layers.{}.self_attn."
FMT_MAX = {"fp8": 448.0, "int8": 127.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(n=3, s=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


# --- the reference: quantizers and an eager attention written in plain torch --------------------------------------
def q_fixed(x, fmt, s):
    """Q(x) with scale s (a number or a tensor broadcasting against x): x·(1/s) saturated and rounded, times s."""
    v = x * (1.0 / s)
    if fmt == "int8":
        return torch.round(v).clamp(-127, 127) * s
    return v.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * s


def q_sample(x, fmt):
    """One max-abs scale per sample (dim 0): a dynamic per-tensor matmul input."""
    s = x.abs().flatten(1).amax(1).reshape(-1, *[1] * (x.dim() - 1)) / FMT_MAX[fmt]
    return q_fixed(x, fmt, s)


def q_token(x, fmt):
    """One max-abs scale per (sample, head, token) vector of D values: a dynamic per-token KV cache."""
    return q_fixed(x, fmt, x.abs().amax(-1, keepdim=True) / FMT_MAX[fmt])


def q_heads(x, fmt, scales):
    """One static scale per K/V head (dim 1)."""
    return q_fixed(x, fmt, torch.tensor(scales).reshape(1, -1, 1, 1))


REF_SPECS = {}  # layer index -> {"qk": f(a, b), "av": f(a, b), "k": f(x), "v": f(x)}


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    spec = REF_SPECS.get(module.layer_idx, {})
    ident = lambda x: x  # noqa: E731
    key, value = spec.get("k", ident)(key), spec.get("v", ident)(value)
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    qk = spec.get("qk", lambda a, b: (a, b))
    scores = torch.matmul(*qk(query, key.transpose(2, 3))) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    av = spec.get("av", lambda a, b: (a, b))
    return torch.matmul(*av(probs, value)).transpose(1, 2).contiguous(), probs


def reference_logits(model, batch, specs):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register("test_quant_ref", reference_attention)
    AttentionMaskInterface.register("test_quant_ref", eager_mask)
    ref = copy.deepcopy(model)
    ref.config._attn_implementation_internal = "test_quant_ref"
    REF_SPECS.clear()
    REF_SPECS.update(specs)
    with torch.no_grad():
        return ref(**batch).logits


# --- tests ---------------------------------------------------------------------------------------------------------
def _static_mm(fmt, sa, sb):
    return lambda a, b: (q_fixed(a, fmt, sa), q_fixed(b, fmt, sb))


def _dynamic_mm(fmt):
    return lambda a, b: (q_sample(a, fmt), q_sample(b, fmt))


PLAN_SCALES = {  # hand-chosen static scales (the logits only need them to be the same on both sides)
    A.format(0) + "matmul_qk": [0.004, 0.006], A.format(1) + "matmul_av": [1 / 448, 0.003],
    A.format(0) + "k_cache": [0.005, 0.007], A.format(0) + "v_cache": [0.002, 0.0015],
}


def _plan():
    mapping = {A.format(0) + "matmul_qk": "mm_fp8_static", A.format(0) + "matmul_av": "mm_int8",
               A.format(0) + "k_cache": "kv_fp8_head", A.format(0) + "v_cache": "kv_fp8_head",
               A.format(1) + "matmul_qk": "mm_fp8", A.format(1) + "matmul_av": "mm_int8_static",
               A.format(1) + "k_cache": "kv_int8_token", A.format(1) + "v_cache": "kv_fp8_token",
               "model.layers.1.mlp.up_proj": "base"}
    scales = dict(PLAN_SCALES)
    scales[A.format(1) + "matmul_av"] = [1 / 127, 0.02]
    return Plan(mapping, 0.0, 0.0, act_scales=scales)


def _reference_specs(plan):
    s = plan.act_scales
    return {0: {"qk": _static_mm("fp8", *s[A.format(0) + "matmul_qk"]), "av": _dynamic_mm("int8"),
                "k": lambda x: q_heads(x, "fp8", s[A.format(0) + "k_cache"]),
                "v": lambda x: q_heads(x, "fp8", s[A.format(0) + "v_cache"])},
            1: {"qk": _dynamic_mm("fp8"), "av": _static_mm("int8", *s[A.format(1) + "matmul_av"]),
                "k": lambda x: q_token(x, "int8"), "v": lambda x: q_token(x, "fp8")}}


def test_fake_applied_attention_equals_a_plain_torch_reference():
    model = tiny_llama(2)
    batch = _batch()
    with torch.no_grad():
        own = model(**batch).logits  # sdpa
        eager = _eager_logits(model, batch)
    plan = _plan()
    fake = mpq.apply(model, plan, mode="fake")
    with torch.no_grad():
        got = fake(**batch).logits
    want = reference_logits(model, batch, _reference_specs(plan))
    assert not torch.allclose(want, eager, rtol=1e-3, atol=1e-4)  # the quantization changes the logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # the same reference without quantization is eager attention's logits (sdpa's differ at the positions before
    # the first real token of a left-padded row, where every key is masked)
    np.testing.assert_allclose(reference_logits(model, batch, {}).numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)
    # the copy stays routed; the caller's model is untouched and runs its own attention
    assert fake.config._attn_implementation == "mpq_routed"
    assert type(fake.model.layers[0].self_attn.k_cache).__name__ == "FakeQuantKVCache"
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "matmul_qk") for layer in model.model.layers)
    with torch.no_grad():
        np.testing.assert_array_equal(model(**batch).logits.numpy(), own.numpy())
        np.testing.assert_array_equal(_eager_logits(model, batch).numpy(), eager.numpy())


def _eager_logits(model, batch):
    model.config._attn_implementation_internal = "eager"
    try:
        return model(**batch).logits
    finally:
        model.config._attn_implementation_internal = "sdpa"


def test_fake_applied_attention_generates_with_a_kv_cache():
    """Decoding token by token (the cache holds past K/V) gives the logits of one forward over the whole sequence:
    quantizing K/V where they leave the cache update is quantizing each token once. (Dynamic per-sample matmul
    scales see another tensor when decoding, so this plan has the static matmuls and the caches only.)"""
    model = tiny_llama(2)
    full = _plan()
    keep = {k: v for k, v in full.mapping.items() if v not in ("mm_fp8", "mm_int8")}
    fake = mpq.apply(model, Plan(keep, 0.0, 0.0, act_scales=full.act_scales), mode="fake")
    ids = _batch(2, 8)["input_ids"]
    with torch.no_grad():
        whole = fake(ids).logits
        cache = transformers.DynamicCache(config=model.config)
        steps = [fake(input_ids=ids[:, :5], cache=cache, use_cache=True).logits]
        for t in range(5, 8):
            steps.append(fake(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    np.testing.assert_allclose(torch.cat(steps, 1).numpy(), whole.numpy(), rtol=1e-4, atol=1e-5)


def test_fake_applied_attention_trains_straight_through():
    model = tiny_llama(1)
    plan = Plan({A.format(0) + "matmul_qk": "mm_fp8", A.format(0) + "k_cache": "kv_fp8_token"}, 0.0, 0.0)
    fake = mpq.apply(model, plan, mode="fake").train()
    ids = _batch(2, 8)["input_ids"]
    fake(ids, labels=ids).loss.backward()
    q = fake.model.layers[0].self_attn.q_proj.weight.grad
    assert q is not None and torch.isfinite(q).all() and q.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mapping, scales, match", [
    ({A.format(0) + "k_cache": "mm_fp8"}, {}, "attention's kv_cache: candidate 'mm_fp8' is for matmul layers"),
    ({A.format(0) + "matmul_qk": "kv_fp8_token"}, {}, "attention's matmul: candidate 'kv_fp8_token' is for kv_cache"),
    ({A.format(0) + "matmul_qk": "fp8"}, {}, "attention's matmul: candidate 'fp8' is for linear"),
    ({A.format(0) + "matmul_qk": "mm_fp8_static"}, {}, "has static scales; a Plan from select carries them"),
    ({A.format(0) + "matmul_qk": "mm_fp8_static"}, {A.format(0) + "matmul_qk": [0.1]},
     r"takes \[A's, B's\] \(one per input\) static scales, got 1"),
    ({A.format(0) + "matmul_qk": "mm_fp8_static"}, {A.format(0) + "matmul_qk": 0.1}, "takes a list of static scales"),
    ({A.format(0) + "k_cache": "kv_fp8_head"}, {A.format(0) + "k_cache": [0.1, 0.1, 0.1]},
     r"one per K/V head \(2\) static scales, got 3"),
    ({A.format(0) + "k_cache": "kv_fp8"}, {A.format(0) + "k_cache": [0.1, -1.0]}, r"\[the tensor's\] static scales"),
    ({A.format(0) + "k_cache": "kv_int8_head"}, {A.format(0) + "k_cache": [0.1, float("nan")]}, "positive finite"),
    ({A.format(3) + "k_cache": "kv_fp8_token"}, {}, "is not a module of the model"),
])
def test_bad_attention_entries_are_named(mapping, scales, match):
    model = tiny_llama(1)
    with pytest.raises(ValueError, match=match):
        mpq.apply(model, mapping, mode="fake", act_scales=scales)
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model.model.layers[0].self_attn, "matmul_qk")  # restored after the error too


def test_native_mode_refuses_attention_with_the_reason():
    model = tiny_llama(1)
    with pytest.raises(ValueError, match=r"k_cache'.*no native kernel in mpq.*mode='fake'"):
        mpq.apply(model, {A.format(0) + "k_cache": "kv_fp8_token"}, mode="native")
    qm = mpq.apply(model, {A.format(0) + "k_cache": "base", A.format(0) + "q_proj": "int8"}, mode="native")
    assert type(qm.model.layers[0].self_attn.q_proj).__name__ != "Linear"


def test_custom_attention_is_refused_with_the_reason():
    from test_attention import _CustomAttentionLM
    with pytest.raises(ValueError, match="no transformers config"):
        mpq.apply(_CustomAttentionLM(), {"matmul_qk": "mm_fp8"}, mode="fake")


def test_select_carries_calibrated_attention_scales_into_the_plan(tmp_path):
    model = tiny_llama(2)
    batch = _batch(4, 12)
    ids = batch["input_ids"]
    cands = ("fp8", "mm_fp8_static", "kv_fp8_head", "kv_int8_token")
    table = calib.calibrate(model, [batch], cands, progress=False)
    gains = mpq.profile(model, ids, candidates=cands, backend="memory")
    finite = table.mse[np.isfinite(table.mse)]
    plan = mpq.select(table, gains, max_loss_mse=float(finite.sum()))  # room for every layer: max gain
    cache = A.format(0) + "k_cache"
    assert plan.mapping[cache] == "kv_fp8_head"  # static per-head scales beat per-token ones on memory
    listed = table.info["attention_scales"]
    for layer, c in plan.quantized.items():
        if get_static(c) and layer in listed:
            assert plan.act_scales[layer] == listed[layer][c]
    assert isinstance(plan.act_scales[cache], list) and len(plan.act_scales[cache]) == 2
    front = mpq.pareto(table, gains, points=3)
    for p in front:
        for layer, c in p.quantized.items():
            if layer in listed and get_static(c):
                assert p.act_scales[layer] == listed[layer][c]
    # the plan applies: its attention runs the calibrated scales
    fake = mpq.apply(model, plan, mode="fake")
    assert fake.model.layers[0].self_attn.k_cache.scales == listed[cache]["kv_fp8_head"]
    with torch.no_grad():
        assert torch.isfinite(fake(**batch).logits).all()


def get_static(cname):
    from mpq.candidates import get_candidate
    return get_candidate(cname).act_static


def test_plan_json_round_trip_with_list_scales(tmp_path):
    import json
    plan = _plan()
    plan.save(tmp_path / "p.json")
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["version"] == 3 and d["act_scales"][A.format(0) + "k_cache"] == [0.005, 0.007]
    back = Plan.load(tmp_path / "p.json")
    assert back.act_scales == plan.act_scales and back.mapping == plan.mapping
    # numbers only: written as version 2, which older mpq reads
    linear = Plan({"a": "int8_static"}, 0.0, 0.0, act_scales={"a": 0.5})
    assert linear.to_dict()["version"] == 2 and Plan.from_dict(linear.to_dict()).act_scales == {"a": 0.5}
    # a version 2 file cannot hold lists; nor any version an empty list or a list of strings
    d["version"] = 2
    with pytest.raises(ValueError, match="lists of scales need version 3"):
        Plan.from_dict(d)
    for bad in ([], ["0.1"], [True]):
        d.update(version=3, act_scales={A.format(0) + "k_cache": bad})
        with pytest.raises(ValueError, match="non-empty list of numbers"):
            Plan.from_dict(d)
    d["act_scales"] = {A.format(0) + "k_cache": [0.1, -2.0]}
    with pytest.raises(ValueError, match="positive finite"):
        Plan.from_dict(d)
    assert Plan({"a": "kv_fp8_head"}, 0, 0, act_scales={"a": np.array([0.5, 0.25], np.float32)}).act_scales == \
        {"a": [0.5, 0.25]}


def test_memory_backend_counts_the_kv_cache_of_a_given_batch_and_context(tmp_path):
    model = tiny_llama(2)
    ids = _batch(2, 10)["input_ids"]
    cands = ("fp8", "kv_fp8_token", "kv_int8_head", "kv_fp8")
    B, S, H_kv, D = 8, 4096, 2, 8  # serving 8 sequences of 4096 tokens; 2 K/V heads of 8 values
    mem = mpq.profile(model, ids, candidates=cands, backend="memory", context=(B, S))
    j = {c: mem.candidates.index(c) for c in mem.candidates}
    elems = B * H_kv * S * D  # per cache (K or V) of one layer
    for layer in range(2):
        for cache in ("k_cache", "v_cache"):
            i = mem.layers.index(A.format(layer) + cache)
            assert mem.layer_bytes[i, j["base"]] == elems * 4  # fp32 model
            assert mem.layer_bytes[i, j["kv_fp8_token"]] == elems + 4 * B * H_kv * S  # a scale per token and head
            assert mem.layer_bytes[i, j["kv_int8_head"]] == elems + 4 * H_kv
            assert mem.layer_bytes[i, j["kv_fp8"]] == elems + 4
            assert mem.layer_gain[i, j["kv_fp8"]] == elems * 4 - (elems + 4)
    # Linear weights do not depend on the context; without it the example's batch and length count
    plain = mpq.profile(model, ids, candidates=cands, backend="memory")
    lin = [i for i, l in enumerate(mem.layers) if l.endswith("proj")]
    np.testing.assert_array_equal(mem.layer_bytes[lin], plain.layer_bytes[lin])
    i = plain.layers.index(A.format(0) + "k_cache")
    assert plain.layer_bytes[i, j["base"]] == 2 * H_kv * 10 * D * 4
    mem.save(tmp_path / "m.npz")
    from mpq.artifacts import GainTable
    assert GainTable.load(tmp_path / "m.npz").shapes["kv_context"] == [B, S]
    for bad in ((8,), (8, 0), (8, 2.5), "8x4096", (True, 4)):
        with pytest.raises(ValueError, match="context must be"):
            mpq.profile(model, ids, candidates=cands, backend="memory", context=bad)
