"""MoE experts as quantizable layers: tiny Qwen3-MoE and Mixtral built from configs. The routed forward against the
model's own, δ of expert entries against finite differences of the loss (the model's own forward with the stacked
weight slice perturbed, and the routed forward with the expert's input perturbed as the candidate quantizes it),
experts without calibration tokens and expert modules of unknown layout reported."""
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_moe import tiny_gpt_oss, tiny_jetmoe, tiny_mixtral, tiny_qwen3_moe  # noqa: E402

import mpq  # noqa: E402
import mpq.calibration as calib  # noqa: E402
from mpq.calibration.kernel import act_quant, weight_quant  # noqa: E402
from mpq.candidates import CANDIDATES  # noqa: E402
from mpq.experts import RoutedExperts, routed_experts  # noqa: E402
from mpq.models import model_inputs  # noqa: E402

EXPERTS = "model.layers.0.mlp.experts"
MODELS = pytest.mark.parametrize("build", [tiny_qwen3_moe, tiny_mixtral, tiny_gpt_oss],
                                 ids=["qwen3_moe", "mixtral", "gpt_oss"])


pytestmark = pytest.mark.usefixtures("one_thread")


def padded_batch(seed=1, B=3, S=9):
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(3, 64, (B, S), generator=g),
             "attention_mask": torch.ones(B, S, dtype=torch.long)}
    batch["attention_mask"][1, 6:] = 0  # right padding of sample 1
    batch["input_ids"][1, 6:] = 2
    return batch


def float64_reference(model):
    """A float64 copy computing the experts by the model's own eager loop and RMSNorm in float64."""
    m64 = copy.deepcopy(model).double()
    m64.config._experts_implementation = "eager"
    for norm in m64.modules():
        if type(norm).__name__.endswith("RMSNorm"):
            norm.forward = (lambda n: lambda h: n.weight * h * torch.rsqrt(
                h.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))(norm)
    return m64


def expert_weight(model, expert, gemm):
    """Expert e's weight of one GEMM as [out, in], read from the model's own stacked parameter."""
    w = dict(model.named_parameters())[f"{EXPERTS}.{gemm}"].detach()[expert]
    return w.t() if model.get_submodule(EXPERTS).is_transposed else w


def central(fn, eps):
    with torch.no_grad():
        return ((fn(eps) - fn(-eps)) / (2 * eps)).numpy()


def fd_stacked_weight(model, batch, expert, gemm, cand, eps=1e-4):
    """d/dε ℓ_n with the model's own stacked weight slice W[e] moved by ε·(Q(W[e]) − W[e]) (no mpq module)."""
    m64 = float64_reference(model)
    param = dict(m64.named_parameters())[f"{EXPERTS}.{gemm}"]
    w = expert_weight(model, expert, gemm)
    dw = (weight_quant(CANDIDATES[cand]).apply(w) - w).double()
    dw = dw.t() if model.get_submodule(EXPERTS).is_transposed else dw  # back to the stacked layout
    w0 = param.detach().clone()

    def loss(e):
        param.data.copy_(w0)
        param.data[expert] += e * dw
        args, kwargs = model_inputs(batch)
        return calib.causal_lm_loss(m64(*args, **kwargs), batch).double()
    return central(loss, eps)


def fd_routed(model, batch, entry, cand, static_scale=None, eps=1e-4):
    """d/dε ℓ_n through the routed forward in float64: the expert GEMM's weight and its input moved by
    ε·(Q − id), Q of the input over the rows the expert receives in the call."""
    c = CANDIDATES[cand]
    m64 = float64_reference(model)
    with routed_experts(m64):
        lin = dict(m64.named_modules())[entry]
        w32 = expert_weight(model, int(entry.split('.')[-2]), entry.rsplit('.', 1)[1])
        dw = (weight_quant(c).apply(w32) - w32).double()
        w0 = lin.weight.detach().clone()
        state = {"eps": 0.0}

        def pre(module, args):
            if c.act_format is None:
                return None
            x32 = args[0].float()
            return (args[0] + state["eps"] * (act_quant(c, static_scale).apply(x32) - x32).double(),)

        h = lin.register_forward_pre_hook(pre)

        def loss(e):
            state["eps"] = e
            lin.weight.data.copy_(w0 + e * dw)
            args, kwargs = model_inputs(batch)
            return calib.causal_lm_loss(m64(*args, **kwargs), batch).double()
        try:
            return central(loss, eps)
        finally:
            h.remove()


def close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=3e-3, atol=1e-3 * np.abs(want).max() + 1e-12, err_msg=what)


@MODELS
def test_routed_forward_is_the_models_own_and_is_put_back(build):
    model = build(layers=2)
    ids = padded_batch()["input_ids"]
    original = dict(model.named_modules())
    with torch.no_grad():
        want = model(ids).logits
        with routed_experts(model):
            assert isinstance(model.get_submodule(EXPERTS), RoutedExperts)
            got = model(ids).logits
        again = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, want)
    assert all(original[n] is m for n, m in model.named_modules())


@MODELS
def test_expert_delta_matches_finite_differences(build):
    model = build(layers=1)
    batch = padded_batch()
    cands = ("fp8", "int8", "int8_static", "w8a16")
    table = calib.calibrate(model, [batch], cands, progress=False)
    entries = [f"{EXPERTS}.{e}.{g}" for e in range(4) for g in ("gate_up_proj", "down_proj")]
    assert [l for l in table.layers if ".experts." in l] == entries
    tokens = table.info["experts"]["tokens"]
    assert sum(tokens.values()) == 2 * 2 * int(batch["attention_mask"].sum())  # top-2, both GEMMs, no padding
    for e, gemm in ((0, "gate_up_proj"), (3, "down_proj")):
        entry = f"{EXPERTS}.{e}.{gemm}"
        li = table.index(entry)
        assert tokens[entry] > 0
        # weight-only: the model's own forward with its stacked weight slice perturbed
        close(table.delta[:, li, cands.index("w8a16")], fd_stacked_weight(model, batch, e, gemm, "w8a16"),
              f"{entry}/w8a16 vs stacked weight")
        close(table.delta_weight[:, li, cands.index("int8")], fd_stacked_weight(model, batch, e, gemm, "int8"),
              f"{entry}/int8 weight term vs stacked weight")
        for ci, cand in enumerate(cands):
            scale = float(table.act_scales[li, ci]) if CANDIDATES[cand].act_static else None
            close(table.delta[:, li, ci], fd_routed(model, batch, entry, cand, scale), f"{entry}/{cand}")


def test_model_comes_back_and_weights_get_no_grad():
    model = tiny_qwen3_moe()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    calib.calibrate(model, [padded_batch()], ("int8",), progress=False)
    assert all(modules[n] is m for n, m in model.named_modules()) and len(modules) == len(dict(model.named_modules()))
    for n, p in model.named_parameters():
        assert p.grad is None and p.requires_grad and torch.equal(p, before[n]), n


def test_experts_without_calibration_tokens_are_reported():
    model = tiny_qwen3_moe(experts=8, top_k=1)
    with torch.no_grad():  # the router sends every token to expert 5
        model.model.layers[0].mlp.gate.weight.zero_()
        model.model.layers[0].mlp.gate.weight[5] = 1.0
        model.model.embed_tokens.weight.abs_()
    with pytest.warns(UserWarning, match="14 expert GEMM\\(s\\) received no calibration token"):
        table = calib.calibrate(model, [padded_batch()], ("int8",), progress=False)
    unrouted = table.info["unrouted_experts"]
    assert f"{EXPERTS}.5.gate_up_proj" not in unrouted and len(unrouted) == 14
    assert all(table.info["experts"]["tokens"][n] == 0 for n in unrouted)
    assert not set(unrouted) & set(table.info.get("zero_delta_layers", []))


def test_unknown_expert_layout_is_listed_not_guessed():
    model = tiny_jetmoe()
    # JetMoE's routers are Linears over the flattened [B·S, H] tokens, which calibrate refuses (batch-first only)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "router" not in n]
    with pytest.warns(UserWarning) as caught:
        table = calib.calibrate(model, [padded_batch()], ("int8",), progress=False, layers=linears)
    # one warning names each unknown experts module (coverage's), not one per step
    said = [str(w.message) for w in caught if "input_linear" in str(w.message)]
    assert len(said) == 1 and "JetMoeParallelExperts" in said[0] and "not covered" in said[0], said
    not_covered = table.info["experts_not_covered"]
    assert "model.layers.0.mlp.input_linear" in not_covered and "JetMoeParallelExperts" in \
        not_covered["model.layers.0.mlp.input_linear"]
    assert not any(l.startswith(tuple(not_covered)) for l in table.layers)
    assert "experts" not in table.info  # nothing of it was taken as an expert entry


def test_apply_fake_quantizes_the_experts_slice_and_leaves_the_rest():
    model = tiny_qwen3_moe()
    ids = padded_batch()["input_ids"]
    mapping = {f"{EXPERTS}.2.gate_up_proj": "w8a16", f"{EXPERTS}.1.down_proj": "w8a16"}
    q = mpq.apply(model, mapping)
    ref = copy.deepcopy(model)  # the model's own experts with the two slices replaced by Q(W[e])
    with torch.no_grad():
        for entry in mapping:
            e, gemm = int(entry.split(".")[-2]), entry.rsplit(".", 1)[1]
            p = dict(ref.named_parameters())[f"{EXPERTS}.{gemm}"]
            p[e] = CANDIDATES["w8a16"].quantize_weight(p[e])
        got, want, orig = q(ids).logits, ref(ids).logits, model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - orig).abs().max() > 1e-4  # the quantization shows
    assert not isinstance(model.get_submodule(EXPERTS), RoutedExperts)  # the input model is untouched
    with torch.no_grad():  # nothing quantized: the model's own logits
        base = mpq.apply(model, {f"{EXPERTS}.0.gate_up_proj": "base"})(ids).logits
    torch.testing.assert_close(base, orig, rtol=1e-5, atol=1e-6)


def test_apply_native_runs_the_expert_gemm_with_the_cpu_int8_kernel():
    from mpq.application.cpu_kernels import implementations
    if not implementations("int8"):
        pytest.skip("no native CPU int8 kernel here")
    model = tiny_qwen3_moe()
    ids = padded_batch()["input_ids"]
    mapping = {f"{EXPERTS}.{e}.{g}": "int8" for e in range(4) for g in ("gate_up_proj", "down_proj")}
    native, fake = mpq.apply(model, mapping, mode="native"), mpq.apply(model, mapping, mode="fake")
    assert type(native.get_submodule(f"{EXPERTS}.3.down_proj")).__name__ != "FakeQuantLinear"
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, fake(ids).logits, rtol=1e-4, atol=1e-5)


def test_partition_ties_the_experts_of_a_module_by_default():
    model = tiny_qwen3_moe(layers=2)
    ids = padded_batch()["input_ids"]
    entries = [f"model.layers.1.mlp.experts.{e}.{g}" for e in range(4) for g in ("gate_up_proj", "down_proj")]
    tied = {sg.name: sg for sg in mpq.partition(model, ids)}
    sg = next(s for s in tied.values() if entries[0] in s.layers)
    assert sg.method == "export" and set(sg.layers) == set(entries) and sg.ties == (tuple(entries),)
    free = next(s for s in mpq.partition(model, ids, experts="per_expert") if entries[0] in s.layers)
    assert free.ties == () and len(free.groups) == 8
    with pytest.raises(ValueError, match="experts must be one of"):
        mpq.partition(model, ids, experts="per_layer")


def test_memory_counts_every_expert_macs_only_the_routed_tokens():
    from mpq.profiling.backends import get_backend
    model = tiny_qwen3_moe(experts=8, top_k=2)
    ids = padded_batch()["input_ids"]
    mem = mpq.profile(model, ids, candidates=("int8",), backend="memory")
    macs = mpq.profile(model, ids, candidates=("int8",), backend="macs")
    entries = [f"{EXPERTS}.{e}.{g}" for e in range(8) for g in ("gate_up_proj", "down_proj")]
    shapes = mem.shapes["layers"]
    # every token goes to 2 of the 8 experts: the up GEMMs together see 2·B·S rows (measured on the example)
    assert sum(shapes[f"{EXPERTS}.{e}.gate_up_proj"][0] for e in range(8)) == 2 * ids.numel()
    sg = next(s for s in mem.subgraphs if entries[0] in s.layers)
    memory = get_backend("memory")
    want = sum(memory.layer_cost(shapes[l], "base") - memory.layer_cost(shapes[l], "int8") for l in entries)
    assert sg.gain[1] == pytest.approx(want) and want > 0  # all-int8 saves the bytes of all 8 experts
    sg = next(s for s in macs.subgraphs if entries[0] in s.layers)
    rates = {"base": 40e9, "int8": 80e9}  # cpu-avx2 table
    want = sum(shapes[l][0] * shapes[l][1] * shapes[l][2] * (1 / rates["base"] - 1 / rates["int8"]) for l in entries)
    assert sg.gain[1] == pytest.approx(want)
    one = mpq.profile(model, ids, candidates=("int8",), backend="macs", phase="decode")  # one token per sample
    assert sum(one.shapes["layers"][f"{EXPERTS}.{e}.gate_up_proj"][0] for e in range(8)) == 2 * ids.shape[0]


def test_calibrate_profile_select_apply_with_experts():
    model = tiny_qwen3_moe()
    batch = padded_batch()
    table = mpq.calibrate(model, [batch], ("int8",), progress=False)
    gains = mpq.profile(model, batch["input_ids"], candidates=("int8",), backend="memory")
    plan = mpq.select(table, gains, max_loss_mse=float(table.mse.sum()) * 10)
    experts = {l: c for l, c in plan.mapping.items() if ".experts." in l}
    assert len(experts) == 8 and len(set(experts.values())) == 1  # tied: one choice for the module
    with torch.no_grad():
        assert torch.isfinite(mpq.apply(model, plan)(batch["input_ids"]).logits).all()


def seq2seq_loss(out, batch):
    logits, labels = out.logits, batch["labels"]
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     reduction="none").view(labels.shape)
    return ce.mean(1)


def test_per_expert_linear_lists_get_each_samples_rows():
    from _tiny_moe import tiny_switch
    model = tiny_switch()
    g = torch.Generator().manual_seed(3)
    batch = {"input_ids": torch.randint(1, 64, (3, 8), generator=g),
             "decoder_input_ids": torch.randint(1, 64, (3, 5), generator=g),
             "labels": torch.randint(1, 64, (3, 5), generator=g)}
    cands = ("fp8", "int8", "w8a16")
    table = calib.calibrate(model, [batch], cands, seq2seq_loss, progress=False)
    assert "per_sample_passes" in table.info
    m64 = copy.deepcopy(model).double()
    for r in m64.modules():  # the router and T5's layer norm compute in float32 otherwise
        if type(r).__name__.endswith("Top1Router"):
            r.dtype = torch.float64
        if type(r).__name__.endswith("LayerNorm") and hasattr(r, "variance_epsilon"):
            r.forward = (lambda n: lambda h: n.weight * h * torch.rsqrt(
                h.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))(r)
    singles = [{k: v[n:n + 1] for k, v in batch.items()} for n in range(3)]
    hit = [l for l in table.layers if ".experts." in l and np.abs(table.delta[:, table.index(l)]).max() > 0]
    assert len(hit) >= 4
    for entry in hit[:2] + hit[-2:]:
        lin = dict(m64.named_modules())[entry]
        w32 = dict(model.named_modules())[entry].weight.detach()
        w0 = lin.weight.detach().clone()
        for ci, cand in enumerate(cands):
            c = CANDIDATES[cand]
            dw = (weight_quant(c).apply(w32) - w32).double()
            state = {"eps": 0.0}

            def pre(module, args):
                if c.act_format is None:
                    return None
                x32 = args[0].float().reshape(-1, args[0].shape[-1])
                dx = (act_quant(c).apply(x32) - x32).double().reshape(args[0].shape)
                return (args[0] + state["eps"] * dx,)
            h = lin.register_forward_pre_hook(pre)

            def loss(e, b):
                state["eps"] = e
                lin.weight.data.copy_(w0 + e * dw)
                args, kwargs = model_inputs(b)
                return seq2seq_loss(m64(*args, **kwargs), b).double()
            want = np.concatenate([central(lambda e: loss(e, b), 1e-4) for b in singles])
            h.remove()
            lin.weight.data.copy_(w0)
            close(table.delta[:, table.index(entry), ci], want, f"{entry}/{cand}")
