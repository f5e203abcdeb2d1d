"""mpq.save_quantized: checkpoints that the real libraries load back (transformers with compressed-tensors and
with torchao, in a fresh process; Intel Neural Compressor's own reader and quantize step), and plans a format
cannot hold refused with every layer named and nothing written."""
import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mpq
from mpq.artifacts.plan import Plan

from _tiny_models import tiny_llama

pytest.importorskip("transformers")
L0, L1 = "model.layers.0.", "model.layers.1."
ROOT = Path(__file__).resolve().parents[1]

# weight-only, FP8 dynamic and FP8 static: the loaded model computes what mpq's fake model computes
PLAN_FP8 = {L0 + "self_attn.q_proj": "fp8", L0 + "self_attn.k_proj": "fp8", L0 + "self_attn.v_proj": "fp8",
            L0 + "self_attn.o_proj": "fp8_static", L0 + "mlp.gate_proj": "w4a16", L0 + "mlp.up_proj": "w4a16",
            L0 + "mlp.down_proj": "w8a16", L1 + "self_attn.q_proj": "fp8_static",
            L1 + "self_attn.k_proj": "fp8_static", L1 + "self_attn.v_proj": "fp8_static",
            L1 + "self_attn.o_proj": "w8a16", L1 + "mlp.gate_proj": "fp8", L1 + "mlp.up_proj": "fp8",
            L1 + "mlp.down_proj": "w4a16", "lm_head": "base"}
# INT8 activations: compressed-tensors' reference quantizer divides by amax/127.5 where mpq (and vLLM) use amax/127
PLAN_INT8 = {L0 + "self_attn.q_proj": "int8", L0 + "self_attn.k_proj": "int8", L0 + "self_attn.v_proj": "int8",
             L0 + "self_attn.o_proj": "int8_static", L0 + "mlp.gate_proj": "int8", L0 + "mlp.up_proj": "int8",
             L0 + "mlp.down_proj": "int8_static", L1 + "mlp.down_proj": "int8"}
# calibrated integers (GPTQ, optimized RTN with its −8 codes and negative scales) stored as calibration chose them
PLAN_CAL = {L0 + "self_attn.q_proj": "w8a16_gptq", L0 + "self_attn.k_proj": "w8a16_gptq",
            L0 + "self_attn.v_proj": "w8a16_gptq", L0 + "mlp.down_proj": "w4a16_g64_ortn",
            L1 + "self_attn.o_proj": "w8a16_gptq", L1 + "mlp.down_proj": "w4a16_g64_ortn"}
PLAN_AO = {L0 + "self_attn.q_proj": "int8", L0 + "self_attn.k_proj": "int8", L0 + "self_attn.v_proj": "int8",
           L0 + "mlp.down_proj": "w8a16", L1 + "self_attn.o_proj": "w8a16", L1 + "mlp.gate_proj": "int8"}

LOADER = textwrap.dedent("""
    import json, sys, torch, transformers
    folders, probes, out = json.loads(sys.argv[1]), torch.load(sys.argv[2]), {}
    for key, folder in folders.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        modules = dict(model.named_modules())
        with torch.no_grad():
            out[key] = {"logits": model(probes["ids"]).logits,
                        "status": str(model.config.quantization_config.to_dict().get("quantization_status")),
                        "weights": {n: modules[n].weight.detach().clone() if type(modules[n].weight) is
                                    torch.nn.Parameter else type(modules[n].weight).__name__
                                    for n in probes["layers"][key]},
                        "outputs": {n: modules[n](probes["x"][n]) for n in probes["layers"][key]}}
    torch.save(out, sys.argv[3])
""")


def _batches(n=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(n)]


def _plan(model, mapping):
    """A Plan with static activation scales as mpq.calibrate sets them: the format's scale of the range of each
    layer's inputs over the calibration batches."""
    from mpq.formats import compute_scales
    modules, ranges = dict(model.named_modules()), {}
    static = [n for n, c in mapping.items() if c != "base" and mpq.CANDIDATES[c].act_static]

    def hook_for(name):
        def hook(_, args):
            lo, hi = torch.aminmax(args[0])
            old = ranges.get(name, (lo, hi))
            ranges[name] = (torch.minimum(lo, old[0]), torch.maximum(hi, old[1]))
        return hook
    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in static]
    with torch.no_grad():
        for b in _batches():
            model(**b)
    for h in handles:
        h.remove()
    scales = {n: float(compute_scales(torch.stack(ranges[n]), mpq.CANDIDATES[mapping[n]].act_format)[0][0])
              for n in static}
    return Plan(dict(mapping), float("nan"), float("nan"), act_scales=scales)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Three checkpoints of a tiny Llama written by mpq, loaded back by transformers in one fresh process."""
    pytest.importorskip("compressed_tensors")
    pytest.importorskip("torchao")
    tmp = tmp_path_factory.mktemp("ckpt")
    model = tiny_llama(2)
    plans = {"fp8": _plan(model, PLAN_FP8), "int8": _plan(model, PLAN_INT8), "ao": Plan(PLAN_AO, 0.0, 0.0),
             "cal": Plan(PLAN_CAL, 0.0, 0.0)}
    formats = {"fp8": "compressed-tensors", "int8": "compressed-tensors", "ao": "torchao", "cal": "compressed-tensors"}
    qws = {"cal": mpq.calibrate(model, _batches(), ("w8a16_gptq", "w4a16_g64_ortn"), progress=False).quantized_weights}
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    kinds = {n: type(m) for n, m in model.named_modules()}
    folders = {k: mpq.save_quantized(model, plans[k], tmp / k, formats[k], quantized_weights=qws.get(k))
               for k in plans}
    # the writers quantize a copy that shares the model's tensors (no second copy of the weights): the model
    # itself keeps its parameter objects, their values and its module types
    assert {n: type(m) for n, m in model.named_modules()} == kinds
    for n, p in model.named_parameters():
        assert p is before[n][0] and type(p) is torch.nn.Parameter and torch.equal(p, before[n][1]), n
    g = torch.Generator().manual_seed(5)
    layers = {k: [n for n, c in plans[k].mapping.items() if c != "base"] for k in plans}
    modules = dict(model.named_modules())
    probes = {"ids": torch.randint(0, 64, (2, 12), generator=g), "layers": layers,
              "x": {n: 2 * torch.randn(3, 5, modules[n].in_features, generator=g) for n in modules
                    if isinstance(modules[n], torch.nn.Linear)}}
    torch.save(probes, tmp / "probes.pt")
    r = subprocess.run([sys.executable, "-c", LOADER, json.dumps(folders), str(tmp / "probes.pt"),
                        str(tmp / "loaded.pt")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(Path(mpq.__file__).resolve().parents[1])))
    assert r.returncode == 0, r.stderr[-3000:]
    model.qws = qws["cal"]
    return model, plans, folders, probes, torch.load(tmp / "loaded.pt")


def test_writers_quantize_a_copy_that_shares_the_unplanned_weights(tmp_path, monkeypatch):
    """No second copy of the model in memory: the model the library quantizes and saves holds the very storage of
    every weight the plan leaves alone."""
    pytest.importorskip("compressed_tensors")
    transformers = pytest.importorskip("transformers")
    model = tiny_llama(2)
    seen = []
    real = transformers.PreTrainedModel.save_pretrained
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained",
                        lambda self, *a, **k: (seen.append(self), real(self, *a, **k))[1])
    mpq.save_quantized(model, _plan(model, PLAN_INT8), tmp_path / "ct", "compressed-tensors")
    (saved_model,) = seen
    assert saved_model is not model
    copies = dict(saved_model.named_parameters())
    for n, p in model.named_parameters():
        if n.rsplit(".", 1)[0] not in PLAN_INT8:
            assert copies[n].data_ptr() == p.data_ptr(), n


def _fake(model, plan):
    return mpq.apply(model, plan, mode="fake")


def test_compressed_tensors_weights_are_mpqs_quantized_weights(saved):
    model, plans, folders, _, loaded = saved
    for key in ("fp8", "int8"):
        fake = dict(_fake(model, plans[key]).named_modules())
        for name, w in loaded[key]["weights"].items():
            assert torch.equal(w, fake[name].weight), (key, name)  # bit for bit: the scales are mpq's


def test_compressed_tensors_config_claims_what_the_files_hold(saved):
    from safetensors import safe_open
    _, plans, folders, _, loaded = saved
    cfg = json.loads((Path(folders["fp8"]) / "config.json").read_text())["quantization_config"]
    assert cfg["quantization_status"] == "compressed" and cfg["format"] == "mixed-precision"
    with safe_open(str(Path(folders["fp8"]) / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    want = {"fp8": "F8_E4M3", "fp8_static": "F8_E4M3"}
    for name, cand in plans["fp8"].quantized.items():
        if cand in want:
            assert dtypes[name + ".weight"] == want[cand], name
        else:  # w8a16, w4a16: packed into int32 by compressed-tensors' pack-quantized compressor
            assert dtypes[name + ".weight_packed"] == "I32" and name + ".weight" not in keys, name
        if mpq.CANDIDATES[cand].act_static:
            assert name + ".input_scale" in keys, name
    assert dtypes["lm_head.weight"] == "F32"
    by_layer = {t[len("re:^"):-1].replace("\\", ""): g for g in cfg["config_groups"].values() for t in g["targets"]}
    assert by_layer[L0 + "mlp.gate_proj"]["weights"]["num_bits"] == 4
    assert by_layer[L0 + "mlp.gate_proj"]["weights"]["group_size"] == 32
    assert by_layer[L0 + "self_attn.o_proj"]["input_activations"]["dynamic"] is False
    assert json.loads((Path(folders["fp8"]) / "mpq_plan.json").read_text())["mapping"] == PLAN_FP8


def test_compressed_tensors_logits_equal_the_fake_quantized_model(saved):
    model, plans, _, probes, loaded = saved
    with torch.no_grad():
        want = _fake(model, plans["fp8"])(probes["ids"]).logits
        base = model(probes["ids"]).logits
    got = loaded["fp8"]["logits"]
    # float32 rounding of x/s against mpq's x·(1/s) only; the quantization itself moved the logits far more
    assert (got - want).abs().max() < 1e-5 < (base - want).abs().max()


def test_compressed_tensors_stores_the_calibrated_integers(saved):
    """GPTQ's and optimized RTN's integers go into the checkpoint as calibration chose them (the loaded weights are
    codes ⊙ scales bit for bit, −8 codes and negative scales included), and the loaded model computes what
    mpq.apply computes with the same QuantizedWeights."""
    model, plans, _, probes, loaded = saved
    qws = model.qws
    ortn = qws[L0 + "mlp.down_proj", "w4a16_g64_ortn"]
    assert (ortn.codes == -8).any() and (ortn.scales < 0).any()  # the check covers the full range
    for name, cand in PLAN_CAL.items():
        assert torch.equal(loaded["cal"]["weights"][name], qws[name, cand].dequantized()), name
        rtn = mpq.CANDIDATES[cand.split("_gptq")[0].split("_ortn")[0]].quantize_weight(
            dict(model.named_modules())[name].weight)
        assert not torch.equal(loaded["cal"]["weights"][name], rtn), name  # not round-to-nearest integers
    with torch.no_grad():
        want = mpq.apply(model, plans["cal"], quantized_weights=qws)(probes["ids"]).logits
        base = model(probes["ids"]).logits
    got = loaded["cal"]["logits"]
    assert (got - want).abs().max() < 1e-5 < (base - want).abs().max()


def test_compressed_tensors_refuses_awq_and_calibrated_without_their_integers(tmp_path):
    pytest.importorskip("compressed_tensors")
    model = tiny_llama(1)
    with pytest.raises(ValueError, match="awq's per-input-channel divide has no place"):
        mpq.save_quantized(model, {L0 + "mlp.down_proj": "w8a16_awq"}, tmp_path / "ct", "compressed-tensors",
                           quantized_weights=mpq.artifacts.QuantizedWeights())
    with pytest.raises(ValueError, match="pass quantized_weights="):
        mpq.save_quantized(model, {L0 + "mlp.down_proj": "w8a16_gptq"}, tmp_path / "ct", "compressed-tensors")
    other = tiny_llama(1)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    qw = mpq.calibrate(other, _batches(), ("w8a16_gptq",), progress=False).quantized_weights
    with pytest.raises(ValueError, match="different weight"):  # integers of another model's weight
        mpq.save_quantized(model, {L0 + "mlp.down_proj": "w8a16_gptq"}, tmp_path / "ct", "compressed-tensors",
                           quantized_weights=qw)
    assert os.listdir(tmp_path) == []


def test_compressed_tensors_int8_activations_within_one_step(saved):
    """Each INT8 input differs from mpq's by at most one step s = amax/127 (a grid of amax/127.5 against mpq's
    amax/127, or -128 against -127 at saturation), so each output by at most s·Σ|W| of its row."""
    model, plans, _, probes, loaded = saved
    fake = dict(_fake(model, plans["int8"]).named_modules())
    for name, cname in plans["int8"].quantized.items():
        x, layer = probes["x"][name], fake[name]
        cand = mpq.CANDIDATES[cname]
        with torch.no_grad():
            want = layer(x)
        if cand.act_static:
            step = torch.full(x.shape[:-1] + (1,), plans["int8"].act_scales[name])
        else:
            step = x.abs().amax(-1, keepdim=True) / 127
        bound = step * layer.weight.abs().sum(1) + 1e-5
        diff = (loaded["int8"]["outputs"][name] - want).abs()
        assert (diff <= bound).all(), (name, (diff - bound).max())
        assert diff.max() > 0 or cand.act_static  # the dynamic grids do differ: the bound is what is tested


def test_torchao_checkpoint_reloads_as_torchaos_own_quantization(saved):
    from torchao.core.config import config_from_dict
    from torchao.quantization import quantize_
    model, plans, folders, probes, loaded = saved
    ref = copy.deepcopy(model)
    quantize_(ref, config_from_dict(mpq.export(plans["ao"], "torchao", Path(folders["ao"]).parent / "ao.json")),
              filter_fn=None)
    with torch.no_grad():
        want = ref(probes["ids"]).logits
    assert torch.equal(loaded["ao"]["logits"], want)
    assert set(loaded["ao"]["weights"].values()) == {"Int8Tensor"}  # torchao's tensors, rebuilt by from_pretrained


def test_torchao_refuses_what_it_cannot_run_here(tmp_path):
    pytest.importorskip("torchao")
    if torch.cuda.is_available():
        pytest.skip("a GPU may run torchao's FP8")
    with pytest.raises(ValueError, match=r"torchao cannot quantize 1 layer\(s\) to fp8 .*q_proj.*nothing written"):
        mpq.save_quantized(tiny_llama(1), {L0 + "self_attn.q_proj": "fp8", L0 + "mlp.down_proj": "int8"},
                           tmp_path / "ao", "torchao")
    assert os.listdir(tmp_path) == []


def test_unexpressible_candidates_refused_naming_layers_nothing_written(tmp_path):
    pytest.importorskip("compressed_tensors")
    model = tiny_llama(1)
    bad = {L0 + "self_attn.q_proj": "int8", L0 + "self_attn.k_proj": "fp8", L0 + "self_attn.v_proj": "int8",
           L0 + "mlp.up_proj": "fp8_e5m2", L0 + "mlp.gate_proj": "fp8_e5m2", L0 + "mlp.down_proj": "fp8_gaudi2",
           L0 + "self_attn.o_proj": "w8a16"}
    plan = Plan(bad, 0.0, 0.0, act_scales={L0 + "mlp.down_proj": 0.01})
    with pytest.raises(ValueError) as e:
        mpq.save_quantized(model, plan, tmp_path / "ct", "compressed-tensors")
    msg = str(e.value)
    assert "nothing written" in msg and "E5M2" in msg and "±240" in msg
    assert L0 + "mlp.up_proj" in msg and L0 + "mlp.gate_proj" in msg and L0 + "mlp.down_proj" in msg
    assert "q_proj=int8, k_proj=fp8, v_proj=int8" in msg  # fused layers given different candidates: refused
    with pytest.raises(ValueError, match=r"down_proj \(int8: INC's FP8 quantization runs \['fp8_gaudi2', "):
        mpq.save_quantized(model, {L0 + "mlp.down_proj": "int8"}, tmp_path / "inc", "inc", batches=_batches())
    with pytest.raises(ValueError, match="static activation scale is needed"):
        mpq.save_quantized(model, {L0 + "self_attn.o_proj": "fp8_static"}, tmp_path / "ct", "compressed-tensors")
    with pytest.raises(ValueError, match="not a module of the model"):
        mpq.save_quantized(model, {"model.layers.7.mlp": "int8"}, tmp_path / "ct", "compressed-tensors")
    for fmt in ("compressed-tensors", "torchao"):  # GPTQ's integers would become round-to-nearest ones: refused
        with pytest.raises(ValueError, match=r"w8a16_gptq: its integers were chosen in calibration"):
            mpq.save_quantized(model, {L0 + "mlp.down_proj": "w8a16_gptq"}, tmp_path / "q", fmt)
    assert os.listdir(tmp_path) == []  # no folder, no hidden temporary


def test_an_existing_folder_is_never_touched_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("compressed_tensors")
    model, plan = tiny_llama(1), {L0 + "mlp.down_proj": "w8a16"}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        mpq.save_quantized(model, plan, tmp_path / "full", "compressed-tensors")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    from compressed_tensors.compressors import ModelCompressor

    def broken(*a, **k):  # fails after the weights are written: the half-made folder must go
        raise RuntimeError("disk full")
    monkeypatch.setattr(ModelCompressor, "update_config", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        mpq.save_quantized(model, plan, tmp_path / "new", "compressed-tensors")
    assert sorted(os.listdir(tmp_path)) == ["full"]
    (tmp_path / "empty").mkdir()
    monkeypatch.undo()
    mpq.save_quantized(model, plan, tmp_path / "empty", "compressed-tensors")  # an empty folder is filled
    assert "model.safetensors" in os.listdir(tmp_path / "empty")


def test_the_config_only_export_claims_no_compressed_weight(tmp_path):
    cfg = mpq.export({L0 + "mlp.down_proj": "int8"}, "compressed-tensors", tmp_path / "ct.json")
    assert cfg["quantization_status"] == "initialized"  # no scale computed, no weight compressed
    ct = pytest.importorskip("compressed_tensors.quantization")
    assert ct.QuantizationConfig.model_validate(cfg).quantization_status == "initialized"


INC_SCRIPT = textwrap.dedent("""
    import json, sys, copy, torch
    sys.path.insert(0, sys.argv[3])
    from _tiny_models import tiny_llama
    from neural_compressor.torch.algorithms.fp8_quant._core.common import load_file
    from neural_compressor.torch.quantization import FP8Config, convert, finalize_calibration, prepare
    import numpy as np
    folder, batches = sys.argv[1], torch.load(sys.argv[2])
    cfg = json.load(open(folder + "/inc_fp8.json"))
    ours = load_file(cfg["dump_stats_path"] + "_hooks_maxabs.npz", np.ndarray, True)  # INC's own reader
    # INC measuring the same model on the same batches itself
    own = dict(cfg, mode="MEASURE", use_qdq=True, dump_stats_path=sys.argv[4] + "/inc")
    own.pop("scale_method")
    m = prepare(tiny_llama(2), FP8Config.from_dict(own))
    with torch.no_grad():
        for b in batches:
            m(**b)
    finalize_calibration(m)
    theirs = load_file(sys.argv[4] + "/inc_hooks_maxabs.npz", np.ndarray, True)
    out = {"ours": {k: [float(v.inputs[0].item()), float(v.params["weight"].item())] for k, v in ours.items()},
           "theirs": {k: [float(v.inputs[0].item()), float(v.params["weight"].item())] for k, v in theirs.items()}}
    # INC's quantize step from mpq's files, in QDQ mode with an arbitrary-scale method (maxabs_hw is Gaudi's)
    for key, path in (("q_ours", cfg["dump_stats_path"]), ("q_theirs", sys.argv[4] + "/inc")):
        cpu = dict(cfg, use_qdq=True, scale_method="maxabs_arbitrary", dump_stats_path=path)
        json.dump(cpu, open(sys.argv[4] + "/cpu.json", "w"))
        q = convert(tiny_llama(2).to(torch.bfloat16), FP8Config.from_json_file(sys.argv[4] + "/cpu.json"))
        out[key] = {n: [type(mod).__name__, float(getattr(getattr(mod, "quant_input", None), "scale", 0))]
                    for n, mod in q.named_modules() if n.endswith("proj") or n == "lm_head"}
        with torch.no_grad():
            out[key + "_finite"] = bool(torch.isfinite(q(batches[0]["input_ids"]).logits).all())
    print(json.dumps(out))
""")


def test_inc_quantizes_from_mpqs_measurements(tmp_path):
    if importlib.util.find_spec("neural_compressor") is None:  # not imported here: INC runs in its own process
        pytest.skip("neural-compressor-pt is not installed")
    model = tiny_llama(2)
    plan = {n: "fp8_gaudi2" for n in PLAN_FP8 if n != "lm_head" and not n.endswith("o_proj")}
    plan[L1 + "self_attn.o_proj"] = "base"
    batches = _batches()
    folder = mpq.save_quantized(model, plan, tmp_path / "inc", "inc", batches=batches)
    torch.save(batches, tmp_path / "batches.pt")
    (tmp_path / "own").mkdir()
    r = subprocess.run([sys.executable, "-c", INC_SCRIPT, folder, str(tmp_path / "batches.pt"),
                        str(ROOT / "tests"), str(tmp_path / "own")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    quantized = [n for n, c in plan.items() if c == "fp8_gaudi2"]
    assert sorted(out["ours"]) == sorted(quantized)
    for n in quantized:  # INC measures in bf16: the same max-abs within its rounding
        for mine, inc in zip(out["ours"][n], out["theirs"][n]):
            assert abs(mine - inc) <= 2 ** -8 * abs(mine), (n, mine, inc)
    for n, (kind, scale) in out["q_ours"].items():
        assert (kind == "PatchedLinear") == (n in quantized), n  # blocked layers stay Linear
        if n in quantized:
            assert scale > 0 and abs(scale - out["q_theirs"][n][1]) <= 2 ** -7 * scale, n
    assert out["q_ours_finite"]


def test_inc_needs_the_calibration_batches(tmp_path):
    with pytest.raises(ValueError, match="calibration batches"):
        mpq.save_quantized(tiny_llama(1), {L0 + "mlp.down_proj": "fp8_gaudi2"}, tmp_path / "inc", "inc")
    assert os.listdir(tmp_path) == []


def test_mpq_apply_save_on_the_command_line(tmp_path):
    pytest.importorskip("compressed_tensors")
    from _cli_model import save_tiny_causal_lm
    from test_cli import cli, one_error
    from mpq.application.checkpoints import FORMATS
    from mpq.cli import apply
    assert apply.FORMATS == FORMATS
    model_dir = save_tiny_causal_lm(tmp_path / "model")
    (tmp_path / "plan.json").write_text(json.dumps({L0 + "mlp.down_proj": "w4a16", L1 + "mlp.up_proj": "int8",
                                                      L1 + "mlp.gate_proj": "int8"}))
    code, out, err = cli("apply", model_dir, tmp_path / "plan.json", "--save", tmp_path / "ct",
                         "--format", "compressed-tensors")
    assert code == 0, err
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(os.listdir(tmp_path / "ct"))
    (tmp_path / "bad.json").write_text(json.dumps({L0 + "mlp.down_proj": "fp8_e5m2"}))
    one_error(cli("apply", model_dir, tmp_path / "bad.json", "--save", tmp_path / "ct2", "--format",
                  "compressed-tensors"), 2, "apply", "E5M2", L0 + "mlp.down_proj", "nothing written")
    assert not (tmp_path / "ct2").exists()
    one_error(cli("apply", model_dir, tmp_path / "plan.json", "--save", tmp_path / "x"), 2, "apply", "--format")


def test_mpq_calibrate_then_apply_save_stores_the_calibrated_integers(tmp_path):
    """On the command line, end to end on a saved model: mpq calibrate fits GPTQ on its own samples and saves the
    integers; mpq apply --save --quantized-weights writes them into the compressed-tensors checkpoint (the packed
    codes are the saved ones); without --quantized-weights the plan is refused and nothing is written."""
    pytest.importorskip("compressed_tensors")
    from safetensors import safe_open
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32
    from _cli_model import DEMO_TEXT, save_tiny_causal_lm
    from test_cli import cli, one_error
    from mpq.artifacts.quantized_weights import QuantizedWeights
    model_dir = save_tiny_causal_lm(tmp_path / "model")
    code, _, err = cli("calibrate", model_dir, "--text", DEMO_TEXT, "--seq-len", 16, "--samples", 4,
                       "--quantizer-samples", 4, "--batch-size", 2, "--quiet", "--candidates", "w8a16_gptq",
                       "-o", tmp_path / "s.npz")
    assert code == 0, err
    layer = L0 + "mlp.down_proj"
    (tmp_path / "plan.json").write_text(json.dumps({layer: "w8a16_gptq"}))
    qw_file = tmp_path / "s.qweights.npz"
    code, out, err = cli("apply", model_dir, tmp_path / "plan.json", "--save", tmp_path / "ct", "--format",
                         "compressed-tensors", "--quantized-weights", qw_file)
    assert code == 0, err
    want = QuantizedWeights.load(qw_file)[layer, "w8a16_gptq"]
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        codes = unpack_from_int32(f.get_tensor(layer + ".weight_packed"), 8, torch.Size(want.codes.shape))
        torch.testing.assert_close(f.get_tensor(layer + ".weight_scale").float().reshape(-1),
                                   want.scales.reshape(-1), rtol=0, atol=0)
    assert torch.equal(codes.to(torch.int8), want.codes)
    one_error(cli("apply", model_dir, tmp_path / "plan.json", "--save", tmp_path / "ct2", "--format",
                  "compressed-tensors"), 2, "apply", "pass quantized_weights=", layer, "nothing written")
    assert not (tmp_path / "ct2").exists()


def test_fused_groups_are_what_serving_engines_fuse():
    from mpq.application.checkpoints.checks import fused_groups
    names = ["m.0.attn.q_proj", "m.0.attn.k_proj", "m.0.attn.v_proj", "m.0.attn.o_proj", "m.0.mlp.gate_proj",
             "m.0.mlp.up_proj", "m.0.mlp.down_proj", "m.1.moe.experts.0.w1", "m.1.moe.experts.0.w2",
             "m.1.moe.experts.1.w1", "m.1.moe.experts.1.w2", "m.1.moe.gate", "m.2.attn.q_proj", "m.2.attn.o_proj"]
    assert sorted(fused_groups(names)) == sorted([
        ("m.0.attn.q_proj", "m.0.attn.k_proj", "m.0.attn.v_proj"), ("m.0.mlp.gate_proj", "m.0.mlp.up_proj"),
        ("m.1.moe.experts.0.w1", "m.1.moe.experts.0.w2", "m.1.moe.experts.1.w1", "m.1.moe.experts.1.w2")])


def test_mpq_apply_save_inc_on_the_command_line(tmp_path):
    from _cli_model import save_tiny_causal_lm
    from test_cli import cli
    model_dir = save_tiny_causal_lm(tmp_path / "model")
    (tmp_path / "plan.json").write_text(json.dumps({L0 + "mlp.down_proj": "fp8_gaudi2"}))
    code, out, err = cli("apply", model_dir, tmp_path / "plan.json", "--save", tmp_path / "inc", "--format", "inc",
                         "--seq-len", 16, "--samples", 3)
    assert code == 0, err
    cfg = json.loads((tmp_path / "inc" / "inc_fp8.json").read_text())
    assert cfg["dump_stats_path"] == str(tmp_path / "inc" / "measure" / "inc") and cfg["scale_method"] == "maxabs_hw"
    blocked = cfg["blocklist"]["names"]  # every other Linear (2 layers of 7, and lm_head) stays high precision
    assert len(blocked) == 14 and "^lm_head$" in blocked
    assert "^" + re.escape(L0 + "mlp.down_proj") + "$" not in blocked
    stats = json.loads((tmp_path / "inc" / "measure" / "inc_hooks_maxabs.json").read_text())
    assert stats["NumSamples"] == 3 and list(stats["Nodes"]) == [L0 + "mlp.down_proj"]
    assert stats["Nodes"][L0 + "mlp.down_proj"]["inputs"][0][0][0] > 0


def test_experts_of_one_moe_block_share_one_scheme(tmp_path):
    pytest.importorskip("compressed_tensors")
    from mpq.application.checkpoints.checks import fused_problems

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.ModuleDict({"w1": torch.nn.Linear(8, 8),
                                                                    "w2": torch.nn.Linear(8, 8)}) for _ in range(2))
    problems = fused_problems(Block(), Plan({"experts.0.w1": "int8", "experts.1.w1": "w8a16"}, 0.0, 0.0))
    (reason, groups), = problems.items()
    assert "MoE" in reason and groups == ["experts [experts.0.w1=int8, experts.0.w2=base, experts.1.w1=w8a16, "
                                          "experts.1.w2=base]"]
    assert fused_problems(Block(), Plan({f"experts.{i}.w{j}": "int8" for i in (0, 1) for j in (1, 2)}, 0., 0.)) == {}


def test_checkpoints_refuse_attention_entries_with_the_reason(tmp_path):
    plan = {L0 + "self_attn.k_cache": "kv_fp8_token", L0 + "self_attn.matmul_qk": "base",
            L0 + "mlp.down_proj": "fp8"}
    with pytest.raises(ValueError, match=r"k_cache \(attention's matmul / KV cache.*mpq.export writes"):
        mpq.save_quantized(tiny_llama(1), plan, tmp_path / "ct", "compressed-tensors")
    assert not (tmp_path / "ct").exists()
    del plan[L0 + "self_attn.k_cache"]  # attention kept at base: the Linears are written
    mpq.save_quantized(tiny_llama(1), plan, tmp_path / "ct", "compressed-tensors")
    assert (tmp_path / "ct" / "config.json").exists()


INC_READ = textwrap.dedent("""
    import json, sys
    import numpy as np
    from neural_compressor.torch.algorithms.fp8_quant._core.common import load_file
    from neural_compressor.torch.quantization import FP8Config
    folder = sys.argv[1]
    cfg = FP8Config.from_json_file(folder + "/inc_fp8.json")
    nodes = load_file(cfg.dump_stats_path + "_hooks_maxabs.npz", np.ndarray, True)  # INC's own reader
    print(json.dumps({"nodes": {k: [float(x.item()) for x in v.inputs] for k, v in nodes.items()},
                      "allow": list(cfg.allowlist["names"]), "block": list(cfg.blocklist["names"])}))
""")


def test_inc_measures_attention_matmuls_and_kv_cache(tmp_path):
    """The INC folder of a plan quantizing matmul_qk and the KV cache: INC's reader gets two input max-abs for the
    matmul and one per cache; K's and V's equal the max-abs over the non-padded tokens of what transformers'
    own cache holds after the same forward."""
    model = tiny_llama(2)
    A0 = L0 + "self_attn."
    plan = {A0 + "q_proj": "fp8_gaudi2", A0 + "matmul_qk": "mm_fp8_gaudi2", A0 + "matmul_av": "base",
            A0 + "k_cache": "kv_fp8_gaudi2", A0 + "v_cache": "kv_fp8_gaudi2", L1 + "self_attn.k_cache": "base"}
    batches = _batches()
    batches[0]["attention_mask"][0, :5] = 0  # left padding: not measured
    folder = mpq.save_quantized(model, plan, tmp_path / "inc", "inc", batches=batches)
    assert model.config._attn_implementation == "sdpa" and not hasattr(model.model.layers[0].self_attn, "k_cache")
    k_amax = v_amax = 0.0
    with torch.no_grad():
        for b in batches:
            cache = model(**b, use_cache=True).past_key_values.layers[0]
            keep = b["attention_mask"].bool()
            k_amax = max(k_amax, float(cache.keys.transpose(1, 2)[keep].abs().max()))
            v_amax = max(v_amax, float(cache.values.transpose(1, 2)[keep].abs().max()))
    if importlib.util.find_spec("neural_compressor") is None:
        pytest.skip("neural-compressor-pt is not installed")
    r = subprocess.run([sys.executable, "-c", INC_READ, folder], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    nodes = out["nodes"]
    assert sorted(nodes) == sorted(n for n, c in plan.items() if c != "base")
    assert len(nodes[A0 + "matmul_qk"]) == 2 and all(a > 0 for a in nodes[A0 + "matmul_qk"])
    assert nodes[A0 + "k_cache"] == [pytest.approx(k_amax, rel=1e-6)]
    assert nodes[A0 + "v_cache"] == [pytest.approx(v_amax, rel=1e-6)]
    for name in (A0 + "matmul_av", L1 + "self_attn.k_cache", L1 + "self_attn.matmul_qk"):  # kept: blocked
        assert any(re.search(p, name) for p in out["block"]) and not any(re.search(p, name) for p in out["allow"])
    assert any(re.search(p, A0 + "k_cache") for p in out["allow"])
