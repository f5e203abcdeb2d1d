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
    with pytest.raises(ValueError, match=r"INC FP8 export runs \['fp8_gaudi2'\].*int8"):
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
