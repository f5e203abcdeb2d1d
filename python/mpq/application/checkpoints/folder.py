"""A checkpoint folder appears whole or not at all: it is built in a hidden sibling folder and renamed into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def check_target(folder) -> str:
    """The absolute path of ``folder``, which must not exist or be an empty folder, in a folder that exists.
    @raises ValueError naming what is in the way; FileNotFoundError when the parent folder is missing."""
    path = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{folder}: the folder {parent} does not exist")
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)):
        raise ValueError(f"{folder}: already exists and is not an empty folder; nothing written (choose a new "
                         "folder: a checkpoint is never mixed with files already there)")
    return path


@contextlib.contextmanager
def atomic_folder(folder):
    """``with atomic_folder(path) as tmp: write files into tmp``: ``tmp`` is renamed to ``path`` when the block
    ends without an exception, and removed with everything in it when it raises."""
    path = check_target(folder)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        yield tmp
        check_target(folder)  # something may have appeared there meanwhile: never replace it
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a checkpoint is an ordinary folder
        os.replace(tmp, path)  # an empty folder at ``path`` is replaced (POSIX rename)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
