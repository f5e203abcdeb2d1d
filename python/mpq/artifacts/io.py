"""Versioned artifact files without pickle, and the one atomic writer every file mpq writes goes through.

An .npz artifact holds a JSON ``meta`` record (with ``format`` and ``version`` keys) beside plain numeric arrays;
SensitivityTable and GainTable read and write through ``save_npz``/``load_npz``, so a corrupt or foreign file is
refused the same way everywhere. ``atomic_file`` writes a temporary file beside the target and renames it over
the target only when the whole write succeeded: a crash or an error never leaves half a file, nor a stray
temporary, and never destroys what was there before.

Reading trusts nothing in the file: ``load_npz`` reads the zip archive itself, member by member, and checks each
member's compression method, flags and the shape and dtype its .npy header declares against the member's size,
the archive's size and ``MAX_ARRAY_BYTES`` before it reads a byte of data; ``read_json`` refuses what is not JSON
(NaN, Infinity) and what is nested deeper than ``MAX_DEPTH``. Every defect of the content is one ``ValueError``
naming the file and what is wrong; the ``take``/``as_*``/``array`` helpers check the types of a record's fields
the same way. A missing file stays ``FileNotFoundError``; a directory is a ``ValueError`` saying so."""
from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import tokenize
import warnings
import zipfile
import zlib
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .. import __version__

MAX_ARRAY_BYTES = 1 << 32       # 4 GiB of arrays in one file: far beyond any table mpq writes
MAX_META_BYTES = 1 << 26        # 64 MiB of JSON meta record
MAX_MEMBERS = 1 << 17           # arrays in one .npz
MAX_DEPTH = 64                  # nesting of JSON objects and lists
DEFLATE_RATIO = 1100            # deflate expands at most ~1032:1; a member claiming more is a forged size
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")
_DTYPE_KINDS = "biuf"           # bool, signed and unsigned integers, floats: all an artifact holds
# what the zip and zlib layers raise on a damaged archive (zipfile itself raises RuntimeError for an encrypted
# member, NotImplementedError for an unknown method, struct.error/EOFError/OverflowError on truncated records)
_ARCHIVE_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                   struct.error, OverflowError)


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


def read_bytes(path, what: str) -> bytes:
    """The whole file. @raises FileNotFoundError when it is missing; ValueError when it is a directory."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a {what} file") from None


def read_json(path, what: str):
    """The JSON value in file ``path`` (UTF-8), refusing NaN and Infinity (which ``write_json`` never writes) and
    nesting deeper than ``MAX_DEPTH``. @raises ValueError naming the file for anything but a missing file."""
    path = os.fspath(path)
    raw = read_bytes(path, what)
    if not raw.strip():
        raise ValueError(f"{path}: not a readable {what} file (it is empty)")
    return parse_json(raw, f"{path}: not a readable {what} file", allow_nan=False)


def parse_json(raw, where: str, allow_nan: bool = True):
    """``json.loads(raw)`` with every failure (bad syntax or encoding, a number too long, nesting too deep) a
    ValueError starting with ``where``."""
    def constant(name):
        raise ValueError(f"{name} is not JSON")
    try:
        value = json.loads(raw, **({} if allow_nan else {"parse_constant": constant}))
    except RecursionError:
        raise ValueError(f"{where} (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits, NaN
        raise ValueError(f"{where} ({e})") from None
    check_depth(value, where)
    return value


def check_depth(value, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuses lists and objects nested deeper than ``limit`` (what copies and re-saves them recurses)."""
    stack = [(value, 1)]
    while stack:
        x, depth = stack.pop()
        items = x.values() if isinstance(x, dict) else x if isinstance(x, list) else None
        if items is None:
            continue
        if depth > limit:
            raise ValueError(f"{where} (nested deeper than {limit} levels)")
        stack.extend((v, depth + 1) for v in items)


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
    """Returns (meta, arrays): the meta record (an object, format ``kind``, version 1..``max_version``) and the
    other members. @raises ValueError naming the file when it is not a ``kind`` file this mpq reads (directory,
    damaged archive, forged sizes, arrays that are not plain numbers); FileNotFoundError when it is missing."""
    path = os.fspath(path)
    arrays = read_npz(path, kind)
    meta = _meta(arrays.pop("meta", None), path, kind)
    if meta.get("format") != kind:
        raise ValueError(f"{path}: holds {brief(meta.get('format'))}, not a {kind}")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= max_version:
        raise ValueError(f"{path}: {kind} version {brief(version)} is not one this mpq reads (1..{max_version})")
    return meta, arrays


def npz_format(path, what: str = "mpq artifact") -> Optional[str]:
    """The ``format`` an .npz artifact's meta record names (None when it names none), reading only the record.
    @raises ValueError as ``load_npz`` does."""
    path = os.fspath(path)
    fmt = _meta(read_npz(path, what, only=("meta",)).get("meta"), path, what).get("format")
    return fmt if isinstance(fmt, str) else None


def read_npz(path, what: str, only: Optional[tuple[str, ...]] = None) -> dict[str, np.ndarray]:
    """{member name: array} of an .npz archive (only the members named ``only``, when given), every member's
    declared size checked before it is read. @raises ValueError naming the file (and the member)."""
    path = os.fspath(path)
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open(path, "rb"))
        except IsADirectoryError:
            raise ValueError(f"{path}: is a directory, not a {what} file") from None
        try:
            size = os.fstat(f.fileno()).st_size
            if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                raise _Refused("an .npy array, not an .npz archive")
            if not size:
                raise _Refused("the file is empty")
            f.seek(0)
            z = stack.enter_context(zipfile.ZipFile(f))
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise _Refused(f"{len(infos)} members, more than the {MAX_MEMBERS} an artifact may have")
            out: dict[str, np.ndarray] = {}
            budget = [MAX_ARRAY_BYTES]
            for info in infos:
                name = info.filename
                if not name.endswith(".npy"):
                    raise _Refused(f"member {name!r} is not an .npy array")
                key = name[:-4]
                if key in out:
                    raise _Refused(f"member {name!r} appears twice")
                if only is not None and key not in only:
                    continue
                try:
                    out[key] = _read_member(z, info, key, size, budget)
                except _Refused:
                    raise
                except _ARCHIVE_ERRORS as e:
                    raise _Refused(f"member {key!r}: {type(e).__name__}: {e}") from None
            return out
        except _Refused as e:
            raise ValueError(f"{path}: not a readable {what} file ({e})") from None
        except _ARCHIVE_ERRORS as e:
            raise ValueError(f"{path}: not a readable {what} file ({type(e).__name__}: {e})") from None


class _Refused(ValueError):
    """What ``read_npz`` found wrong, already in words."""


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, archive_size: int, budget: list) -> np.ndarray:
    where = f"member {key!r}"
    if info.flag_bits & 0x61:  # encrypted, patched or strongly encrypted: numpy writes none of these
        raise _Refused(f"{where}: zip flags {info.flag_bits:#x} (encrypted or patched data)")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"{where}: compression method {info.compress_type} (numpy writes stored or deflated)")
    if info.compress_size > archive_size:
        raise _Refused(f"{where}: {info.compress_size} compressed bytes in an archive of {archive_size}")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * DEFLATE_RATIO
    if info.file_size > limit + 1024:
        raise _Refused(f"{where}: declares {info.file_size} bytes, more than its {info.compress_size} "
                       "compressed bytes can hold")
    with z.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0
        else:
            raise _Refused(f"{where}: .npy format version {version} (numpy writes 1.0 and 2.0)")
        try:
            with warnings.catch_warnings():  # numpy warns when it had to re-parse the header as Python 2's
                warnings.simplefilter("ignore")
                shape, fortran, dtype = header(m)
        except (TypeError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError, OverflowError) as e:
            raise _Refused(f"{where}: unreadable .npy header ({type(e).__name__})") from None
        header_bytes = m.tell()
        if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refused(f"{where}: dtype {dtype.str!r} is not plain numbers")
        if len(shape) > 32 or any(n < 0 for n in shape):
            raise _Refused(f"{where}: shape {shape} is not an array shape")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - header_bytes:
            raise _Refused(f"{where}: shape {shape} of {dtype.str} needs {nbytes} bytes, the member holds "
                           f"{max(info.file_size - header_bytes, 0)}")
        if nbytes > budget[0]:
            raise _Refused(f"{where}: {nbytes} bytes of arrays, past the {MAX_ARRAY_BYTES} an artifact may hold")
        budget[0] -= nbytes
        data = m.read(nbytes)
        if len(data) != nbytes or m.read(1):  # reading to the end also checks the member's CRC
            raise _Refused(f"{where}: holds {len(data)} bytes of data, its header declares {nbytes}")
    arr = np.frombuffer(bytearray(data), dtype=dtype) if nbytes else np.zeros(0, dtype)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _meta(arr: Optional[np.ndarray], path: str, what: str) -> dict:
    where = f"{path}: not a readable {what} file"
    if arr is None:
        raise ValueError(f"{where} (no 'meta' record)")
    if arr.dtype != np.uint8 or arr.ndim != 1 or arr.size > MAX_META_BYTES:
        raise ValueError(f"{where} ('meta' must be at most {MAX_META_BYTES} bytes of JSON, got {arr.dtype} "
                         f"{list(arr.shape)})")
    meta = parse_json(arr.tobytes(), f"{where}: the 'meta' record cannot be read")
    if not isinstance(meta, dict):
        raise ValueError(f"{where} (the 'meta' record is a JSON {type(meta).__name__}, not an object)")
    return meta


# --- typed fields: each check names where the value came from ----------------------------------------------------
_MISSING = object()


def take(record: Mapping, key: str, where: str, check: Callable[[Any, str], Any], default: Any = _MISSING):
    """``check(record[key], "WHERE: 'KEY'")``; ``default`` when the key is absent (a ValueError without one)."""
    if key not in record:
        if default is _MISSING:
            raise ValueError(f"{where}: lacks {key!r}")
        return default
    return check(record[key], f"{where}: {key!r}")


def _type_error(x, where: str, expected: str):
    return ValueError(f"{where} must be {expected}, got {type(x).__name__} {brief(x)}")


def brief(x) -> str:
    """repr(x), cut to 40 characters (a value quoted in an error message)."""
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def as_str(x, where: str) -> str:
    if not isinstance(x, str):
        raise _type_error(x, where, "a string")
    return x


def as_bool(x, where: str) -> bool:
    if not isinstance(x, bool):
        raise _type_error(x, where, "true or false")
    return x


def as_count(x, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise _type_error(x, where, "a whole number >= 0")
    return x


def as_number(x, where: str) -> float:
    """A JSON number (not a bool) as a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _type_error(x, where, "a number")
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{where} is too large a number") from None


def as_optional_number(x, where: str) -> Optional[float]:
    """null or a number (null: unknown)."""
    return None if x is None else as_number(x, where)


def as_object(x, where: str) -> dict:
    if not isinstance(x, dict):
        raise _type_error(x, where, "an object")
    return x


def as_names(x, where: str, unique: bool = True) -> tuple[str, ...]:
    """A list of strings (without repeats, when ``unique``) as a tuple."""
    if not isinstance(x, list) or not all(isinstance(s, str) for s in x):
        raise _type_error(x, where, "a list of strings")
    if unique and len(set(x)) != len(x):
        seen, twice = set(), []
        for s in x:
            if s in seen:
                twice.append(s)
            seen.add(s)
        raise ValueError(f"{where} names {sorted(set(twice))[:5]} more than once")
    return tuple(x)


def as_str_mapping(x, where: str, optional_values: bool = False) -> dict[str, str]:
    """An object of string -> string (or null, where ``optional_values``)."""
    if not isinstance(x, dict) or not all(isinstance(v, str) or (optional_values and v is None)
                                          for v in x.values()):
        raise _type_error(x, where, "an object of name -> name")
    return dict(x)


def array(arrays: Mapping[str, np.ndarray], key: str, where: str, kinds: str, shape: Optional[tuple] = None,
          ndim: Optional[int] = None, optional: bool = False) -> Optional[np.ndarray]:
    """Member ``key`` of ``arrays``, checked: dtype kind in ``kinds`` ("f" float, "iu" integer, "b" bool), and
    the exact ``shape`` (None entries: any length) or number of dimensions. @raises ValueError naming the member."""
    a = arrays.get(key)
    if a is None:
        if optional:
            return None
        raise ValueError(f"{where}: lacks the array {key!r}")
    names = {"f": "floating-point", "iu": "integer", "b": "boolean"}
    if a.dtype.kind not in kinds:
        raise ValueError(f"{where}: array {key!r} must be {names.get(kinds, kinds)}, got {a.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and a.ndim != ndim or shape is not None and any(
            want is not None and got != want for got, want in zip(a.shape, shape)):
        want_txt = ("[" + ", ".join("*" if s is None else str(s) for s in shape) + "]" if shape is not None
                    else f"{ndim}-dimensional")
        raise ValueError(f"{where}: array {key!r} must be {want_txt}, got shape {list(a.shape)}")
    return a
