"""mpq: choose the numeric format of every layer of a neural network under a loss budget.

Public names are listed in ``__all__``; modules and names starting with ``_`` and ``mpq.reference`` (the
plain-torch definitions the tests compare against) are not part of the stable surface.
"""
from __future__ import annotations

import os as _os

from ._core import __version__
from .formats import FORMATS, fake_quantize

__all__ = ["FORMATS", "__version__", "cmake_dir", "fake_quantize"]


def cmake_dir() -> str:
    """The folder holding mpq-config.cmake: ``cmake -Dmpq_DIR=$(python -c 'import mpq; print(mpq.cmake_dir())')``
    lets a C++ project ``find_package(mpq)`` and link ``mpq::core`` without Python."""
    here = _os.path.dirname(__file__)
    for lib in ("lib", "lib64"):
        path = _os.path.join(here, lib, "cmake", "mpq")
        if _os.path.isfile(_os.path.join(path, "mpq-config.cmake")):
            return path
    raise FileNotFoundError(f"mpq's CMake package is not installed under {here} (reinstall with `pip install .`)")
