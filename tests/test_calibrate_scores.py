"""The extra score forms of ``calibrate(..., scores=...)`` against brute force: per-sample output gradients from
one backward per sample and ΔY from the candidates' own quantizers applied to each Linear, all in float64; the
table's handling of the forms (units, files, select)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpq.calibration as calib
from mpq.artifacts import SensitivityTable
from mpq.candidates import CANDIDATES

transformers = pytest.importorskip("transformers")
CANDS = ("int8", "int8_static", "w8a16", "fp8", "w4a16", "w4a16_g64", "w8a16_gptq")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama_and_batches():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (5, 12), generator=gen)
    mask = torch.ones(5, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding of one sample
    ids[1, 9:] = 2
    batches = [{"input_ids": ids[:3], "attention_mask": mask[:3]}, {"input_ids": ids[3:], "attention_mask": mask[3:]}]
    table = calib.calibrate(model, batches, CANDS, progress=False, scores=("first_order", "per_token", "elementwise"))
    return model, batches, table


def brute_force(model, batches, table):
    """{form: [N, L, C]}: for every sample its own backward (G_n = ∂ℓ_n/∂Y of each Linear), then per layer and
    candidate ΔW = Q(W) − W, ΔX = Q(X) − X (Candidate.quantize_*; X of the whole batch, as deployed), in float64:
    per_token Σ_t (Σ_o G ⊙ (X ΔWᵀ + ΔX Wᵀ))², elementwise Σ (G ⊙ (Q(X) Q(W)ᵀ − X Wᵀ))², and δ = their first-order
    sum."""
    mods = dict(model.named_modules())
    rows = {f: [] for f in ("per_token", "elementwise", "delta")}
    for batch in batches:
        B = batch["input_ids"].shape[0]
        xs, ys = {}, {}

        def hook(name):
            def h(mod, args, out):
                xs[name] = args[0].detach()
                out.retain_grad()
                ys[name] = out
            return h
        handles = [mods[n].register_forward_hook(hook(n)) for n in table.layers]
        grads = {}
        try:
            for n in range(B):  # one backward per sample: no reliance on samples being independent in the batch
                model.zero_grad(set_to_none=True)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                calib.causal_lm_loss(out, batch)[n].backward()
                for name in table.layers:
                    grads.setdefault(name, torch.zeros_like(ys[name], dtype=torch.float64))[n] = \
                        ys[name].grad[n].double()
        finally:
            for h in handles:
                h.remove()
        vals = {f: np.zeros((B, len(table.layers), len(CANDS))) for f in rows}
        for li, name in enumerate(table.layers):
            w = mods[name].weight.detach()
            x = xs[name]
            g = grads[name]
            for ci, cname in enumerate(CANDS):
                c = CANDIDATES[cname]
                if not c.applies_to(w):
                    vals["per_token"][:, li, ci] = vals["elementwise"][:, li, ci] = np.nan
                    vals["delta"][:, li, ci] = np.nan
                    continue
                s = float(table.act_scales[li, ci]) if c.act_static else None
                if c.calibrated_weight:  # the deployed weight: GPTQ's stored integers
                    qw, qx = table.quantized_weights[name, cname].effective_weight().double(), x.double()
                else:
                    qw, qx = c.quantize_weight(w).double(), c.quantize_act(x, s).double()
                x64, w64 = x.double(), w.double()
                dy = F.linear(qx, qw) - F.linear(x64, w64)
                d1 = F.linear(x64, qw - w64) + F.linear(qx - x64, w64)
                per_tok = (g * d1).sum(-1)
                vals["per_token"][:, li, ci] = per_tok.square().sum(-1).numpy()
                vals["elementwise"][:, li, ci] = (g * dy).square().sum((1, 2)).numpy()
                vals["delta"][:, li, ci] = per_tok.sum(-1).numpy()
        for f in rows:
            rows[f].append(vals[f])
    model.zero_grad(set_to_none=True)
    return {f: np.concatenate(v) for f, v in rows.items()}


def test_per_token_and_elementwise_match_brute_force(llama_and_batches):
    model, batches, table = llama_and_batches
    want = brute_force(model, batches, table)
    assert table.score_forms == ("first_order", "per_token", "elementwise") and table.n_samples == 5
    for f in ("per_token", "elementwise"):
        got = table.scores[f]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want[f]))
        ok = ~np.isnan(got)
        assert (want[f][ok] > 0).mean() > 0.9  # the check is not over zeros
        np.testing.assert_allclose(got[ok], want[f][ok], rtol=2e-3, atol=1e-4 * np.nanmax(want[f]), err_msg=f)
    # the per-token split sums to the first-order δ the table already holds
    ok = ~np.isnan(table.delta)
    np.testing.assert_allclose(table.delta[ok], want["delta"][ok], rtol=2e-3, atol=1e-4 * np.nanmax(np.abs(
        want["delta"])))


def test_one_token_samples_make_per_token_the_first_order_form():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    X = torch.randn(12, 8)
    y = torch.randint(0, 4, (12,))

    def ce(out, b):
        return F.cross_entropy(out, b[1], reduction="none")
    t = calib.calibrate(m, [(X[:6], y[:6]), (X[6:], y[6:])], ("int8", "fp8"), loss_fn=ce, progress=False,
                        scores=("per_token",))
    assert t.score == "per_token" and t.score_scale == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(t.scores["per_token"], t.delta ** 2, rtol=1e-4, atol=1e-12)


def test_default_pass_keeps_no_extra_form_and_the_table_units(llama_and_batches):
    model, batches, table = llama_and_batches
    plain = calib.calibrate(model, batches, CANDS, progress=False)
    assert plain.scores == {} and plain.score == "first_order" and plain.score_forms == ("first_order",)
    np.testing.assert_allclose(plain.delta, table.delta, equal_nan=True, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(table.mse, plain.mse, rtol=1e-6)  # the first form named is the one reported
    e = table.with_score("elementwise")
    fo, q = np.nanmean(table.delta ** 2, 0), np.nanmean(table.scores["elementwise"], 0)
    good = np.isfinite(fo / q) & (fo > 0) & (q > 0)
    assert e.score_scale == pytest.approx(float(np.median((fo / q)[good])))
    np.testing.assert_allclose(e.mse[table.applicable], (e.score_scale * q)[table.applicable], rtol=1e-12)
    plan = {"model.layers.0.mlp.down_proj": "int8", "lm_head": "fp8"}
    li = [table.index(n) for n in plan]
    ci = [CANDS.index(c) for c in plan.values()]
    per = e.score_scale * table.scores["elementwise"][:, li, ci].sum(1)
    assert e.predicted_mse(plan) == pytest.approx(per.mean())
    assert e.predicted_mse_stderr(plan) == pytest.approx(per.std(ddof=1) / np.sqrt(len(per)))


def test_forms_survive_the_file(llama_and_batches, tmp_path):
    _, _, table = llama_and_batches
    e = table.with_score("per_token")
    e.save(tmp_path / "t.npz")
    u = SensitivityTable.load(tmp_path / "t.npz")
    assert u.score == "per_token" and u.score_forms == table.score_forms
    for f in ("per_token", "elementwise"):
        np.testing.assert_array_equal(u.scores[f], table.scores[f])
    np.testing.assert_array_equal(u.mse, e.mse)
    assert "active_score" not in u.info
    table.save(tmp_path / "fo.npz")
    assert SensitivityTable.load(tmp_path / "fo.npz").score == "first_order"


def test_select_optimises_the_chosen_form_exactly(llama_and_batches):
    """The least-loss plan saving at least a given gain, by each form, equals the brute-force best over every
    assignment of the form's costs."""
    import itertools

    from mpq.profiling import profile
    from mpq.selection import select
    model, batches, table = llama_and_batches
    layers = ["model.layers.0.mlp.down_proj", "lm_head", "model.layers.0.self_attn.o_proj"]
    cands = ("int8", "w4a16")
    gains = profile(model, {"input_ids": batches[0]["input_ids"][:1]}, cands, backend="memory")
    sub = table.layers
    for form in table.score_forms:
        t = table.with_score(form)
        need = 0.5 * sum(float(sg.gain.max()) for sg in gains.subgraphs)
        plan = select(t, gains, min_gain=need, keep=[n for n in sub if n not in layers], score=form)
        best = None
        for combo in itertools.product(("base",) + cands, repeat=len(layers)):
            m = dict(zip(layers, combo))
            if gains.predict(m) >= need - 1e-9:
                cost = t.predicted_mse(m)
                best = cost if best is None else min(best, cost)
        assert plan.predicted_loss_mse == pytest.approx(best, rel=1e-9, abs=1e-18), form
        assert (plan.objective.get("score") == form) == (form != "first_order")


@pytest.mark.parametrize("scores, msg", [(("fisher",), "unknown score"), ((), "empty"),
                                         (("per_token", "per_token"), "twice")])
def test_bad_score_names(llama_and_batches, scores, msg):
    model, batches, table = llama_and_batches
    with pytest.raises(ValueError, match=msg):
        calib.calibrate(model, batches, ("int8",), progress=False, scores=scores)
    plain = SensitivityTable(table.layers, table.candidates, table.delta, table.delta_weight, table.act_scales,
                             table.act_zero_points)
    with pytest.raises(ValueError, match="was not calibrated"):
        plain.with_score("elementwise")
    with pytest.raises(ValueError, match="unknown score"):
        table.with_score("fisher")


def test_cli_calibrate_and_select_take_the_score(tmp_path, capsys):
    from _cli_model import DEMO_TEXT, save_tiny_causal_lm
    from mpq.cli import main
    lm = save_tiny_causal_lm(tmp_path / "m")
    (tmp_path / "t.txt").write_text(DEMO_TEXT.read_text(encoding="utf-8")[-20000:], encoding="utf-8")
    out = tmp_path / "table.npz"
    common = ["calibrate", str(lm), "--text", str(tmp_path / "t.txt"), "--candidates", "int8",
              "--seq-len", "16", "--samples", "4", "--batch-size", "2", "--quiet"]
    assert main(common + ["--score", "elementwise", "-o", str(out)]) == 0
    t = SensitivityTable.load(out)
    assert t.score == "elementwise" and t.score_forms == ("first_order", "elementwise")
    gains = tmp_path / "gains.npz"
    assert main(["profile", str(lm), "--random", "--seq-len", "16", "--candidates", "int8", "--backend", "memory",
                 "-o", str(gains)]) == 0
    capsys.readouterr()
    assert main(["select", str(out), str(gains), "--min-gain", "1000", "--score", "first_order",
                 "-o", str(tmp_path / "p.json")]) == 0
    assert main(["select", str(out), str(gains), "--min-gain", "1000", "--score", "per_token",
                 "-o", str(tmp_path / "p.json")]) == 2
    assert "was not calibrated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's one-line refusal
        main(common + ["--score", "fisher", "--report"])
    assert e.value.code == 2 and "invalid choice: 'fisher'" in capsys.readouterr().err
