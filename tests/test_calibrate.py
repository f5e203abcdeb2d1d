"""mpq.calibrate on small models built here: δ against finite differences of the loss, batch invariance, padding,
bad inputs, and that the model comes back exactly as it was."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import mpq.calibration as calib
from mpq.models import model_inputs
from mpq.calibration.kernel import act_quant, weight_quant
from mpq.candidates import CANDIDATES
from mpq.artifacts import SensitivityTable

CANDS = ("fp8", "int8", "int8_static", "w8a16", "fp8_gaudi2")


pytestmark = pytest.mark.usefixtures("one_thread")


def ce_loss(out, batch):
    return nn.functional.cross_entropy(out, batch[1], reduction="none")


@pytest.fixture(scope="module")
def mlp_and_data():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 5))
    X = torch.randn(256, 16)
    y = (X[:, :5] * 2 + 0.3 * torch.randn(256, 5)).argmax(1)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        ce_loss(m(X), (X, y)).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    m.eval()
    return m, [(X[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]


def fd_delta(model, layer_name, cand, batches, loss_fn, static_scale=None, weight_only=False, eps=1e-4):
    """Per-sample d/dε ℓ_n(W + εΔW, X + εΔX) at ε = 0 by central differences in float64."""
    c = CANDIDATES[cand]
    m64 = copy.deepcopy(model).double()
    for norm in m64.modules():  # LlamaRMSNorm computes in float32 even in a float64 model: keep it in float64
        if type(norm).__name__.endswith("RMSNorm"):
            norm.forward = (lambda n: lambda h: n.weight * h * torch.rsqrt(
                h.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))(norm)
    mod = dict(m64.named_modules())[layer_name]
    w32 = dict(model.named_modules())[layer_name].weight.detach()
    dw = (weight_quant(c).apply(w32) - w32).double()
    w0 = mod.weight.detach().clone()
    state = {"eps": 0.0}

    def pre(module, args):
        x = args[0]
        if c.act_format is None or weight_only:
            return None
        x32 = x.float().reshape(-1, x.shape[-1])
        dx = (act_quant(c, static_scale).apply(x32) - x32).double().reshape(x.shape)
        return (x + state["eps"] * dx,)

    h = mod.register_forward_pre_hook(pre)
    out = []
    with torch.no_grad():
        for b in batches:
            b64 = _double(b)
            vals = []
            for e in (eps, -eps):
                state["eps"] = e
                mod.weight.copy_(w0 + e * dw)
                args, kwargs = model_inputs(b64)
                vals.append(loss_fn(m64(*args, **kwargs), b64).double())
            out.append((vals[0] - vals[1]) / (2 * eps))
    h.remove()
    return torch.cat(out).numpy()


def _double(b):
    if isinstance(b, dict):
        return {k: v for k, v in b.items()}
    if isinstance(b, (tuple, list)):
        return type(b)(v.double() if v.is_floating_point() else v for v in b)
    return b.double() if b.is_floating_point() else b


def test_delta_matches_finite_differences_mlp(mlp_and_data):
    m, batches = mlp_and_data
    table = calib.calibrate(m, batches, CANDS, loss_fn=ce_loss, progress=False)
    assert table.layers == ("0", "2", "4") and table.candidates == CANDS and table.n_samples == 32
    for li, layer in enumerate(table.layers):
        for ci, cand in enumerate(CANDS):
            scale = float(table.act_scales[li, ci]) if CANDIDATES[cand].act_static else None
            want = fd_delta(m, layer, cand, batches, ce_loss, scale)
            got = table.delta[:, li, ci]
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3 * np.abs(want).max() + 1e-12,
                                       err_msg=f"{layer}/{cand}")
            want_w = fd_delta(m, layer, cand, batches, ce_loss, scale, weight_only=True)
            np.testing.assert_allclose(table.delta_weight[:, li, ci], want_w, rtol=2e-3,
                                       atol=1e-3 * np.abs(want_w).max() + 1e-12)
    np.testing.assert_allclose(table.mse, np.mean(table.delta ** 2, axis=0))


def test_static_scales_from_calibration_data(mlp_and_data):
    m, batches = mlp_and_data
    table = calib.calibrate(m, batches, ("int8_static", "fp8_gaudi2", "int8"), loss_fn=ce_loss, progress=False)
    x = torch.cat([b[0] for b in batches])
    amax = x.abs().max()
    assert table.act_scales[0, 0] == pytest.approx(float(amax) / 127, rel=1e-6)
    assert table.act_scales[0, 1] in (2.0 ** -8, 2.0 ** -4, 1.0, 16.0)
    assert np.isnan(table.act_scales[0, 2])


def test_batch_of_four_equals_four_batches_of_one(mlp_and_data):
    m, batches = mlp_and_data
    four = calib.calibrate(m, batches[:1], CANDS, loss_fn=ce_loss, progress=False)
    ones = calib.calibrate(m, [(b[0][i:i + 1], b[1][i:i + 1]) for b in batches[:1] for i in range(8)], CANDS,
                           loss_fn=ce_loss, progress=False)
    np.testing.assert_allclose(four.delta, ones.delta, rtol=1e-4, atol=1e-5 * np.abs(four.delta).max())


def test_weights_never_get_grad_and_model_restored(mlp_and_data):
    m, batches = mlp_and_data
    m.train()
    m[2].eval()
    m[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calib.calibrate(m, batches, CANDS, loss_fn=ce_loss, progress=False)
    assert all(p.grad is None for p in m.parameters())
    assert m.training and not m[2].training and m[4].training
    assert not m[0].weight.requires_grad and m[0].bias.requires_grad and m[2].weight.requires_grad
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m[0].weight.requires_grad_(True)
    m.eval()


def test_layers_argument_and_inapplicable_candidate(mlp_and_data):
    m, batches = mlp_and_data
    t = calib.calibrate(m, batches, ("w4a16", "int8"), loss_fn=ce_loss, progress=False, layers=["2", "0"])
    assert t.layers == ("2", "0")
    assert np.isfinite(t.mse[0, 0]) and t.mse[1, 0] == np.inf  # 16 inputs: no group of 32
    assert not t.applicable[1, 0] and "n/a" in t.report()


@pytest.mark.parametrize("case", ["empty", "no_linear", "scalar_loss", "unknown", "nan_loss", "nan_grad",
                                  "bad_layer"])
def test_bad_input(mlp_and_data, case):
    m, batches = mlp_and_data
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kwargs = dict(model=m, batches=batches, candidates=("int8",), loss_fn=ce_loss, progress=False)
    if case == "empty":
        kwargs["batches"], match = iter([]), "empty"
    elif case == "no_linear":
        kwargs["model"], match = nn.Sequential(nn.ReLU()), "no quantizable layer"
    elif case == "scalar_loss":
        kwargs["loss_fn"], match = (lambda o, b: ce_loss(o, b).mean()), "scalar"
    elif case == "unknown":
        kwargs["candidates"], match = ("int7",), "unknown candidate"
    elif case == "nan_loss":
        kwargs["loss_fn"] = lambda o, b: ce_loss(o, b) + torch.where(torch.arange(len(b[1])) == 2, float("nan"), 0.0)
        match = "non-finite loss in batch 0, sample\\(s\\) \\[2\\]"
    elif case == "nan_grad":
        # sqrt'(0) = inf: the loss is finite, the gradient reaching the last layer is NaN (batch 1 only)
        state = {"n": 0}

        def nan_grad_loss(o, b):
            state["n"] += 1
            v = ce_loss(o, b)
            return v + torch.sqrt((o - o.detach()).abs().sum(1)) if state["n"] == 2 else v
        kwargs["loss_fn"], match = nan_grad_loss, "layer '4', batch 1"
    else:
        kwargs["layers"], match = ["1"], "not nn.Linear"
    with pytest.raises(ValueError, match=match):
        calib.calibrate(**kwargs)
    assert m.training and all(p.requires_grad and p.grad is None for p in m.parameters())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.eval()


def test_table_round_trip(mlp_and_data, tmp_path):
    m, batches = mlp_and_data
    t = calib.calibrate(m, batches, CANDS + ("w4a16",), loss_fn=ce_loss, progress=False)
    t.save(tmp_path / "t.npz")
    u = SensitivityTable.load(tmp_path / "t.npz")
    assert u.layers == t.layers and u.candidates == t.candidates and u.n_samples == t.n_samples
    assert u.data_fingerprint == t.data_fingerprint and len(t.data_fingerprint) == 64
    for name in ("delta", "delta_weight", "act_scales", "act_zero_points", "mse"):
        np.testing.assert_array_equal(getattr(u, name), getattr(t, name))
    assert u.info["model"] == "Sequential" and u.info["layer_shapes"] == [[64, 16], [64, 64], [5, 64]]
    plan = {"0": "int8", "2": "fp8", "4": "base"}
    assert u.predicted_mse(plan) == pytest.approx(t.mse[0, 1] + t.mse[1, 0])
    assert u.plan_mse_with_cross_terms(plan) >= 0
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        SensitivityTable.load(tmp_path / "bad.npz")
    assert calib.fingerprint(batches) == t.data_fingerprint
    assert calib.fingerprint(batches[:2]) != t.data_fingerprint


# --- a tiny Llama -----------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    # learnable data: arithmetic sequences mod the vocabulary
    starts = torch.randint(3, 96, (64, 1), generator=gen)
    steps = torch.randint(1, 4, (64, 1), generator=gen)
    ids = (starts + steps * torch.arange(16)) % 93 + 3
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for i in range(30):
        b = ids[(i * 8) % 64:(i * 8) % 64 + 8]
        opt.zero_grad()
        calib.causal_lm_loss(model(input_ids=b), {"input_ids": b}).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), ids


def test_llama_finite_differences_and_padding(tiny_llama):
    model, ids = tiny_llama
    batch = {"input_ids": ids[:4].clone(), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    batch["attention_mask"][1, 11:] = 0  # right padding of sample 1
    batch["input_ids"][1, 11:] = 2
    cands = ("fp8", "int8", "int8_static")
    table = calib.calibrate(model, [batch], cands, progress=False)
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    assert table.layers == tuple(names) and "lm_head" in names
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"):
        li = table.index(layer)
        for ci, cand in enumerate(cands):
            scale = float(table.act_scales[li, ci]) if CANDIDATES[cand].act_static else None
            want = fd_delta(model, layer, cand, [batch], calib.causal_lm_loss, scale)
            np.testing.assert_allclose(table.delta[:, li, ci], want, rtol=3e-3,
                                       atol=1e-3 * np.abs(want).max() + 1e-12, err_msg=f"{layer}/{cand}")
    # padding ignored: sample 1 alone, unpadded, gives the same δ (static scales come from the same tokens)
    alone = {"input_ids": batch["input_ids"][1:2, :11], "attention_mask": torch.ones(1, 11, dtype=torch.long)}
    rest = [{"input_ids": batch["input_ids"][i:i + 1], "attention_mask": torch.ones(1, 16, dtype=torch.long)}
            for i in (0, 2, 3)]
    single = calib.calibrate(model, [rest[0], alone] + rest[1:], cands, progress=False)
    np.testing.assert_allclose(single.delta[..., :2], table.delta[..., :2], rtol=1e-4,
                               atol=1e-5 * np.abs(table.delta).max())
    # static scales: float32 rounding of masked vs unmasked attention moves amax slightly, flipping a few roundings
    np.testing.assert_allclose(single.act_scales, table.act_scales, rtol=1e-5)
    np.testing.assert_allclose(single.delta[..., 2], table.delta[..., 2], rtol=1e-2,
                               atol=1e-3 * np.abs(table.delta).max())


def test_llama_labels_and_tensor_batches(tiny_llama):
    model, ids = tiny_llama
    a = calib.calibrate(model, [ids[:4]], ("int8",), progress=False)
    labels = ids[:4].clone()
    b = calib.calibrate(model, [{"input_ids": ids[:4], "labels": labels}], ("int8",), progress=False)
    np.testing.assert_allclose(a.delta, b.delta, rtol=1e-6)
    assert a.info["loss"] == "causal_lm_loss" and a.info["model"] == "LlamaForCausalLM"


def test_cli_calibrate_and_report(tiny_llama, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mpq.cli import main
    model, _ = tiny_llama
    words = [f"w{i}" for i in range(90)]
    vocab = {w: i for i, w in enumerate(["<s>", "</s>", "<pad>", "<unk>"] + words[:92])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")
    model.save_pretrained(tmp_path / "m")
    hf_tok.save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text(" ".join(words[(i * 7) % 90] for i in range(400)))
    out = tmp_path / "table.npz"
    assert main(["calibrate", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt"), "--candidates",
                 "int8,fp8", "--seq-len", "16", "--samples", "4", "--batch-size", "2", "-o", str(out),
                 "--report", "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "lm_head" in first and "int8" in first
    table = SensitivityTable.load(out)
    assert table.n_samples == 4 and table.candidates == ("int8", "fp8")
    assert main(["calibrate", "--table", str(out), "--report", "--top", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3
    assert main(["calibrate", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt"), "--candidates", "int7",
                 "--report"]) == 2
    assert "unknown candidate" in capsys.readouterr().err


def test_data_helpers():
    from mpq import data
    ids = torch.arange(100)
    w = data.token_windows(ids, 16, 4, start=10)
    assert w.shape == (4, 16) and w[0, 0] == 10 and w[3, 15] == 73
    with pytest.raises(ValueError, match="too few"):
        data.token_windows(ids, 16, 7)
    batches = data.lm_batches(w, 3)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 1]
    assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in batches)


def _word_tokenizer(adds_bos: bool):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors
    vocab = {"<bos>": 0, "<unk>": 1, "a": 2, "b": 3}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:  # as Gemma's tokenizer: <bos> before every text unless add_special_tokens=False
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", unk_token="<unk>")


def test_windows_start_with_the_tokens_the_tokenizer_puts_before_every_text():
    """Gemma's tokenizer puts <bos> before a text (and the model is another model without it): windows cut from a
    token stream start with it and the stream fills the rest; a tokenizer that adds nothing gets plain windows."""
    from mpq import data
    assert data.leading_tokens(_word_tokenizer(adds_bos=True)) == [0]
    assert data.leading_tokens(_word_tokenizer(adds_bos=False)) == []
    ids = torch.arange(10, 110)
    w = data.spread_windows(ids, 16, 4, prefix=[0])
    assert w.shape == (4, 16) and w[:, 0].tolist() == [0] * 4
    bodies = w[:, 1:]
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 15)) for r in bodies)  # contiguous text after it
    assert bodies[0, 0] == 10 and bodies[-1, 0] == 10 + (100 // 15 - 1) * 15           # first and last slot
    assert torch.equal(data.spread_windows(ids, 16, 4), data.spread_windows(ids, 16, 4, prefix=()))
    t = data.token_windows(ids, 8, 3, start=5, prefix=[0])
    assert t[:, 0].tolist() == [0] * 3 and torch.equal(t[:, 1:].reshape(-1), torch.arange(15, 36))
    with pytest.raises(ValueError, match="no text after"):
        data.spread_windows(ids, 1, 4, prefix=[0])
    with pytest.raises(ValueError, match="too few"):
        data.token_windows(ids, 8, 15, prefix=[0])


@pytest.mark.parametrize("total,seq_len,n", [(100, 16, 4), (100, 16, 6), (1000, 7, 13), (50, 50, 1), (64, 8, 8)])
def test_spread_windows_cover_the_whole_stream_without_overlap(total, seq_len, n):
    from mpq import data
    ids = torch.arange(total)
    w = data.spread_windows(ids, seq_len, n)
    starts = w[:, 0].tolist()
    assert w.shape == (n, seq_len) and starts[0] == 0
    assert all(torch.equal(row, torch.arange(s, s + seq_len)) for row, s in zip(w, starts))  # contiguous windows
    assert all(b - a >= seq_len for a, b in zip(starts, starts[1:]))                          # none overlaps
    if n > 1:  # the last window lies in the last seq_len-aligned slot: the end of the text is sampled too
        assert starts[-1] == (total // seq_len - 1) * seq_len
    with pytest.raises(ValueError, match="too few"):
        data.spread_windows(ids, seq_len, total // seq_len + 1)


@pytest.mark.parametrize("n,held", [(24, 8), (24, 0), (24, 1), (24, 23), (9, 4), (10, 7)])
def test_held_out_windows_are_spread_among_the_kept_ones_and_never_shared(n, held):
    from mpq import data
    windows = torch.arange(n * 3).reshape(n, 3)
    kept, out = data.split_spread(windows, held)
    rows = lambda t: {tuple(r) for r in t.tolist()}
    assert len(kept) == n - held and len(out) == held and not rows(kept) & rows(out)
    assert rows(kept) | rows(out) == rows(windows)
    if held:  # every n/held slice of the windows gives one
        idx = [r[0] // 3 for r in out.tolist()]
        assert all(i * n // held <= j < (i + 1) * n // held + 1 for i, j in enumerate(idx))
    with pytest.raises(ValueError, match="keep at least one"):
        data.split_spread(windows, n)


def test_layers_given_as_a_string_or_twice_are_refused():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    batches = [(torch.randn(2, 8), torch.randint(0, 8, (2,)))]
    with pytest.raises(ValueError, match="not the string '02'"):
        calib.calibrate(m, batches, ("int8",), loss_fn=ce_loss, layers="02", progress=False)
    with pytest.raises(ValueError, match=r"layers names \['0'\] more than once"):
        calib.calibrate(m, batches, ("int8",), loss_fn=ce_loss, layers=["0", "0"], progress=False)


@pytest.mark.parametrize("case", ["no_grad", "detached", "constant", "all_ignored", "one_token"])
def test_losses_without_gradient_are_refused_not_a_table_of_zeros(case):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20))
    ids = torch.randint(0, 20, (2, 1 if case == "one_token" else 6))

    def lm_loss(out, batch):
        logits = out[:, :-1]
        tgt = batch[:, 1:] if case != "all_ignored" else torch.full_like(batch[:, 1:], -100)
        ce = nn.functional.cross_entropy(logits.reshape(-1, 20), tgt.reshape(-1), ignore_index=-100,
                                         reduction="none").view(tgt.shape)
        loss = ce.sum(1) / (tgt != -100).sum(1).clamp(min=1)
        if case == "detached":
            return loss.detach()
        if case == "constant":
            return torch.zeros(2)
        if case == "no_grad":
            with torch.no_grad():
                return loss * 1.0
        return loss
    with pytest.raises(ValueError, match="carry no gradient|every first-order loss change δ is zero"):
        calib.calibrate(m, [(ids,)], ("int8",), loss_fn=lambda out, b: lm_loss(out, b[0]), progress=False)


def test_a_batch_without_samples_is_named():
    m = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"a batch holds no sample \(its first tensor has shape \(0, 8\)\)"):
        calib.calibrate(m, [(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))], ("int8",), loss_fn=ce_loss,
                        progress=False)
