"""The gradient datastore: projected per-example features on disk, built once, reused.

One directory per (split, checkpoint, feature kind, projection):

- ``settings.json``  what is being built (written first; resume checks it)
- ``ids.parquet``    example ids in row order
- ``features.bin``   (n, d) float32/float16 memmap
- ``stats.bin``      (n, 3) float32 memmap: loss, gradient norm, unprojected feature norm
- ``done.bin``       (n,) uint8 memmap: rows written (flushed after their features)
- ``meta.json``      settings + completion facts, written LAST: its presence means complete

No pickle anywhere. Reopening with different settings raises an error naming both values.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

FORMAT_VERSION = 1
STAT_COLUMNS = ("loss", "grad_norm", "feature_norm")
META, SETTINGS = "meta.json", "settings.json"


class StoreMismatchError(ValueError):
    """A store on disk was made with other settings than the ones asked for."""


def _diff(path: Path, old: dict, new: dict) -> None:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys:
        lines = "\n".join(f"  {k}: on disk {old.get(k)!r}, requested {new.get(k)!r}" for k in keys)
        raise StoreMismatchError(f"{path} was built with different settings:\n{lines}\n"
                                 "Use another directory or delete this one to rebuild.")


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


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

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        m = self.meta
        return (f"Store({self.path.name}: {len(self)} x {self.dim} {m['feature']} features, "
                f"{m['projection']['kind']} projection, checkpoint {m.get('checkpoint')})")


def _paths(path: Path) -> dict[str, Path]:
    return {k: path / f"{k}.bin" for k in ("features", "stats", "done")}


def _memmaps(path: Path, n: int, dim: int, dtype: str, mode: str) -> tuple[np.memmap, ...]:
    p = _paths(path)
    return (np.memmap(p["features"], dtype=dtype, mode=mode, shape=(n, dim)),
            np.memmap(p["stats"], dtype="float32", mode=mode, shape=(n, len(STAT_COLUMNS))),
            np.memmap(p["done"], dtype="uint8", mode=mode, shape=(n,)))


def open_store(path: str | Path, expect: dict | None = None, *, verify: bool | None = None) -> Store:
    """Open a complete store; ``expect`` (settings) must match what is on disk.

    A store without ``meta.json`` is incomplete and refused. File sizes are always checked;
    the checksum too when ``verify`` is true (default: for stores under 2 GB).
    """
    path = Path(path)
    if not (path / META).exists():
        raise FileNotFoundError(f"{path}: no {META}; the store is missing or incomplete "
                                "(an interrupted build resumes when you build it again)")
    meta = json.loads((path / META).read_text())
    if expect is not None:
        _diff(path, {k: meta.get(k) for k in expect}, json.loads(json.dumps(expect)))
    n, dim, dtype = meta["n"], meta["dim"], meta["dtype"]
    fpath = _paths(path)["features"]
    want = n * dim * np.dtype(dtype).itemsize
    if not fpath.exists() or fpath.stat().st_size != want:
        size = fpath.stat().st_size if fpath.exists() else "missing"
        raise ValueError(f"{fpath}: size {size}, expected {want} bytes; the store is corrupted")
    if verify is None:
        verify = want < 2 << 30
    if verify and _crc(fpath) != meta["crc32"]:
        raise ValueError(f"{fpath}: checksum differs from {path / META}; the store is corrupted")
    feats, stats, _ = _memmaps(path, n, dim, dtype, "r")
    ids = pl.read_parquet(path / "ids.parquet")["example_id"].to_list()
    return Store(path, meta, ids, feats, pl.DataFrame(np.asarray(stats), schema=list(STAT_COLUMNS)))


def build_store(
    path: str | Path,
    settings: dict,
    ids: list[str],
    compute: Callable[[list[int]], Iterator],
    *,
    rows_filter: Callable[[list[int]], list[int]] | None = None,
    finalize: bool = True,
    progress: bool = True,
) -> Store | None:
    """Fill a store, resuming an interrupted build, and return it opened.

    ``compute(rows)`` yields objects with ``rows``, ``features`` (b, d), ``loss``,
    ``grad_norm`` and ``feature_norm`` for the requested rows, in any grouping. Rows already
    marked done are never recomputed, so a build killed at any moment resumes with nothing
    lost or duplicated: a row is marked done only after its features are flushed.
    ``rows_filter`` restricts which pending rows this process computes (sharding).
    """
    path = Path(path)
    settings = json.loads(json.dumps({**settings, "n": len(ids), "format_version": FORMAT_VERSION}))
    if (path / META).exists():
        return open_store(path, settings)
    path.mkdir(parents=True, exist_ok=True)
    if (path / SETTINGS).exists():
        _diff(path, json.loads((path / SETTINGS).read_text()), settings)
        old_ids = pl.read_parquet(path / "ids.parquet")["example_id"].to_list()
        if old_ids != ids:
            raise StoreMismatchError(f"{path}: partial store holds other example ids")
    else:
        _start(path, settings, ids)
    n, dim, dtype = len(ids), settings["dim"], settings["dtype"]
    feats, stats, done = _memmaps(path, n, dim, dtype, "r+")
    todo = [i for i in range(n) if not done[i]]
    if rows_filter is not None:
        todo = rows_filter(todo)
    bar = tqdm(total=n, initial=n - len(todo), desc=path.name, disable=not progress, unit="ex")
    for out in compute(todo) if todo else ():
        rows = np.asarray(out.rows)
        feats[rows] = out.features.cpu().numpy().astype(dtype)
        stats[rows] = np.stack([out.loss.cpu().numpy(), out.grad_norm.cpu().numpy(),
                                out.feature_norm.cpu().numpy()], 1)
        feats.flush()
        stats.flush()
        done[rows] = 1
        done.flush()
        bar.update(len(rows))
    bar.close()
    if not finalize:
        return None
    return finish_store(path)


def _start(path: Path, settings: dict, ids: list[str]) -> None:
    """Create the files of a new store; settings.json goes last so a crash here restarts."""
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate example ids; ids must be unique")
    pl.DataFrame({"example_id": ids}, schema={"example_id": pl.String}).write_parquet(
        path / "ids.parquet")
    _memmaps(path, len(ids), settings["dim"], settings["dtype"], "w+")
    tmp = path / (SETTINGS + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path / SETTINGS)


def finish_store(path: str | Path) -> Store:
    """Check every row is done, record non-finite rows, write ``meta.json`` (last)."""
    path = Path(path)
    settings = json.loads((path / SETTINGS).read_text())
    n, dim, dtype = settings["n"], settings["dim"], settings["dtype"]
    feats, stats, done = _memmaps(path, n, dim, dtype, "r")
    missing = int((np.asarray(done) == 0).sum())
    if missing:
        raise RuntimeError(f"{path}: {missing} rows not computed yet; build again to resume")
    ids = pl.read_parquet(path / "ids.parquet")["example_id"].to_list()
    bad_rows = sorted(set(np.flatnonzero(~np.isfinite(np.asarray(stats)).all(1)).tolist()))
    bad = [ids[i] for i in bad_rows]
    if bad:
        warnings.warn(f"{path}: {len(bad)} examples have non-finite gradients and will score "
                      f"NaN (excluded from selection): {bad[:10]}", stacklevel=2)
    meta = {**settings, "crc32": _crc(_paths(path)["features"]), "nonfinite_ids": bad}
    tmp = path / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path / META)
    return open_store(path, verify=False)
