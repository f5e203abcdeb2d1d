"""The extra score forms (``calibrate(..., scores=...)``) of attention's matmuls and KV cache against brute force:
one backward per sample through the routed model, the inputs, the output and their gradients captured, the
candidates' deployment quantizers (``quantize_attention_input``) applied to the inputs, everything in float64."""
import numpy as np
import pytest
import torch

import mpq.calibration as calib
from mpq.attention import KVCache, MatMul, routed_attention
from mpq.attention.quantize import quantize_attention_input
from mpq.candidates import CANDIDATES
from mpq.models import model_inputs
from _tiny_models import padded_lm_batch, tiny_gemma3, tiny_llama

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

CANDS = ("fp8", "mm_fp8", "mm_int8", "mm_fp8_static", "kv_fp8_token", "kv_int8_token", "kv_fp8", "kv_int8_head")
FORMS = ("first_order", "per_token", "elementwise")


def brute_force(model, batch, table):
    """{form: [N, L, C]} for the routed attention layers of ``table`` (NaN elsewhere), and δ."""
    B = batch["input_ids"].shape[0]
    layers = [n for n in table.layers if "self_attn." in n and n.rsplit(".", 1)[1] in
              ("matmul_qk", "matmul_av", "k_cache", "v_cache")]
    out = {f: np.full((B,) + table.delta.shape[1:], np.nan) for f in ("per_token", "elementwise", "delta")}
    with routed_attention(model):
        mods = dict(model.named_modules())
        seen = {}

        def hook(name):
            def h(mod, args, y):
                for a in args:
                    a.retain_grad()
                y.retain_grad()
                seen[name] = (args, y)
            return h

        def pre(mod, args):  # inputs as leaves of their own, so that their gradients are kept
            return tuple(a.detach().requires_grad_(True) if not a.requires_grad else a.view_as(a) for a in args)
        handles = [mods[n].register_forward_pre_hook(pre) for n in layers]
        handles += [mods[n].register_forward_hook(hook(n)) for n in layers]
        grads = {}
        try:
            for n in range(B):
                args, kwargs = model_inputs(batch)
                calib.causal_lm_loss(model(*args, **kwargs), batch)[n].backward()
                for name in layers:
                    ins, y = seen[name]
                    grads.setdefault(name, []).append(([a.grad[n].double() for a in ins], y.grad[n].double()))
                    xs = [a.detach() for a in ins]
                    seen[name] = (xs, None)
        finally:
            for h in handles:
                h.remove()
        for name in layers:
            li = table.index(name)
            mod = mods[name]
            xs = seen[name][0]
            for ci, cand in enumerate(table.candidates):
                c = CANDIDATES[cand]
                if mod.kind not in c.kinds:
                    continue
                scales = table.info["attention_scales"][name][cand] if c.act_static else None
                qs = []
                for k, x in enumerate(xs):
                    sc = None if scales is None else scales[k:k + 1] if isinstance(mod, MatMul) else scales
                    qs.append(quantize_attention_input(c, x.float(), sc).double())
                x64 = [x.double() for x in xs]
                for n in range(B):
                    g_in, g_y = grads[name][n]
                    per_tok = 0
                    for k in range(len(xs)):
                        axis = mod.token_axes[k] - 1  # one sample: the batch axis is gone
                        e = (g_in[k] * (qs[k][n] - x64[k][n])).movedim(axis, 0)
                        per_tok = per_tok + e.reshape(e.shape[0], -1).sum(-1)
                    out["per_token"][n, li, ci] = float(per_tok.square().sum())
                    out["delta"][n, li, ci] = float(per_tok.sum())
                    if isinstance(mod, KVCache):
                        dy = qs[0][n] - x64[0][n]
                    else:
                        dy = qs[0][n] @ qs[1][n] - x64[0][n] @ x64[1][n]
                    out["elementwise"][n, li, ci] = float((g_y * dy).square().sum())
    return out


@pytest.mark.parametrize("build", [lambda: tiny_llama(2), lambda: tiny_gemma3()], ids=["llama_gqa", "gemma3"])
def test_attention_score_forms_match_brute_force(build):
    model = build()
    batch = padded_lm_batch()
    table = calib.calibrate(model, [batch], CANDS, progress=False, scores=FORMS)
    want = brute_force(model, batch, table)
    ok = ~np.isnan(want["delta"])
    assert ok.sum() >= 2 * 4 * 3  # every routed module of both blocks, with its candidates
    np.testing.assert_allclose(table.delta[ok], want["delta"][ok], rtol=3e-3,
                               atol=1e-3 * np.abs(want["delta"][ok]).max())
    for f in ("per_token", "elementwise"):
        got = table.scores[f]
        assert (want[f][ok] > 0).mean() > 0.9, f  # the check is not over zeros
        np.testing.assert_allclose(got[ok], want[f][ok], rtol=3e-3, atol=1e-4 * want[f][ok].max(), err_msg=f)
        # a candidate that does not apply to a layer's kind has no score, not a zero
        assert np.isnan(got[:, table.index("model.layers.0.self_attn.k_cache"), CANDS.index("mm_fp8")]).all()
    # the per-token split differs from δ² (the cross-token products are dropped): the check tells them apart
    assert not np.allclose(table.scores["per_token"][ok], (table.delta ** 2)[ok], rtol=1e-2)

