"""A run of the reference LESS code (princeton-nlp/LESS) brought into less_lab, and back.

Import: the gradient tree the reference writes (see ``reference_files``) becomes ordinary
less_lab stores, built with the datastore writer (checksums, ``meta.json``), so scoring,
selection and every view work on it. The reference writes no example ids, so rows are
matched by order to the user's pool and target files (one reference folder per training
file, in the pool's file order); a count that differs is refused naming both counts, and
so is a dimension that differs between pool and target folders. Each store's
``meta.json`` records the provenance under ``reference``: source folders, checkpoint,
gradient type, dim, whether the rows were normalised, and a sha256 fingerprint of every
file read. Loss and gradient norms are unknown to the reference's files and stay NaN
(``unknown_stats``).

Export: any store written back in the reference layout (``all_orig.pt`` with
L2-normalised rows, ``all_unormalized.pt``), so the reference's ``matching.py`` (and
projects built on it) read it. A store imported from fp16/bf16 files is written in that
dtype, so reference → less_lab → reference gives identical tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from less_lab._version import __version__
from less_lab.core.datastore import Store, build_store
from less_lab.core.gradients import BatchFeatures
from less_lab.core.reference_files import (
    ReferenceDir,
    check_top_matches_sorted,
    read_features,
    read_sorted_csv,
    write_features,
)
from less_lab.core.store_files import STAT_COLUMNS
from less_lab.data.pool import file_stem
from less_lab.errors import DataError
from less_lab.model.loading import file_fingerprint

PROJECTION = {"kind": "reference", "projector": "trak rademacher", "seed": 0}
"""What the reference's ``collect_grads`` projects with (same for every checkpoint and
dataset, so pool and target stores of one run are comparable)."""
_ROWS_PER_WRITE = 4096


def pool_name(path: str | Path) -> str:
    """The reference's ``train_file_name`` of a pool file: its stem without a ``_data``
    suffix (``flan_v2_data.jsonl`` -> ``flan_v2``)."""
    return file_stem(Path(path)).removesuffix("_data")


def _ids_fingerprint(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _segments(sources: Sequence[tuple[ReferenceDir, int]], prefer: str):
    """Each source's rows (count-checked against the rows expected of it) and provenance."""
    tensors, described = [], []
    for ref, expected in sources:
        data, info = read_features(ref.path, prefer)
        if len(data) != expected:
            raise DataError(
                f"{len(data)} gradient rows but {expected} examples in the matching "
                f"data ({ref.name!r}); rows are matched by order, so the counts must agree",
                path=ref.path,
                expected=f"{expected} rows",
            )
        if data.shape[1] != ref.dim:
            raise DataError(
                f"rows of width {data.shape[1]}", path=ref.path, expected=f"dim {ref.dim}"
            )
        tensors.append(data)
        files = {f: file_fingerprint(ref.path / f) for f in info.pop("files")}
        described.append(
            {"path": str(ref.path), "name": ref.name, "checkpoint": ref.checkpoint,
             "gradient_type": ref.gradient_type, "dim": ref.dim, "rows": len(data),
             "files": files, **info}
        )  # fmt: skip
    return tensors, described


def import_store(
    sources: Sequence[tuple[ReferenceDir, int]],
    ids: Sequence[str],
    dest: str | Path,
    *,
    split: str,
    model: str = "",
    prefer: str = "unnormalized",
    progress: bool = False,
) -> Store:
    """One less_lab store from reference folders (``(folder, expected rows)``, concatenated
    in order) whose rows are the examples ``ids``; reopened when already imported with the
    same settings, refused when the files or settings changed."""
    if len({(r.checkpoint, r.gradient_type) for r, _ in sources}) != 1:
        raise ValueError("one store is made of folders of one checkpoint and gradient type")
    tensors, described = _segments(sources, prefer)
    dims = {t.shape[1] for t in tensors}
    if len(dims) > 1:
        raise DataError(
            f"folders of dims {sorted(dims)}", path=sources[0][0].path, expected="one dim"
        )
    if sum(map(len, tensors)) != len(ids):
        raise DataError(f"{sum(map(len, tensors))} rows for {len(ids)} examples", path=dest)
    ref = sources[0][0]
    fp16 = all(t.dtype == torch.float16 for t in tensors)
    settings = {
        "split": split,
        "feature": ref.gradient_type,
        "dim": dims.pop(),
        "projection": PROJECTION,
        "model": model,
        "checkpoint": {"reference_ckpt": ref.checkpoint},
        "data": _ids_fingerprint(ids),
        "dtype": "float16" if fp16 else "float32",
        "package_version": __version__,
        "adam": None,
        "unknown_stats": list(STAT_COLUMNS),
        "reference": {
            "checkpoint": ref.checkpoint,
            "gradient_type": ref.gradient_type,
            "normalized": all(d["normalized"] for d in described),
            "sources": described,
        },
    }
    offsets = np.cumsum([0, *map(len, tensors)])

    def compute(rows: list[int]) -> Iterator[BatchFeatures]:
        rows_arr = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows_arr), _ROWS_PER_WRITE):
            part = rows_arr[start : start + _ROWS_PER_WRITE]
            seg = np.searchsorted(offsets, part, side="right") - 1
            feats = torch.stack(
                [tensors[s][r - offsets[s]] for s, r in zip(seg, part, strict=True)]
            )
            feats = feats if fp16 else feats.float()
            nan = torch.full((len(part),), float("nan"))
            yield BatchFeatures(part.tolist(), feats, nan, nan, nan)

    return build_store(dest, settings, list(ids), compute, progress=progress)


def reference_dtype(store: Store) -> torch.dtype:
    """The dtype the reference wrote a store's rows in (fp16 for a native fp32 store)."""
    ref = store.meta.get("reference")
    if ref and ref.get("sources"):
        return getattr(torch, ref["sources"][0]["dtype"])
    return torch.float16


def export_store(
    store: Store,
    root: str | Path,
    name: str,
    checkpoint: int,
    *,
    gradient_type: str | None = None,
    rows: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``store`` (or its ``rows``, in that order) as the reference's
    ``<root>/<name>-ckpt<checkpoint>-<type>/dim<d>/`` (``all_orig.pt``,
    ``all_unormalized.pt``); returns that folder. The dtype defaults to the one the
    rows were imported in (fp16 for native stores, as the reference writes); a store
    imported from ``all_orig.pt`` alone is written back as ``all_orig.pt`` only."""
    kind = gradient_type or store.meta["feature"]
    out = Path(root) / f"{name}-ckpt{int(checkpoint)}-{kind}" / f"dim{store.dim}"
    feats = np.asarray(store.features)
    feats = feats if rows is None else feats[np.asarray(rows, dtype=np.int64)]
    tensor = torch.from_numpy(np.array(feats)).to(dtype or reference_dtype(store))
    normalized_only = bool(store.meta.get("reference", {}).get("normalized"))
    write_features(out, tensor, normalized_only=normalized_only)
    return out


def read_reference_selection(
    path: str | Path, pool: pl.DataFrame, names: dict[str, str] | None = None
) -> pl.DataFrame:
    """A selection the reference wrote, as a frame ``example_id, score, rank, file``
    (best first): ``path`` is a ``top_p<p>.jsonl`` (lines matched to ``pool`` by their
    raw text; scores from the ``sorted.csv`` beside it when present) or a ``sorted.csv``
    (every row; ``file name`` + ``index`` matched to the pool file of that reference name,
    ``names``: reference name -> pool file path, default :func:`pool_name` of each)."""
    path = Path(path)
    names = names or {pool_name(f): f for f in pool["file"].unique(maintain_order=True)}
    sorted_csv = path if path.suffix == ".csv" else path.with_name("sorted.csv")
    ranked = _sorted_frame(sorted_csv, pool, names) if sorted_csv.exists() else None
    if path.suffix == ".csv":
        return ranked
    by_raw = dict(zip(pool["raw"].str.strip_chars(), pool["example_id"], strict=True))
    ids = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            if line.strip() not in by_raw:
                raise DataError("line not found in the pool files", path=path, line=no)
            ids.append(by_raw[line.strip()])
    frame = pl.DataFrame({"example_id": ids}, schema={"example_id": pl.String}).with_row_index(
        "rank", offset=1
    )
    files = pool.select("example_id", "file")
    if ranked is not None:
        check_top_matches_sorted(ids, ranked["example_id"].to_list(), path)
        frame = frame.join(ranked.select("example_id", "score"), on="example_id", how="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("score"))
    frame = frame.join(files, on="example_id", how="left", maintain_order="left")
    return frame.select("example_id", "score", pl.col("rank").cast(pl.Int64), "file")


def _sorted_frame(path: Path, pool: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    """``sorted.csv`` rows mapped to pool ids by (file name, 0-based index in that file)."""
    per_file = dict(pool.group_by("file", maintain_order=True).agg("example_id").iter_rows())
    rows = []
    for rank, (name, index, score) in enumerate(read_sorted_csv(path), start=1):
        file = names.get(name)
        if file is None or index >= len(per_file.get(str(file), [])):
            raise DataError(
                f"row {rank + 1}: {name!r} index {index} matches no pool example",
                path=path,
                expected=f"file names among {sorted(names)}",
            )
        rows.append((per_file[str(file)][index], score, rank, str(file)))
    schema = {"example_id": pl.String, "score": pl.Float64, "rank": pl.Int64, "file": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")
