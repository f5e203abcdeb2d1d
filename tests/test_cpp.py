"""Builds the torch-free C++ core with plain CMake (no Python module) and runs its ctest programs, then builds a
separate C++ project against the installed package with find_package(mpq). The same C++ tests run again in a second
build under AddressSanitizer + UndefinedBehaviorSanitizer (where the compiler supports them), and that build's
`mpq-solve` reads hundreds of damaged problem files: each must be solved or refused in one line, exactly as the
Python reader (`mpq solve`) decides."""
import os
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# a sanitizer's report must not pass for mpq-solve's own exit code 1 (bad input): give them codes of their own
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86:detect_leaks=1:abort_on_error=0",
                 "UBSAN_OPTIONS": "exitcode=87:halt_on_error=1:print_stacktrace=1"}


def run(cmd, cwd=None, env=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ctest(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-build")
    run(["cmake", "-S", str(ROOT), "-B", str(build), "-DBUILD_TESTING=ON", "-DCMAKE_BUILD_TYPE=Release"])
    run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)])
    out = run(["ctest", "--test-dir", str(build), "--output-on-failure"])
    assert "tests passed" in out


def sanitizers_work(cxx: str, tmp: Path) -> str:
    """'' when `cxx` builds working ASan + UBSan programs, else why not. Working means: a heap overflow (under ASan)
    and a signed overflow (under both, as the build below uses them) are caught at run time."""
    probes = [("heap-buffer-overflow", 86, ["-fsanitize=address"],  # alone: UBSan's object-size check came first
               "int main(int c, char**) { int* p = new int[4]; int r = p[c + 3]; delete[] p; return r; }"),
              ("runtime error", 87, SANITIZE,
               "#include <climits>\nint main(int c, char**) { int x = INT_MAX; x += c; return x == 0; }")]
    for expected, code, flags, source in probes:
        src = tmp / "probe.cpp"
        src.write_text(source)
        built = subprocess.run([cxx, "-O1", *flags, str(src), "-o", str(tmp / "probe")], capture_output=True,
                               text=True)
        if built.returncode != 0:
            return f"{cxx} cannot build with {' '.join(flags)}: {built.stderr.strip()[:200]}"
        ran = subprocess.run([str(tmp / "probe")], capture_output=True, text=True,
                             env={**os.environ, **SANITIZER_ENV})
        if ran.returncode != code or expected not in ran.stderr:
            return f"{cxx} with {' '.join(flags)} did not report a {expected} here (exit {ran.returncode})"
    return ""


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory):
    """A Debug build at -O1 of the core, its C++ tests and mpq-solve, under ASan + UBSan (nothing else: no Python
    module, no install). Skips where the compiler (CMake's choice: $CXX, else c++) has no working sanitizers."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        pytest.skip("no C++ compiler")
    why = sanitizers_work(cxx, tmp_path_factory.mktemp("sanitizer-probe"))
    if why:
        pytest.skip(why)
    build = tmp_path_factory.mktemp("cpp-asan")
    flags = " ".join(["-O1", "-g", "-fno-omit-frame-pointer", *SANITIZE])
    run(["cmake", "-S", str(ROOT), "-B", str(build), "-DBUILD_TESTING=ON", "-DCMAKE_BUILD_TYPE=Debug",
         f"-DCMAKE_CXX_COMPILER={cxx}", f"-DCMAKE_CXX_FLAGS_DEBUG={flags}",
         f"-DCMAKE_EXE_LINKER_FLAGS={SANITIZE[0]}"])
    run(["cmake", "--build", str(build), "-j", "2"])
    return build


def test_ctest_under_address_and_undefined_behaviour_sanitizers(sanitized_build):
    out = run(["ctest", "--test-dir", str(sanitized_build), "--output-on-failure"],
              env={**os.environ, **SANITIZER_ENV})
    assert "100% tests passed" in out, out


# --- mpq-solve on damaged problem files --------------------------------------------------------------------------

SEEDS = sorted((ROOT / "cpp" / "fuzz" / "corpus").glob("*.txt"))
# bytes a mutation inserts: the grammar's own, whitespace that C and Python split on differently, non-ASCII
INSERTS = b"0123456789.eE+-# \t\n\r\x00\x0b\x0c\x1c\x85\xa0\xffx"
TOKENS = [b"1e308", b"-1e308", b"1e-400", b"4.9e-324", b"9223372036854775807", b"9223372036854775808",
          b"-1", b"0x10", b"nan", b"1000000000", b"", b"#"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits: truncate, flip a bit, insert/delete/duplicate a byte, swap a token."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        i = rng.randrange(len(data) + 1)
        if kind == 0:
            data = data[:i]
        elif kind == 1 and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
        elif kind == 2:
            data = data[:i] + bytes([rng.choice(INSERTS)]) + data[i:]
        elif kind == 3:
            data = data[:i] + data[i + 1:]
        elif kind == 4 and data:
            i = min(i, len(data) - 1)
            data = data[:i] + data[i:i + 1] * rng.randint(2, 4) + data[i + 1:]
        else:
            toks = data.split(b" ")
            toks[rng.randrange(len(toks))] = rng.choice(TOKENS)
            data = b" ".join(toks)
    return data


def python_answer(path: Path, goal: list):
    """What `mpq solve` (the Python reader, then the solver) makes of the file: (status, objective) or 'refused'."""
    import mpq
    from mpq.cli.solve import read_problem
    try:
        gains, costs = read_problem(str(path))
        value = float(goal[1])
        sol = mpq.solve_mckp(gains, costs, value if goal[0] == "--budget" else None,
                             min_gain=value if goal[0] == "--min-gain" else None, time_limit=10)
    except ValueError:
        return "refused"
    return sol.status, (sol.objective if sol.choice.size else None)


def test_mpq_solve_solves_or_refuses_every_damaged_file_as_the_python_reader_does(tmp_path, request):
    """300 seeded mutations of the fuzz seed corpus. mpq-solve (the sanitized build where there is one) must exit
    0/2/3 with a status, or 1 with one line on stderr; never crash, hang or trip a sanitizer; and accept exactly
    what the Python reader accepts, with the same status and objective."""
    try:
        exe = request.getfixturevalue("sanitized_build") / "mpq-solve"
    except pytest.skip.Exception:
        exe = shutil.which("mpq-solve")
        if exe is None:
            pytest.skip("neither a sanitized build nor an installed mpq-solve")
    rng = random.Random(17)
    cases = []
    for k in range(300):
        path = tmp_path / f"case{k}.txt"
        path.write_bytes(mutate(rng.choice(SEEDS).read_bytes(), rng))
        cases.append((path, ["--budget", "5"] if k % 4 else ["--min-gain", "3"]))

    def solve(case):
        path, goal = case
        try:
            return subprocess.run([str(exe), str(path), *goal, "--time-limit", "10"], capture_output=True,
                                  timeout=60, env={**os.environ, **SANITIZER_ENV})
        except subprocess.TimeoutExpired:
            return None

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(solve, cases))
    codes = {"optimal": 0, "infeasible": 2, "limit": 3}
    refused = 0
    for (path, goal), r in zip(cases, results):
        where = f"{path.name} = {path.read_bytes()!r} {' '.join(goal)}"
        assert r is not None, f"mpq-solve hung on {where}"
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        expected = python_answer(path, goal)
        if expected == "refused":
            refused += 1
            assert r.returncode == 1 and re.fullmatch(r"mpq-solve: [^\n]+\n", err), (where, r.returncode, err)
            continue
        status, objective = expected
        assert r.returncode == codes[status] and not err, (where, r.returncode, err)
        fields = dict(line.split(" ", 1) for line in out.splitlines())
        assert fields["status"] == status, (where, out)
        if objective is not None:
            assert float(fields["objective"]) == objective, (where, out, objective)
    assert 40 < refused < 260  # the mutations exercise both outcomes


def test_mpq_solve_names_a_missing_file_and_a_directory_in_one_line(tmp_path):
    exe = shutil.which("mpq-solve")
    if exe is None:
        pytest.skip("the mpq-solve executable is not installed")
    for path, message in ((tmp_path / "missing.txt", "no such file"), (tmp_path, "is a directory, not a file")):
        r = subprocess.run([exe, str(path), "--budget", "1"], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr == f"mpq-solve: {path}: {message}\n", r.stderr
