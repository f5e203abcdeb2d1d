"""Every subcommand given a path that is not what it wants (missing, a folder, an empty file, a file where a model
folder belongs): one line on stderr naming the path, exit code 2 (bad input), no traceback; `mpq solve` exits 1,
since its 2 means infeasible (as `mpq-solve`'s does)."""
import contextlib
import io
import subprocess
import sys

import pytest

from mpq.cli import main


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "model.txt").write_text("not a model")
    (tmp_path / "mapping.json").write_text("{}")  # a valid bare plan: keeps every layer
    return {"missing": tmp_path / "missing.json", "folder": tmp_path / "folder", "empty_json": tmp_path / "empty.json",
            "empty_npz": tmp_path / "empty.npz", "model_txt": tmp_path / "model.txt", "out": tmp_path / "out",
            "mapping": tmp_path / "mapping.json"}


CASES = [  # (argv with {kind} placeholders, the path kind the message must name, what it must say)
    (["calibrate", "{missing}", "-o", "{out}"], "missing", "no such folder or file"),
    (["calibrate", "{folder}", "-o", "{out}"], "folder", "config.json"),
    (["calibrate", "{model_txt}", "-o", "{out}"], "model_txt", ".gguf"),
    (["calibrate", "--table", "{missing}", "--report"], "missing", "no such file"),
    (["calibrate", "--table", "{folder}", "--report"], "folder", "directory"),
    (["calibrate", "--table", "{empty_npz}", "--report"], "empty_npz", "empty"),
    (["profile", "{missing}", "-o", "{out}"], "missing", "no such folder or file"),
    (["profile", "{folder}", "-o", "{out}"], "folder", "config.json"),
    (["select", "{missing}", "{missing}", "--max-loss-mse", "1"], "missing", "no such file"),
    (["select", "{folder}", "{folder}", "--max-loss-mse", "1"], "folder", "directory"),
    (["select", "{empty_npz}", "{empty_npz}", "--max-loss-mse", "1"], "empty_npz", "empty"),
    (["apply", "{missing}", "{mapping}"], "missing", "no such folder or file"),
    (["apply", "{folder}", "{mapping}"], "folder", "config.json"),
    (["apply", "{folder}", "{missing}"], "missing", "no such file"),
    (["apply", "{folder}", "{folder}"], "folder", "directory"),
    (["export", "{missing}", "mpq", "{out}"], "missing", "no such file"),
    (["export", "{folder}", "mpq", "{out}"], "folder", "directory"),
    (["export", "{empty_json}", "mpq", "{out}"], "empty_json", "empty"),
    (["report", "{missing}"], "missing", "no such file"),
    (["report", "{folder}"], "folder", "directory"),
    (["report", "{empty_json}"], "empty_json", "empty"),
    (["report", "{empty_npz}"], "empty_npz", "empty"),
    (["run", "--model", "{missing}", "--out", "{out}"], "missing", "no such folder or file"),
    (["run", "--model", "{folder}", "--out", "{out}"], "folder", "config.json"),
    (["solve", "{missing}", "--budget", "1"], "missing", "no such file"),
    (["solve", "{folder}", "--budget", "1"], "folder", "is a directory"),
    (["solve", "{empty_json}", "--budget", "1"], "empty_json", "unexpected end of file"),
]


@pytest.mark.parametrize("argv,kind,says", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_path_is_one_line_naming_it_with_exit_code_2(paths, argv, kind, says):
    code, err = cli(*[a.format(**paths) if "{" in a else a for a in argv])
    assert code == (1 if argv[0] == "solve" else 2), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"mpq {argv[0]}: error: ") and str(paths[kind]) in err and says in err, err
    assert not paths["out"].exists()


def test_the_shell_sees_the_same_one_line_and_exit_codes(paths):
    for command, code in ((["report", str(paths["folder"])], 2), (["solve", str(paths["folder"]), "--budget", "1"], 1),
                          (["solve", str(paths["folder"])], 1)):  # the last: argparse's usage error, not 2
        r = subprocess.run([sys.executable, "-m", "mpq", *command], capture_output=True, text=True, timeout=120)
        assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1].startswith(f"mpq {command[0]}: error: "), r.stderr
