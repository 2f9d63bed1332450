"""The one atomic writer: every artifact is written to a temporary file beside its final
path and renamed into place, so a kill at any point leaves either the old file or the
new one, never half of one. Disk-full and permission errors name the path.

Imports nothing from less_lab but ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from less_lab.errors import StorageError


@contextlib.contextmanager
def atomic_path(path: str | Path, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Whatever the body writes there replaces ``path`` in one ``os.replace``; an exception
    (or a kill) leaves ``path`` untouched and the temporary file removed (or, after a
    kill, a ``.<name>.*.tmp`` file that the next write of ``path`` removes). ``need``:
    the bytes the write takes, named when the disk is full."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)  # left by a write that was killed before its rename
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise storage_error(err, path, need) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def storage_error(err: OSError, path: str | Path, need: int | None = None) -> OSError:
    """``err`` as a :class:`StorageError` naming ``path`` (disk full, with the bytes
    ``need``ed when known; read-only; no permission); other OS errors come back unchanged."""
    if isinstance(err, StorageError):
        return err
    if err.errno == errno.ENOSPC:
        free = _free_bytes(Path(path).parent)
        needed = "" if need is None else f"; {need} bytes needed"
        return StorageError(
            errno.ENOSPC,
            f"{path}: no space left on the device ({free / 2**20:.0f} MiB free{needed})",
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(err.errno, f"{path}: cannot write ({err.strerror})")
    return err


def _free_bytes(folder: Path) -> int:
    try:
        return os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    except OSError:
        return 0


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    with atomic_path(path, need=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON with sorted keys, atomically."""
    return write_text(path, json.dumps(data, indent=1, sort_keys=True))


def write_parquet(path: str | Path, frame: Any) -> Path:
    """Write a polars frame to parquet atomically."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return Path(path)
