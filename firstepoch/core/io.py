"""Atomic writes: a file is either the old one or the whole new one, never half of each."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import torch

from firstepoch.errors import FirstEpochError


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`.

    On any failure (disk full, an exception, Ctrl-C) the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise FirstEpochError(f"{path}: disk full while writing; the previous file is kept. "
                                  f"Free some space and try again") from exc
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj, path: str | Path) -> None:
    """`torch.save` atomically (write temp, fsync, rename)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def load_torch(path: str | Path, map_location="cpu"):
    """`torch.load` with `weights_only=True`: never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FirstEpochError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise FirstEpochError(f"{path}: not a readable firstepoch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc


def write_json(obj, path: str | Path) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
