"""Per-rank shards of a datastore built by several processes (torchrun).

Why its own module: a multi-process build writes each rank's rows into a private shard
(``<store>/shards/rank-NNNNN``) that rank 0 folds into the store, both at the end of a
build and when resuming one that was interrupted. Creating and merging shards is the one
part of the build that single-process users never touch, and its fault handling (which
shard files are trusted, in what order they are deleted) is easier to check on its own.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from less_lab._io import atomic_path
from less_lab.core.store_files import (
    ROW_FILES,
    SHARDS,
    RowWriter,
    allocate,
    check_sizes,
    memmaps,
)
from less_lab.errors import StoreCorruptError


def new_shard(shard: Path, rows: np.ndarray, dim: int, dtype: str) -> RowWriter:
    """A rank's private files for its ``rows`` (``done.bin`` is allocated last; a shard
    whose files do not all have their sizes is ignored) and a writer into them."""
    shutil.rmtree(shard, ignore_errors=True)
    shard.mkdir(parents=True)
    with atomic_path(shard / "rows.bin", need=8 * len(rows)) as tmp:
        rows.astype(np.int64).tofile(tmp)
    allocate(shard, len(rows), dim, dtype)
    return RowWriter(shard)


def merge_shards(path: Path, n: int, dim: int, dtype: str) -> None:
    """Copy the done rows of every rank's shard into the store, then delete the shard.

    Safe to interrupt: rows are marked done in the store only after their features are
    flushed there, a shard is deleted only after its rows are merged (``done.bin`` first,
    so a half-deleted shard is ignored), and a row already done is never copied again."""
    if not (path / SHARDS).exists():
        return
    files = memmaps(path, n, dim, dtype, "r+")
    for shard in sorted((path / SHARDS).iterdir()):
        if (shard / "done.bin").exists():
            _merge_one(shard, files, dim, dtype)
            (shard / "done.bin").unlink()
        shutil.rmtree(shard)
    shutil.rmtree(path / SHARDS)


def _merge_one(shard: Path, files: tuple[np.memmap, ...], dim: int, dtype: str) -> None:
    """Copy a shard's done rows (bytes and checksums, then done marks) into ``files``;
    the store verifies every done row against its checksum before finalising."""
    feats, stats, done, crc = files
    rows = np.fromfile(shard / "rows.bin", dtype=np.int64)
    m = len(rows)
    if m == 0:
        return
    try:
        check_sizes(shard, m, dim, dtype, ROW_FILES)
    except StoreCorruptError as err:
        warnings.warn(f"{err}: ignoring this shard, its rows will be recomputed", stacklevel=3)
        return
    s_feats, s_stats, s_done, s_crc = memmaps(shard, m, dim, dtype, "r")
    take = np.flatnonzero(np.asarray(s_done, dtype=bool) & ~np.asarray(done[rows], dtype=bool))
    step = max(1, (64 << 20) // max(1, dim * np.dtype(dtype).itemsize))
    for start in range(0, len(take), step):
        part = take[start : start + step]
        feats[rows[part]] = s_feats[part]
        stats[rows[part]] = s_stats[part]
        crc[rows[part]] = s_crc[part]
    feats.flush()
    stats.flush()
    crc.flush()
    done[rows[take]] = 1
    done.flush()
