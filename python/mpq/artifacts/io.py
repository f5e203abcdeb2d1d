"""Versioned artifact files without pickle, and the one atomic writer every file mpq writes goes through.

An .npz artifact holds a JSON ``meta`` record (with ``format`` and ``version`` keys) beside plain numeric arrays;
SensitivityTable and GainTable read and write through ``save_npz``/``load_npz``, so a corrupt or foreign file is
refused the same way everywhere. ``atomic_file`` writes a temporary file beside the target and renames it over
the target only when the whole write succeeded: a crash or an error never leaves half a file, nor a stray
temporary, and never destroys what was there before."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from .. import __version__


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """``with atomic_file(path) as f: f.write(...)``: ``f`` is a new file in ``path``'s folder (text, UTF-8, for
    mode "w"; binary for "wb"), renamed over ``path`` when the block ends without an exception, removed when it
    raises. @raises FileNotFoundError when the folder does not exist."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    """``obj`` as indented JSON (NaN and Infinity refused: they are not JSON), written atomically."""
    text = json.dumps(obj, indent=1, allow_nan=False)  # before opening anything: a bad value writes nothing
    with atomic_file(path) as f:
        f.write(text + "\n")


def save_npz(path, kind: str, version: int, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes atomically (``atomic_file``)."""
    record = dict(meta, format=kind, version=version, mpq=__version__)
    payload = {"meta": np.frombuffer(json.dumps(record).encode(), np.uint8)}
    for name, arr in arrays.items():
        if name == "meta":
            raise ValueError("'meta' is reserved")
        payload[name] = np.asarray(arr)
    with atomic_file(path, "wb") as f:
        np.savez(f, **payload)


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
