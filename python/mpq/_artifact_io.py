"""Versioned artifact files without pickle: an .npz holding a JSON ``meta`` record (with ``format`` and
``version`` keys) beside plain numeric arrays. Every artifact class (SensitivityTable, GainTable, Plan) reads and
writes through these two functions, so a corrupt or foreign file is refused the same way everywhere."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from . import __version__


def save_npz(path, kind: str, version: int, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes atomically (a temporary file renamed over ``path``), so a crash never leaves half a file behind."""
    record = dict(meta, format=kind, version=version, mpq=__version__)
    payload = {"meta": np.frombuffer(json.dumps(record).encode(), np.uint8)}
    for name, arr in arrays.items():
        if name == "meta":
            raise ValueError("'meta' is reserved")
        payload[name] = np.asarray(arr)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_npz(path, kind: str, max_version: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Returns (meta, arrays). @raises ValueError naming the file when it is not a ``kind`` file this mpq reads."""
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("an .npy array, not an .npz archive")
        with loaded as z:
            meta = json.loads(z["meta"].tobytes())
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable {kind} file ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != kind:
        raise ValueError(f"{path}: holds {meta.get('format') if isinstance(meta, dict) else '?'!r}, not a {kind}")
    version = meta.get("version")
    if not isinstance(version, int) or not 1 <= version <= max_version:
        raise ValueError(f"{path}: {kind} version {version!r} is not one this mpq reads (1..{max_version})")
    return meta, arrays
