"""The two command lines (`mpq solve`, `mpq-solve`) on the documented file format, and the C++ consumer project
built against the installed package (cpp/tests/consumer)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mpq
from mpq.cli import main
from mpq.selection.solvers.instances import generate, threshold

ROOT = Path(__file__).resolve().parents[1]

SMALL = """# three layers: per group the item count, then `gain cost` pairs
3
3  0 0   2 1   3 4
2  0 0   4 3
3  0 0   1 1   5 6   # the 5-gain item costs too much for budget 5
"""


def write_problem(path, gains, costs):
    lines = [str(len(gains))]
    for p, c in zip(gains, costs):
        lines.append(f"{len(p)} " + " ".join(f"{a!r} {b!r}" for a, b in zip(map(float, p), map(float, c))))
    path.write_text("\n".join(lines) + "\n")
    return path


def mpq_solve_exe():
    exe = shutil.which("mpq-solve") or os.path.join(os.path.dirname(sys.executable), "mpq-solve")
    if not os.path.exists(exe):
        pytest.skip("the mpq-solve executable is not installed")
    return exe


def test_python_cli_solves_the_documented_example(tmp_path, capsys):
    f = tmp_path / "small.txt"
    f.write_text(SMALL)
    assert main(["solve", str(f), "--budget", "5"]) == 0
    out = capsys.readouterr().out
    assert "status optimal" in out and "objective 7.0" in out and "choice 1 1 1" in out
    assert main(["solve", str(f), "--budget", "-1"]) == 2
    assert "minimum feasible budget 0" in capsys.readouterr().out
    assert main(["solve", str(f), "--min-gain", "9"]) == 0
    out = capsys.readouterr().out  # least cost reaching gain 9: 0 + 4 + 5 at cost 0 + 3 + 6
    assert "cost 9.0" in out and "choice 0 1 2" in out


@pytest.mark.parametrize("text,match", [
    ("2\n1 0 0\n", "unexpected end of file: expected the item count of group 1"),
    ("1\n0\n", "group 0 is empty"),
    ("1\n1 0 x\n", "line 2: the cost of item 0 of group 0: 'x' is not a decimal number"),
    ("1\n1 0 -1\n", "group 0: cost -1.0 is negative"),
    ("1\n1 nan 1\n", "line 2: the gain of item 0 of group 0: 'nan' is not a decimal number"),
    ("1\n1 0 0 7\n", "unexpected '7' after the last group"),
])
def test_python_cli_bad_input_exits_1_with_a_message(tmp_path, capsys, text, match):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    assert main(["solve", str(f), "--budget", "1"]) == 1
    assert match in capsys.readouterr().err


def test_cpp_cli_exit_codes_and_output(tmp_path):
    exe = mpq_solve_exe()
    f = tmp_path / "small.txt"
    f.write_text(SMALL)
    run = lambda *a: subprocess.run([exe, str(f), *a], capture_output=True, text=True, timeout=60)
    r = run("--budget", "5")
    assert r.returncode == 0 and "objective 7" in r.stdout and "choice 1 1 1" in r.stdout
    r = run("--budget", "-0.5")
    assert r.returncode == 2 and "minimum feasible budget 0" in r.stdout
    r = run("--budget", "abc")
    assert r.returncode == 1 and "--budget: 'abc' is not a decimal number" in r.stderr
    r = run()
    assert r.returncode == 1 and "give exactly one of --budget and --min-gain" in r.stderr
    (tmp_path / "bad.txt").write_text("2\n1 0 0\n1 0 -3\n")
    r = subprocess.run([exe, str(tmp_path / "bad.txt"), "--budget", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and "group 1" in r.stderr and "negative" in r.stderr


def test_cpp_cli_matches_python_and_reports_limits(tmp_path):
    exe = mpq_solve_exe()
    g, c = generate(224, 6, 0)
    budget = threshold(c, 0.3)
    f = write_problem(tmp_path / "llm.txt", g, c)
    r = subprocess.run([exe, str(f), "--budget", repr(budget)], capture_output=True, text=True, timeout=60)
    fields = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    sol = mpq.selection.solvers.dispatch.solve_mckp(g, c, budget)
    assert r.returncode == 0 and float(fields["objective"]) == sol.objective
    assert list(map(int, fields["choice"].split())) == sol.choice.tolist()
    g, c = generate(224, 6, 0, family="uniform_scorr")
    f = write_problem(tmp_path / "hard.txt", g, c)
    r = subprocess.run([exe, str(f), "--budget", repr(threshold(c, 0.3)), "--max-states", "1000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "status limit" in r.stdout and "state limit" in r.stdout


def _cmake_dir():
    try:
        return mpq.cmake_dir()
    except FileNotFoundError:  # editable installs keep the compiled parts next to _core, not next to __init__
        here = Path(mpq._core.__file__).parent
        for lib in ("lib", "lib64"):
            if (here / lib / "cmake" / "mpq" / "mpq-config.cmake").is_file():
                return str(here / lib / "cmake" / "mpq")
        pytest.skip("mpq's CMake package is not installed")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cpp_consumer_builds_against_the_installed_package(tmp_path):
    build = tmp_path / "consumer"
    src = ROOT / "cpp" / "tests" / "consumer"
    cfg = subprocess.run(["cmake", "-S", str(src), "-B", str(build), f"-Dmpq_DIR={_cmake_dir()}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout + b.stderr
    exe = build / "mckp_consumer"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "status optimal objective 7" in r.stdout


GRAMMAR_CASES = [  # (file text, options, what the message names): the same refusal from both readers
    ("1\n1 1\x00garbage 0\n", ["--budget", "1"], "not a decimal number"),
    ("1\n1 0x1p3 0\n", ["--budget", "1"], "not a decimal number"),
    ("1\n1 1e-400 0\n", ["--budget", "1"], "too small for a double"),
    ("1\n1 1e400 0\n", ["--budget", "1"], "beyond the range of a double"),
    ("1\n1 inf 0\n", ["--budget", "1"], "not a decimal number"),
    ("1\n1_0 1 0\n", ["--budget", "1"], "not an integer"),
    ("1\n1 1 0\n", ["--budget", "1", "--time-limit", "0"], "--time-limit.*must be > 0"),
    ("1\n1 1 0\n", ["--budget", "0x10"], "--budget.*not a decimal number"),
]


@pytest.mark.parametrize("text,options,match", GRAMMAR_CASES)
def test_both_readers_share_one_grammar(tmp_path, capsys, text, options, match):
    import re
    path = tmp_path / "p.txt"
    path.write_bytes(text.encode())
    assert main(["solve", str(path), *options]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err
    exe = mpq_solve_exe()
    r = subprocess.run([exe, str(path), *options], capture_output=True, text=True)
    assert r.returncode == 1 and re.search(match, r.stderr), r.stderr


def test_subnormal_and_signed_decimals_read_alike(tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("2\n2 +0 0 1e-310 .5\n1 -0.0 0.\n")
    assert main(["solve", str(path), "--budget", "1"]) == 0
    out = capsys.readouterr().out
    exe = mpq_solve_exe()
    r = subprocess.run([exe, str(path), "--budget", "1"], capture_output=True, text=True)
    value = lambda text: float(text.splitlines()[1].split()[1])  # "objective X": the same double from both
    assert r.returncode == 0 and value(out) == value(r.stdout) == 1e-310, (out, r.stdout)
