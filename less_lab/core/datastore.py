"""The gradient datastore: projected per-example features on disk, built once, reused.

One directory per (split, checkpoint, feature kind, projection):

- ``settings.json``  what is being built (written first; resume checks it)
- ``ids.parquet``    example ids in row order
- ``features.bin``   (n, d) float32/float16 memmap
- ``stats.bin``      (n, 3) float32 memmap: loss, gradient norm, unprojected feature norm
- ``crc.bin``        (n,) uint32: CRC32 of each row's features + stats, written before
  its done mark; every done row is checked against it before a build resumes or finalises
- ``done.bin``       (n,) uint8: rows written (marked after their bytes and checksum)
- ``shards/``        only while several processes build it (see ``distributed``)
- ``meta.json``      settings + completion facts, written LAST: its presence means complete

Faults: a build killed at any instant resumes where it stopped, and the finished store
equals an uninterrupted build row for row. Work is planned as fixed ``units`` (the
token-budget batches of the whole split), a unit is recomputed whole if any of its rows is
missing (same batch, same floating-point result), and only rows not yet marked done are
ever written. No pickle anywhere. Reopening with different settings raises an error
naming both values; truncated or corrupted files are detected.

This module holds the reader (``Store``, ``open_store``) and the build (``build_store``,
``finish_store``); the files themselves (sizes, memmaps, checksums, settings differences)
are handled in ``store_files`` and the per-rank shards of a multi-process build in
``store_shards``.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from less_lab._io import write_json
from less_lab.core.distributed import DistContext, context
from less_lab.core.store_files import (
    META,
    SETTINGS,
    SHARDS,
    STAT_COLUMNS,
    RowWriter,
    allocate,
    bad_rows,
    check_sizes,
    diff_settings,
    file_crc,
    file_sizes,
    memmaps,
    read_chunks,
    read_ids,
    read_json,
    scan,
    store_paths,
)
from less_lab.core.store_shards import merge_shards, new_shard
from less_lab.errors import SettingsMismatchError, StoreCorruptError

FORMAT_VERSION = 1


@dataclass
class Store:
    """A complete datastore opened read-only."""

    path: Path
    meta: dict
    ids: list[str]
    features: np.memmap
    stats: pl.DataFrame

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def nonfinite_ids(self) -> list[str]:
        """Examples whose gradient or features were NaN/inf (they score NaN)."""
        return list(self.meta.get("nonfinite_ids", []))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Store({self.path.name}: {len(self)} x {self.dim} {m['feature']} features, "
            f"{m['projection']['kind']} projection, checkpoint {m.get('checkpoint')})"
        )

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` float32 chunks of the features, read with plain file reads
        into two reused buffers: memory stays at one chunk whatever the store size (a
        memmap would keep every page it touched in the process's resident set). The
        array yielded is overwritten by the next chunk: copy what you keep."""
        yield from read_chunks(
            self.path / "features.bin", len(self), self.dim, self.meta["dtype"], chunk_rows
        )


def open_store(
    path: str | Path, expect: dict | None = None, *, verify: bool | None = None
) -> Store:
    """Open a complete store; ``expect`` (settings) must match what is on disk.

    A store without ``meta.json`` is incomplete and refused. File sizes are always checked;
    the checksum too when ``verify`` is true (default: for stores under 2 GB).
    """
    path = Path(path)
    if not (path / META).exists():
        raise FileNotFoundError(
            f"{path}: no {META}; the store is missing or incomplete "
            "(an interrupted build resumes when you build it again)"
        )
    meta = read_json(path / META)
    disk_version = meta.get("format_version")
    if expect is not None:
        diff_settings(path, {k: meta.get(k) for k in expect}, json.loads(json.dumps(expect)))
    elif disk_version != FORMAT_VERSION:
        diff_settings(path, {"format_version": disk_version}, {"format_version": FORMAT_VERSION})
    n, dim, dtype = meta["n"], meta["dim"], meta["dtype"]
    check_sizes(path, n, dim, dtype, ("features", "stats"))
    if verify is None:
        verify = file_sizes(n, dim, dtype)["features"] < 2 << 30
    ids = read_ids(path, n)
    if verify:
        _verify(path, meta)
    feats, stats, *_ = memmaps(path, n, dim, dtype, "r")
    return Store(path, meta, ids, feats, pl.DataFrame(np.asarray(stats), schema=list(STAT_COLUMNS)))


def _verify(path: Path, meta: dict) -> None:
    """Check the CRC32 of every file a complete store is read from against ``meta.json``
    (stats and ids: for stores finalised since their checksums were recorded)."""
    n, dim, dtype = meta["n"], meta["dim"], meta["dtype"]
    paths = store_paths(path)
    sums = {
        paths["features"]: ("crc32", lambda: scan(paths["features"], n, dim, dtype)[0]),
        paths["stats"]: ("stats_crc32", lambda: file_crc(paths["stats"])),
        path / "ids.parquet": ("ids_crc32", lambda: file_crc(path / "ids.parquet")),
    }
    for fpath, (key, compute) in sums.items():
        if key in meta and compute() != meta[key]:
            raise StoreCorruptError(
                f"{fpath}: checksum differs from {path / META}; the store is corrupted"
            )


def build_store(
    path: str | Path,
    settings: dict,
    ids: list[str],
    compute: Callable[[list[int]], Iterator],
    *,
    units: Sequence[Sequence[int]] | None = None,
    dist: DistContext | None = None,
    on_write: Callable[[np.ndarray], None] | None = None,
    progress: bool = True,
) -> Store:
    """Fill a store, resuming an interrupted build, and return it opened.

    ``compute(rows)`` yields objects with ``rows``, ``features`` (b, d), ``loss``,
    ``grad_norm`` and ``feature_norm`` for the requested rows, in any grouping. ``units``
    (default: one per row) are the groups rows are computed in, e.g. batches: a unit with
    any row not done is requested whole, so a resumed build computes exactly the batches an
    uninterrupted one does. Rows already marked done are never written again, and a row is
    marked done only after its features are flushed, so a build killed at any moment
    resumes with nothing lost or duplicated. ``on_write(rows)`` is called just before rows
    are written. Under torchrun (``dist``, default from the environment) pending units are
    dealt round-robin to the ranks; rank 0 merges their shards and finalises.
    """
    path = Path(path)
    settings = json.loads(json.dumps({**settings, "n": len(ids), "format_version": FORMAT_VERSION}))
    dist = dist or context()
    if (path / META).exists():
        return open_store(path, settings)
    if dist.is_main:
        _prepare(path, settings, ids)
    dist.barrier()
    n, dim, dtype = len(ids), settings["dim"], settings["dtype"]
    if not dist.is_main:
        diff_settings(path, read_json(path / SETTINGS), settings)
    done, pending = _pending_units(path, n, dim, dtype, units)
    _build_my_share(path, (n, dim, dtype), done, pending, compute, dist, on_write, progress)
    dist.barrier()
    if dist.is_main:
        merge_shards(path, n, dim, dtype)
        finish_store(path)
    dist.barrier()
    return open_store(path, settings, verify=False)


def _pending_units(
    path: Path, n: int, dim: int, dtype: str, units: Sequence[Sequence[int]] | None
) -> tuple[np.ndarray, list[list[int]]]:
    """The done flags on disk and the units with any row not done (one unit per row when
    ``units`` is None)."""
    done = np.array(memmaps(path, n, dim, dtype, "r")[2], dtype=bool)  # verified rows
    if units is None:  # one unit per row
        pending = [[r] for r in np.flatnonzero(~done).tolist()]
    else:
        pending = [list(map(int, u)) for u in units if not done[list(u)].all()]
    return done, pending


def _build_my_share(
    path: Path,
    shape: tuple[int, int, str],
    done: np.ndarray,
    pending: list[list[int]],
    compute: Callable[[list[int]], Iterator],
    dist: DistContext,
    on_write: Callable[[np.ndarray], None] | None,
    progress: bool,
) -> None:
    """Compute this rank's share of the ``pending`` units (``shape``: n, dim, dtype) and
    write its rows not done yet: into the store itself in a single process, else into the
    rank's shard."""
    n, dim, dtype = shape
    my_units = dist.shard(pending)
    whole_units = [r for u in my_units for r in u]  # computed whole (a unit is one batch)
    mine = [r for r in whole_units if not done[r]]  # rows this rank writes
    initial = n - sum(len(u) for u in pending)
    if dist.world > 1 and progress:
        print(
            f"[rank {dist.rank}/{dist.world}] {path}: {len(mine)} of {n - initial} pending "
            f"rows, {len(my_units)} of {len(pending)} units",
            file=sys.stderr,
            flush=True,
        )
    quiet = not progress or not dist.is_main
    bar = tqdm(total=n, initial=initial, desc=path.name, unit="ex", disable=quiet)
    if mine:
        shard = path / SHARDS / f"rank-{dist.rank:05d}"
        writer = (
            RowWriter(path) if dist.world == 1 else new_shard(shard, np.asarray(mine), dim, dtype)
        )
        slot = np.full(n, -1, dtype=np.int64)  # where each of my rows goes; -1: not mine
        slot[mine] = mine if dist.world == 1 else np.arange(len(mine))
        try:
            _fill(writer, slot, compute(whole_units), dtype, on_write, bar)
        finally:
            writer.close()
    bar.close()


def _fill(
    writer: RowWriter,
    slot: np.ndarray,
    outs: Iterator,
    dtype: str,
    on_write: Callable[[np.ndarray], None] | None,
    bar: tqdm,
) -> None:
    """Write each computed row to its slot (features, stats, checksum, then done mark)."""
    for out in outs:
        rows = np.asarray(out.rows, dtype=np.int64)
        keep = slot[rows] >= 0  # asked of this process and not written yet
        if not keep.any():
            continue
        rows, where = rows[keep], slot[rows[keep]]
        if on_write is not None:
            on_write(rows)
        feats = out.features.detach().cpu().numpy()[keep].astype(dtype)
        columns = (out.loss, out.grad_norm, out.feature_norm)
        stats = np.stack([c.detach().cpu().numpy() for c in columns], 1)[keep]
        writer.write(where, feats, stats)
        slot[rows] = -1
        bar.update(len(rows))


def _prepare(path: Path, settings: dict, ids: list[str]) -> None:
    """Rank 0, before any compute: check a partial store (or create a new one) and fold in
    shards that an interrupted multi-process build left behind."""
    path.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    if (path / SETTINGS).exists():
        diff_settings(path, read_json(path / SETTINGS), settings)
        if read_ids(path) != ids:
            raise SettingsMismatchError(f"{path}: partial store holds other example ids")
        check_sizes(path, n, settings["dim"], settings["dtype"], ("features", "stats", "done"))
        allocate(path, n, settings["dim"], settings["dtype"])  # crc.bin of an older build
    else:
        _start(path, settings, ids)
    merge_shards(path, n, settings["dim"], settings["dtype"])
    _forget_bad_rows(path, n, settings["dim"], settings["dtype"])


def _forget_bad_rows(path: Path, n: int, dim: int, dtype: str) -> list[int]:
    """Clear the done mark of every row whose bytes do not match its checksum (so it is
    computed again), warning with the rows; returns them."""
    done = memmaps(path, n, dim, dtype, "r+")[2]
    if not done.any():
        return []
    bad = bad_rows(path, n, dim, dtype)[0]
    if bad:
        done[bad] = 0
        done.flush()
        p = store_paths(path)
        warnings.warn(
            f"{path}: rows {bad[:20]}{' ...' if len(bad) > 20 else ''} of {p['features']} / "
            f"{p['stats']} do not match their checksum in {p['crc']}; computing them again",
            stacklevel=3,
        )
    return bad


def _start(path: Path, settings: dict, ids: list[str]) -> None:
    """Create the files of a new store; settings.json goes last so a crash here restarts."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"{path}: duplicate example id {dup!r}; ids must be unique")
    shutil.rmtree(path / SHARDS, ignore_errors=True)
    pl.DataFrame({"example_id": ids}, schema={"example_id": pl.String}).write_parquet(
        path / "ids.parquet"
    )
    allocate(path, len(ids), settings["dim"], settings["dtype"])
    write_json(path / SETTINGS, settings)


def finish_store(path: str | Path) -> Store:
    """Check every row is done, record non-finite rows, write ``meta.json`` (last)."""
    path = Path(path)
    settings = read_json(path / SETTINGS)
    n, dim, dtype = settings["n"], settings["dim"], settings["dtype"]
    check_sizes(path, n, dim, dtype, ("features", "stats", "done", "crc"))
    _, stats, done, _ = memmaps(path, n, dim, dtype, "r")
    missing = int((np.asarray(done) == 0).sum())
    if missing:
        raise RuntimeError(f"{path}: {missing} rows not computed yet; build again to resume")
    ids = read_ids(path, n)
    corrupt, crc, bad_feats = bad_rows(path, n, dim, dtype)
    if corrupt:
        _forget_bad_rows(path, n, dim, dtype)
        p = store_paths(path)
        raise StoreCorruptError(
            f"{p['features']} / {p['stats']}: rows {corrupt[:20]} do not match their "
            f"checksum in {p['crc']}; build again to compute them anew"
        )
    # Stats an imported store cannot know (``unknown_stats``, left NaN) flag nothing.
    known = [j for j, c in enumerate(STAT_COLUMNS) if c not in settings.get("unknown_stats", ())]
    bad_stats = np.flatnonzero(~np.isfinite(np.asarray(stats)[:, known]).all(1)).tolist()
    bad = [ids[i] for i in sorted(set(bad_feats) | set(bad_stats))]
    if bad:
        warnings.warn(
            f"{path}: {len(bad)} of {n} examples have non-finite gradients or "
            f"features; they score NaN and are never selected: {bad[:20]}"
            + (" ..." if len(bad) > 20 else "")
            + f" (all in {path / META})",
            stacklevel=2,
        )
    sums = {"stats_crc32": file_crc(store_paths(path)["stats"]),
            "ids_crc32": file_crc(path / "ids.parquet")}  # fmt: skip
    write_json(path / META, {**settings, "crc32": crc, **sums, "nonfinite_ids": bad})
    return open_store(path, verify=False)


def stats_frame(store) -> pl.DataFrame:
    """A store's per-example ``loss, grad_norm, feature_norm`` with its ``example_id``
    (``Store.stats`` rows are aligned with ``Store.ids``)."""
    return store.stats.with_columns(pl.Series("example_id", store.ids, dtype=pl.String))
