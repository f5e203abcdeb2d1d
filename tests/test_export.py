"""Exports select exactly the intended modules and are accepted by the real libraries where they install."""
import json
import re

import pytest

from mpq.application import export
from mpq.artifacts import Plan

NAMES = [f"model.layers.{i}.{p}" for i in (1, 2, 10, 11) for p in ("self_attn.q_proj", "mlp.down_proj")]


def plan_with(candidates):
    mapping = {n: candidates[i % len(candidates)] for i, n in enumerate(NAMES)}
    mapping["model.layers.1.mlp.down_proj"] = "base"  # layers.1 kept, layers.10/11 quantized: the anchoring test
    return Plan(mapping, 0.1, 0.2)


def test_inc_blocklist_selects_exactly_the_high_precision_layers(tmp_path):
    plan = plan_with(["fp8_gaudi2"])
    plan.mapping["model.layers.2.self_attn.q_proj"] = "base"
    cfg = export(plan, "inc", tmp_path / "quant.json")
    assert json.loads((tmp_path / "quant.json").read_text()) == cfg
    assert cfg["mode"] == "QUANTIZE" and cfg["scale_method"] == "maxabs_hw"
    # INC blocks a module when any blocklist name re.search-es it
    blocked = {n for n in NAMES if any(re.search(p, n) for p in cfg["blocklist"]["names"])}
    assert blocked == {n for n, c in plan.mapping.items() if c == "base"}
    assert blocked == {"model.layers.1.mlp.down_proj", "model.layers.2.self_attn.q_proj"}


def test_inc_refuses_formats_gaudi_cannot_run(tmp_path):
    with pytest.raises(ValueError, match=r"INC FP8 export runs \['fp8_gaudi2', 'kv_fp8_gaudi2', 'mm_fp8_gaudi2'\]"
                                         r".*int8"):
        export(plan_with(["int8"]), "inc", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_a_failed_export_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    good = export(plan_with(["fp8_gaudi2"]), "inc", tmp_path / "quant.json")
    before = (tmp_path / "quant.json").read_text()
    with pytest.raises(ValueError, match="INC FP8 export runs"):
        export(plan_with(["int8"]), "inc", tmp_path / "quant.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(plan_with(["fp8_gaudi2"]), "inc", tmp_path / "no" / "quant.json")
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(OSError):  # the rename onto a folder fails after the file was written
        export(plan_with(["fp8_gaudi2"]), "inc", tmp_path / "a_folder")
    assert json.loads(before) == good and (tmp_path / "quant.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "quant.json"]
    assert not any((tmp_path / "a_folder").iterdir())


def test_unknown_target(tmp_path):
    with pytest.raises(ValueError, match="unknown export target 'onnx'"):
        export(plan_with(["int8"]), "onnx", tmp_path / "x.json")


def test_compressed_tensors_groups(tmp_path):
    plan = plan_with(["int8", "w4a16", "fp8"])
    cfg = export(plan, "compressed-tensors", tmp_path / "ct.json")
    assert cfg["format"] == "mixed-precision"
    targeted = {}
    for g in cfg["config_groups"].values():
        for t in g["targets"]:
            for n in NAMES:
                if re.fullmatch(t[len("re:"):], n):
                    targeted.setdefault(n, []).append(g)
    assert set(targeted) == set(plan.quantized) and all(len(v) == 1 for v in targeted.values())
    assert set(cfg["ignore"]) == {n for n, c in plan.mapping.items() if c == "base"}
    try:
        from compressed_tensors.quantization import QuantizationConfig
    except ImportError:
        pytest.skip("compressed-tensors is not installed")
    parsed = QuantizationConfig.model_validate(cfg)
    int8 = next(g for g in parsed.config_groups.values() if g.input_activations and g.input_activations.type == "int")
    assert int8.weights.strategy == "channel" and int8.input_activations.strategy == "token"
    assert int8.input_activations.dynamic is True


def test_torchao_config_round_trips_through_torchao(tmp_path):
    plan = plan_with(["int8", "w4a16", "w8a16", "base"])
    cfg = export(plan, "torchao", tmp_path / "ao.json")
    fqn = cfg["_data"]["fqn_to_config"]
    assert {n for n, v in fqn.items() if v is not None} == set(plan.quantized)
    with pytest.raises(ValueError, match="torchao export runs"):
        export(plan_with(["fp8_gaudi2"]), "torchao", tmp_path / "bad.json")
    torchao_config = pytest.importorskip("torchao.core.config")
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8WeightOnlyConfig)
    parsed = torchao_config.config_from_dict(cfg).fqn_to_config
    assert isinstance(parsed["model.layers.1.self_attn.q_proj"], Int8DynamicActivationInt8WeightConfig)
    assert parsed["model.layers.1.mlp.down_proj"] is None  # kept in the model's precision
    assert isinstance(parsed["model.layers.2.self_attn.q_proj"], Int8WeightOnlyConfig)
    w4 = parsed["model.layers.10.mlp.down_proj"]
    assert isinstance(w4, Int4WeightOnlyConfig) and w4.group_size == 32


def test_mpq_target_is_the_plan_file(tmp_path):
    plan = plan_with(["int8"])
    export(plan, "mpq", tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").mapping == plan.mapping


ATT = "model.layers.{}.self_attn."


def _attention_plan(kv=("kv_fp8_head", "kv_fp8_head"), mm="base"):
    mapping = {}
    for i, cache in enumerate(kv):
        mapping.update({ATT.format(i) + "q_proj": "fp8", ATT.format(i) + "matmul_qk": mm,
                        ATT.format(i) + "matmul_av": "base", ATT.format(i) + "k_cache": cache,
                        ATT.format(i) + "v_cache": cache})
    return Plan(mapping, 0.0, 0.0)


@pytest.mark.parametrize("cand, args", [
    ("kv_fp8", {"type": "float", "strategy": "tensor", "dynamic": False}),
    ("kv_fp8_head", {"type": "float", "strategy": "attn_head", "dynamic": False}),
    ("kv_int8_token", {"type": "int", "strategy": "token", "dynamic": True}),
])
def test_compressed_tensors_carries_the_kv_cache_scheme(tmp_path, cand, args):
    cfg = export(_attention_plan((cand, cand)), "compressed-tensors", tmp_path / "ct.json")
    assert cfg["kv_cache_scheme"] == {"num_bits": 8, "symmetric": True, **args}
    names = [t for g in cfg["config_groups"].values() for t in g["targets"]] + cfg["ignore"]
    assert not any("cache" in n or "matmul" in n for n in names)  # no module of the checkpoint's model
    ct = pytest.importorskip("compressed_tensors.quantization")
    parsed = ct.QuantizationConfig.model_validate(cfg)
    kv = parsed.kv_cache_scheme
    assert (kv.num_bits, kv.type, kv.strategy, kv.dynamic) == (8, args["type"], args["strategy"], args["dynamic"])
    assert ct.QuantizationConfig.model_validate(export(plan_with(["fp8"]), "compressed-tensors",
                                                       tmp_path / "no_kv.json")).kv_cache_scheme is None


def test_compressed_tensors_refuses_per_layer_kv_and_matmuls(tmp_path):
    with pytest.raises(ValueError, match=r"one kv_cache_scheme for the whole model.*base: model\.layers\.1\.self_attn"
                                         r"\.k_cache.*kv_fp8_head: model\.layers\.0\.self_attn\.k_cache"):
        export(_attention_plan(("kv_fp8_head", "base")), "compressed-tensors", tmp_path / "ct.json")
    with pytest.raises(ValueError, match="kv_fp8: .*kv_int8_token: "):
        export(_attention_plan(("kv_fp8", "kv_int8_token")), "compressed-tensors", tmp_path / "ct.json")
    with pytest.raises(ValueError, match=r"no scheme for attention's matmuls.*layers\.0\.self_attn\.matmul_qk"):
        export(_attention_plan(mm="mm_fp8"), "compressed-tensors", tmp_path / "ct.json")
    with pytest.raises(ValueError, match="no kv_cache_scheme for candidate 'kv_fp8_gaudi2'"):
        export(_attention_plan(("kv_fp8_gaudi2",) * 2), "compressed-tensors", tmp_path / "ct.json")
    assert not (tmp_path / "ct.json").exists()


INC_LOAD = """
import json, re, sys
from neural_compressor.torch.quantization import FP8Config
cfg = FP8Config.from_json_file(sys.argv[1])
print(json.dumps({"allow": list(cfg.allowlist["names"]), "block": list(cfg.blocklist["names"])}))
"""


def test_inc_names_attention_matmuls_and_kv_cache_as_optimum_habana(tmp_path):
    import importlib.util
    import subprocess
    import sys
    plan = _attention_plan(("kv_fp8_gaudi2", "base"), mm="mm_fp8_gaudi2")
    plan.mapping.update({n: "fp8_gaudi2" for n, c in plan.mapping.items() if c == "fp8"})
    cfg = export(plan, "inc", tmp_path / "inc.json")
    assert cfg["scale_method"] == "maxabs_hw"
    names = [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in
             ("q_proj", "matmul_qk", "matmul_av", "k_cache", "v_cache")]
    allowed = {n for n in names if any(re.search(p, n) for p in cfg["allowlist"]["names"])}
    blocked = {n for n in names if any(re.search(p, n) for p in cfg["blocklist"]["names"])}
    assert allowed == {n for n in names if plan.mapping[n] != "base"} == {
        ATT.format(0) + "q_proj", ATT.format(1) + "q_proj", ATT.format(0) + "matmul_qk", ATT.format(1) + "matmul_qk",
        ATT.format(0) + "k_cache", ATT.format(0) + "v_cache"}
    assert blocked == set(names) - allowed
    with pytest.raises(ValueError, match=r"INC FP8 export runs .*this plan uses \['fp8', 'kv_fp8_head'\]"):
        export(_attention_plan(), "inc", tmp_path / "x.json")
    if importlib.util.find_spec("neural_compressor") is None:
        pytest.skip("neural-compressor-pt is not installed")
    r = subprocess.run([sys.executable, "-c", INC_LOAD, str(tmp_path / "inc.json")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded == {"allow": cfg["allowlist"]["names"], "block": cfg["blocklist"]["names"]}
