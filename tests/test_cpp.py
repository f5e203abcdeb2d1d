"""Builds the torch-free C++ core with plain CMake (no Python module) and runs its ctest programs, then builds a
separate C++ project against the installed package with find_package(mpq)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def run(cmd, cwd=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ctest(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-build")
    run(["cmake", "-S", str(ROOT), "-B", str(build), "-DBUILD_TESTING=ON", "-DCMAKE_BUILD_TYPE=Release"])
    run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)])
    out = run(["ctest", "--test-dir", str(build), "--output-on-failure"])
    assert "tests passed" in out
