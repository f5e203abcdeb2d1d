"""mpq: choose the numeric format of every layer of a neural network under a loss budget.

Public names are listed in ``__all__`` and load on first use, so that tools which only re-solve saved tables
(``mpq select``) never pay for importing torch. Modules and names starting with ``_`` and ``mpq.reference`` (the
plain-torch definitions the tests compare against) are not part of the stable surface.
"""
from __future__ import annotations

import importlib as _importlib
import os as _os

from ._core import __version__
from ._moved import install as _install_moved

_install_moved(__name__)

# public name -> module that defines it (modules are not named like their functions, so that importing a module
# never shadows the function of the same name on the package)
_LAZY = {
    "FORMATS": "formats", "fake_quantize": "formats",
    "CANDIDATES": "candidates", "Candidate": "candidates",
    "calibrate": "calibration", "causal_lm_loss": "calibration", "SensitivityTable": "artifacts",
    "model_coverage": "calibration", "Coverage": "coverage",
    "ChannelTable": "artifacts", "ChannelPlan": "artifacts",
    "partition": "partitioning", "Subgraph": "partitioning", "profile": "profiling", "GainTable": "artifacts",
    "apply": "application", "export": "application", "save_quantized": "application", "Plan": "artifacts",
    "select": "selection", "pareto": "selection",
    "MckpSolution": "selection.solvers", "solve_mckp": "selection.solvers", "sweep_mckp": "selection.solvers",
}

__all__ = sorted(_LAZY) + ["__version__", "cmake_dir"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mpq' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


def cmake_dir() -> str:
    """The folder holding mpq-config.cmake: ``cmake -Dmpq_DIR=$(python -c 'import mpq; print(mpq.cmake_dir())')``
    lets a C++ project ``find_package(mpq)`` and link ``mpq::core`` without Python."""
    from . import _core
    here = _os.path.dirname(__file__)
    # the installed files sit beside the extension module (an editable install keeps them apart from the sources)
    for root in dict.fromkeys([_os.path.dirname(_core.__file__), here]):
        for lib in ("lib", "lib64"):
            path = _os.path.join(root, lib, "cmake", "mpq")
            if _os.path.isfile(_os.path.join(path, "mpq-config.cmake")):
                return path
    raise FileNotFoundError(f"mpq's CMake package is not installed under {here} (reinstall with `pip install .`)")
