"""Coverage: which parameters of a model calibrate and profile quantize, checked against an independent count (the
bytes of ``model.parameters()`` deduplicated by ``data_ptr``, and the weights of the ``nn.Linear`` modules), on tiny
Llama models (tied and untied embeddings, mixed dtypes), Gemma3, and a model holding a 3-D parameter mpq does not
know; stored by calibrate and profile, kept through save/load, and printed by the command line."""
import warnings

import pytest
import torch
from torch import nn

import mpq
from _tiny_models import tiny_gemma3, tiny_llama
from mpq.coverage import Coverage, Group, format_bytes, measure


# --- the independent count -------------------------------------------------------------------------------------
def nbytes(p) -> int:
    return p.numel() * p.element_size()


def unique_params(params):
    """Parameters deduplicated by data_ptr (tied weights once)."""
    out = {}
    for p in params:
        out.setdefault(p.data_ptr(), p)
    return list(out.values())


def reference(model, layers=None):
    """(covered tensors, covered bytes, total tensors, total bytes): covered = the weights of the nn.Linear modules
    (of ``layers`` when given)."""
    every = unique_params(model.parameters())
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and (layers is None or n in layers)]
    covered = unique_params(m.weight for m in linears)
    return len(covered), sum(map(nbytes, covered)), len(every), sum(map(nbytes, every))


def bytes_of(model, cls_name_suffix):
    """Bytes of the parameters held directly by modules whose class name ends with ``cls_name_suffix``."""
    ps = [p for m in model.modules() if type(m).__name__.endswith(cls_name_suffix)
          for p in m.parameters(recurse=False)]
    return sum(map(nbytes, unique_params(ps)))


def groups(cov, which="not_covered"):
    return {g.type: g for g in getattr(cov, which)}


def no_warning(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


def check_totals(cov, model, layers=None):
    ct, cb, tt, tb = reference(model, layers)
    assert (cov.covered_tensors, cov.covered_bytes, cov.total_tensors, cov.total_bytes) == (ct, cb, tt, tb)
    assert cov.total_params == sum(p.numel() for p in unique_params(model.parameters()))
    rest = cov.not_covered + cov.left_out
    assert cov.covered_bytes + sum(g.bytes for g in rest) == cov.total_bytes
    assert cov.covered_tensors + sum(g.tensors for g in rest) == cov.total_tensors


# --- the models ------------------------------------------------------------------------------------------------
def test_untied_llama_covers_its_linear_weights():
    model = tiny_llama(layers=2)
    cov = no_warning(mpq.model_coverage, model)
    check_totals(cov, model)
    g = groups(cov)
    assert set(g) == {"Embedding", "LlamaRMSNorm"} and not cov.left_out and not cov.unknown
    assert g["Embedding"].bytes == nbytes(model.model.embed_tokens.weight)
    assert g["Embedding"].modules == ("model.embed_tokens",)
    assert g["LlamaRMSNorm"].bytes == bytes_of(model, "RMSNorm") and len(g["LlamaRMSNorm"].modules) == 5
    assert cov.covered_tensors == 2 * 7 + 1  # q, k, v, o, gate, up, down per block, and lm_head


def test_tied_llama_counts_the_shared_tensor_once_as_covered():
    model = tiny_llama(layers=2, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    cov = mpq.model_coverage(model)
    check_totals(cov, model)
    assert set(groups(cov)) == {"LlamaRMSNorm"}  # the embedding is lm_head's weight, which is covered
    assert cov.covered_tensors == 15
    # lm_head left out: the shared tensor is left out by choice, not "not supported"
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    cov = mpq.model_coverage(model, layers)
    check_totals(cov, model, layers)
    assert groups(cov, "left_out")["Linear"].modules == ("lm_head",)
    assert groups(cov, "left_out")["Linear"].bytes == nbytes(model.lm_head.weight)
    assert "Embedding" not in groups(cov)


def test_two_parameter_objects_over_the_same_memory_are_one_tensor():
    model = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8, bias=False))
    model[1].weight = nn.Parameter(model[0].weight.detach())  # another object, the same bytes (as loaders tie)
    assert model[1].weight is not model[0].weight
    cov = mpq.model_coverage(model)
    check_totals(cov, model)
    assert (cov.covered_tensors, cov.total_tensors, cov.not_covered) == (1, 1, ())


def test_mixed_dtypes_count_each_tensor_in_its_own_dtype():
    model = tiny_llama(layers=2)
    model.model.layers[0].to(torch.bfloat16)
    model.lm_head.to(torch.float16)
    cov = mpq.model_coverage(model)
    check_totals(cov, model)
    assert cov.covered_bytes < reference(tiny_llama(layers=2))[1]


def test_layers_left_out_by_choice_are_not_unsupported():
    model = tiny_llama(layers=2)
    chosen = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    cov = no_warning(mpq.model_coverage, model, chosen)
    check_totals(cov, model, chosen)
    left = groups(cov, "left_out")
    assert set(left) == {"Linear"} and len(left["Linear"].modules) == 15 - 2
    assert not set(left["Linear"].modules) & set(chosen)
    assert set(groups(cov)) == {"Embedding", "LlamaRMSNorm"}
    assert "left out by layers=: Linear " in cov.summary()
    with pytest.raises(ValueError, match="not nn.Linear"):
        mpq.model_coverage(model, ["model.norm"])


def test_gemma3_tied_scaled_embedding_and_four_norms_per_block():
    model = tiny_gemma3()
    cov = no_warning(mpq.model_coverage, model)
    check_totals(cov, model)
    g = groups(cov)
    # its embedding (an nn.Embedding subclass) is tied to lm_head: covered; the norms (q/k norms too) are not
    assert set(g) == {"Gemma3RMSNorm"} and not cov.unknown
    assert g["Gemma3RMSNorm"].bytes == bytes_of(model, "RMSNorm")
    assert len(g["Gemma3RMSNorm"].modules) == 2 * 6 + 1


class StackedExperts(nn.Module):
    """A custom MoE-like module: one 3-D parameter [experts, out, in] mpq has no layer kind for."""

    def __init__(self, experts=4, d=8):
        super().__init__()
        self.w = nn.Parameter(torch.randn(experts, d, d))
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return torch.einsum("...d,eod->...o", x, self.w) * self.scale


class WithExperts(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.experts = StackedExperts()
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)

    def forward(self, ids):
        return self.head(self.norm(self.experts(self.proj(self.emb(ids)))))


def test_an_unknown_3d_parameter_is_listed_and_warned():
    model = WithExperts()
    with pytest.warns(UserWarning, match=r"experts \(StackedExperts: w \[4, 8, 8\]\)"):
        cov = mpq.model_coverage(model)
    check_totals(cov, model)
    g = groups(cov)
    assert g["StackedExperts"].bytes == nbytes(model.experts.w) + nbytes(model.experts.scale)
    assert g["StackedExperts"].modules == ("experts",)
    assert g["Linear bias"].bytes == nbytes(model.proj.bias)  # a bias stays in its dtype
    assert g["Embedding"].bytes == nbytes(model.emb.weight) and g["LayerNorm"].tensors == 2
    assert cov.unknown == {"experts": {"w": (4, 8, 8)}}  # the 1-D scale is no unknown layout
    assert cov.summary().endswith("; unknown layout: experts")
    # the 3-D holder is first (most bytes), then the rest by size
    assert [g.type for g in cov.not_covered] == sorted(g, key=lambda t: -g[t].bytes)
    # calibrate and profile warn too, at the caller's line, and store the same record
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="StackedExperts") as caught:
        table = mpq.calibrate(model, [ids], ("int8",), loss_fn=lambda out, b: out.logsumexp(-1).mean(-1),
                              progress=False)
    assert caught[0].filename == __file__ and Coverage.from_dict(table.info["coverage"]) == cov
    with pytest.warns(UserWarning, match="StackedExperts") as caught:
        gains = mpq.profile(model, ids, ("int8",), backend="macs")
    assert caught[0].filename == __file__ and Coverage.from_dict(gains.meta["coverage"]).unknown == cov.unknown


def test_a_new_layer_kind_counts_once_quantizable_layers_lists_it():
    model = WithExperts()
    linears = ["proj", "head"]
    cov = no_warning(measure, model, linears + ["experts"], linears + ["experts"])
    assert cov.covered_bytes == sum(map(nbytes, (model.proj.weight, model.head.weight, model.experts.w,
                                                 model.experts.scale)))
    assert not cov.unknown and "StackedExperts" not in groups(cov)
    # quantizable but not chosen: left out, not warned
    cov = no_warning(measure, model, linears, linears + ["experts"])
    assert groups(cov, "left_out")["StackedExperts"].modules == ("experts",) and not cov.unknown
    with pytest.raises(ValueError, match="not modules of WithExperts"):
        measure(model, ["nope"], linears)


def test_meta_parameters_are_counted_from_their_shape_and_dtype():
    with torch.device("meta"):
        model = WithExperts()
    with pytest.warns(UserWarning, match="experts"):
        cov = mpq.model_coverage(model)
    want = sum(nbytes(p) for p in model.parameters())  # every meta tensor is its own parameter here
    assert cov.total_bytes == want and cov.total_tensors == len(list(model.parameters()))


# --- the summary and the record --------------------------------------------------------------------------------
def test_summary_line():
    cov = Coverage(211, 0, 971, 274, 0, 1000, not_covered=(Group("Embedding", ("e",), 1, 0, 28_300_000),
                                                              Group("LlamaRMSNorm", ("a", "b"), 2, 0, 1_234)),
                   left_out=(Group("Linear", ("x",), 1, 0, 512),))
    assert cov.summary() == ("covered 97.1% of weight bytes (971 B of 1 kB; 211 of 274 tensors); not covered: "
                             "Embedding 28.3 MB (1), LlamaRMSNorm 1.23 kB (2); left out by layers=: Linear 512 B (1)")
    assert Coverage(1, 1, 9996, 2, 2, 10000).summary().startswith("covered >99.9% ")
    assert Coverage(1, 1, 4, 2, 2, 10000).summary().startswith("covered <0.1% ")
    assert Coverage(0, 0, 0, 2, 2, 10000).summary().startswith("covered 0.0% ")
    assert Coverage(1, 1, 10, 1, 1, 10).summary() == "covered 100.0% of weight bytes (10 B of 10 B; 1 of 1 tensors)"
    assert [format_bytes(n) for n in (0, 999, 1000, 999_499, 999_500, 28_349_999, 10 ** 13)] == [
        "0 B", "999 B", "1 kB", "999 kB", "1 MB", "28.3 MB", "10 TB"]


def test_record_round_trip_and_bad_records():
    with pytest.warns(UserWarning):
        cov = mpq.model_coverage(WithExperts())
    back = Coverage.from_dict(cov.to_dict())
    assert back == cov and back.summary() == cov.summary()
    bad = cov.to_dict()
    bad["covered_bytes"] = -1
    with pytest.raises(ValueError, match="covered_bytes"):
        Coverage.from_dict(bad, "t.npz: 'coverage'")
    bad = dict(cov.to_dict(), covered_bytes=cov.total_bytes + 1)
    with pytest.raises(ValueError, match="covers more than the model holds"):
        Coverage.from_dict(bad)
    bad = cov.to_dict()
    bad["not_covered"][0]["modules"] = "experts"
    with pytest.raises(ValueError, match=r"not_covered\[0\]: 'modules'"):
        Coverage.from_dict(bad)


# --- calibrate and profile store it ----------------------------------------------------------------------------
def test_calibrate_stores_coverage_and_it_survives_save_load(tmp_path):
    model = tiny_llama(layers=2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    layers = ["model.layers.0.mlp.up_proj", "lm_head"]
    table = mpq.calibrate(model, [{"input_ids": ids}], ("int8",), progress=False, layers=layers)
    cov = Coverage.from_dict(table.info["coverage"])
    assert cov == mpq.model_coverage(model, layers)
    check_totals(cov, model, layers)
    table.save(tmp_path / "s.npz")
    assert Coverage.from_dict(mpq.SensitivityTable.load(tmp_path / "s.npz").info["coverage"]) == cov


def test_profile_stores_coverage_and_it_survives_save_load(tmp_path):
    model = tiny_llama(layers=2, tie_word_embeddings=True)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="share their memory"):  # lm_head is tied: said by profile itself
        gains = mpq.profile(model, {"input_ids": ids}, ("int8",), backend="memory")
    cov = Coverage.from_dict(gains.meta["coverage"])
    check_totals(cov, model, gains.layer_names)
    assert cov.left_out_why == "of the sub-graphs"
    gains.save(tmp_path / "g.npz")
    assert Coverage.from_dict(mpq.GainTable.load(tmp_path / "g.npz").meta["coverage"]) == cov


def test_the_command_line_prints_the_line(tmp_path):
    import contextlib
    import io

    from _cli_model import save_tiny_causal_lm
    from mpq.cli import main
    from mpq.data import load_causal_lm
    lm = save_tiny_causal_lm(tmp_path / "lm")
    model, _ = load_causal_lm(str(lm))
    _, covered, _, total = reference(model)
    want = f"covered {100 * covered / total:.1f}% of weight bytes ("

    def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        assert code == 0, err.getvalue()
        return out.getvalue().splitlines(), err.getvalue().splitlines()

    _, err = cli("calibrate", lm, "--seq-len", 16, "--samples", 2, "--batch-size", 2, "--quiet",
                 "-o", tmp_path / "s.npz")
    line = Coverage.from_dict(mpq.SensitivityTable.load(tmp_path / "s.npz").info["coverage"]).summary()
    assert line.startswith(want) and line in err and "not covered: Embedding " in line
    assert line in cli("calibrate", "--table", tmp_path / "s.npz", "--report")[1]
    out, _ = cli("profile", lm, "--random", "--seq-len", 16, "--backend", "memory", "-o", tmp_path / "g.npz")
    line = Coverage.from_dict(mpq.GainTable.load(tmp_path / "g.npz").meta["coverage"]).summary()
    assert line.startswith(want) and line in out


def test_moe_experts_are_covered_and_routers_are_known():
    """A Qwen3-MoE block: its stacked experts count as covered (they are layers in the routed form), the router is
    kept on purpose (no unknown-layout warning); bytes agree with the model's own parameters."""
    from _tiny_moe import tiny_qwen3_moe
    model = tiny_qwen3_moe()
    cov = no_warning(mpq.model_coverage, model)
    every = unique_params(model.parameters())
    experts = bytes_of(model, "Experts")
    linears = sum(nbytes(m.weight) for m in model.modules() if isinstance(m, nn.Linear))
    assert experts > 0 and cov.total_bytes == sum(map(nbytes, every))
    assert cov.covered_bytes == experts + linears
    assert not cov.unknown and groups(cov)["Qwen3MoeTopKRouter"].bytes == bytes_of(model, "Router")
    assert cov.covered_bytes + sum(g.bytes for g in cov.not_covered) == cov.total_bytes
