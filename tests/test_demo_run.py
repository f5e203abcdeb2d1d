"""`mpq run` end to end on a tiny saved Llama: the candidates it chooses by measurement, both phases, and the
files it writes (the SmolLM2 default is not installed in CI; tests/test_run_cli.py checks its clear error)."""
import json

import pytest

import mpq

from _cli_model import save_tiny_causal_lm
from mpq.demo_run import RunSettings, run


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


def small(lm, out, **kw):
    return RunSettings(out_dir=out, model=str(lm), seq_len=32, calib_windows=4, eval_windows=2, batch_size=2,
                       front_points=4, measured_points=2, timing_tokens=16, profile_repeats=3, timing_repeats=3,
                       progress=False, **kw)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_run_writes_its_artifacts_and_measures_the_phase(lm, tmp_path, phase, capsys):
    summary = run(small(lm, tmp_path / "out", candidates=("int8", "w8a16"), phase=phase))
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"sensitivity.npz", "gains.npz", "plan.json", "report.html", "summary.json"} <= names
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    gains = mpq.GainTable.load(tmp_path / "out" / "gains.npz")
    assert gains.phase == phase and gains.meta["implementations"]
    plan = mpq.Plan.load(tmp_path / "out" / "plan.json")
    assert set(plan.implementations) == set(plan.quantized)
    assert [r["name"] for r in summary["results"]][:3] == ["base", "all int8", "chosen plan"]
    assert all(r["seconds"] > 0 for r in summary["results"])
    # the report says which share of the weights the layers cover: printed, on the page, in summary.json
    coverage = mpq.Coverage.from_dict(mpq.SensitivityTable.load(tmp_path / "out" / "sensitivity.npz").info["coverage"])
    assert summary["coverage"] == coverage.to_dict() and coverage.summary().startswith("covered ")
    assert coverage.summary() in capsys.readouterr().out
    assert coverage.summary() in (tmp_path / "out" / "report.html").read_text()


def test_auto_candidates_are_measured_and_printed(lm, tmp_path, capsys):
    import torch
    from mpq.data import load_causal_lm
    from mpq.profiling.paying import paying_candidates
    model, _ = load_causal_lm(str(lm))
    ids = torch.randint(0, 200, (1, 16))
    paying, probe = paying_candidates(model, {"input_ids": ids}, "prefill", pool=("int8", "w8a16", "bf16"))
    assert set(probe["speedups"]) == {"int8", "w8a16", "bf16"} and probe["rows"] == 16
    assert [p.candidate for p in paying] == [c for c, s in probe["speedups"].items() if s >= 1.1]
    run(small(lm, tmp_path / "auto"))
    err = capsys.readouterr().err
    assert "speed of each candidate against fp32" in err
    chosen = mpq.SensitivityTable.load(tmp_path / "auto" / "sensitivity.npz").candidates
    assert f"candidates: {', '.join(chosen)} (" in err or f"taking the least slow, {chosen[0]}" in err


def test_probe_times_every_layer_of_the_shape_in_turn():
    # as the model's pass meets them, weights from memory: not one layer warm in the cache again and again
    import torch
    from _tiny_models import tiny_llama
    from mpq.profiling.paying import paying_candidates
    model = tiny_llama(layers=3)   # 32 -> 64 holds most multiply-adds: gate, up (x3) and lm_head
    _, probe = paying_candidates(model, {"input_ids": torch.randint(0, 64, (1, 8))}, "prefill", pool=("int8",),
                                 repeats=2)
    same = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and (m.in_features, m.out_features) == (32, 64)]
    assert (probe["in_features"], probe["out_features"]) == (32, 64) and len(same) == 7
    assert probe["layers"] == 7 and probe["layer"] == same[0] and probe["rows"] == 8


def test_probe_takes_layers_up_to_its_byte_limit(monkeypatch):
    import torch
    from _tiny_models import tiny_llama
    from mpq.profiling import paying
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 64, (1, 16))
    _, whole = paying.paying_candidates(model, {"input_ids": ids}, "decode", pool=("int8",), repeats=2)
    k, n = whole["in_features"], whole["out_features"]
    monkeypatch.setattr(paying, "PROBE_BYTES", 4 * k * n * 2 + 1)   # room for two layers' float32 weights
    _, two = paying.paying_candidates(model, {"input_ids": ids}, "decode", pool=("int8",), repeats=2)
    monkeypatch.setattr(paying, "PROBE_BYTES", 1)                   # less than one: still the first layer
    _, one = paying.paying_candidates(model, {"input_ids": ids}, "decode", pool=("int8",), repeats=2)
    assert whole["layers"] > 2 and two["layers"] == 2 and one["layers"] == 1
    assert one["layer"] == two["layer"] == whole["layer"] and one["rows"] == 1


def test_probe_of_a_bf16_model_is_against_bf16(monkeypatch):
    # the model as loaded is the baseline: bf16 is no candidate of a bf16 model, and the byte limit counts its
    # 2-byte weights
    import torch
    from _tiny_models import tiny_llama
    from mpq.profiling import paying
    model = tiny_llama(layers=3).to(torch.bfloat16)
    ids = torch.randint(0, 64, (1, 8))
    _, probe = paying.paying_candidates(model, {"input_ids": ids}, "prefill", pool=("int8", "bf16"), repeats=2)
    assert probe["base"] == "bf16" and set(probe["speedups"]) == {"int8"}
    monkeypatch.setattr(paying, "PROBE_BYTES", 2 * 32 * 64 * 2)   # two layers' bf16 weights
    _, two = paying.paying_candidates(model, {"input_ids": ids}, "prefill", pool=("int8",), repeats=2)
    assert two["layers"] == 2


def test_smoothquant_joins_int8_only():
    from mpq.demo_run import with_smoothquant
    assert with_smoothquant(("w4a16", "int8", "bf16")) == ("w4a16", "int8", "int8_sq", "bf16")
    assert with_smoothquant(("bf16", "w8a16")) == ("bf16", "w8a16")
    assert with_smoothquant(("int8", "int8_sq")) == ("int8", "int8_sq")
