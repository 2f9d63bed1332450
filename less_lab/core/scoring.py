"""Influence scores from the datastore (paper §4.2, Eq. 2).

For checkpoint i and target subtask j, ``s_ij(z) = cos(mean_{z' in D_val^j} g_i(z'), Γ_i(z))``;
checkpoints are combined with their mean learning rates, ``S_j(z) = sum_i w_i s_ij(z)``,
and the score of z is ``max_j S_j(z)``. The pool is streamed in chunks, so memory stays
bounded whatever the store size.

Every scorer in less_lab returns the same long frame ``example_id, source, subtask, score``
(one row per pool example and target subtask); ``aggregate`` reduces it to one row per
example, keeping the best subtask.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from less_lab.config import ScoreConfig
from less_lab.core.cone import cone_cosines
from less_lab.core.selection import round_robin_rows

if TYPE_CHECKING:  # only for annotations: views use this module without the datastore
    from less_lab.core.datastore import Store

SCORE_SCHEMA = {
    "example_id": pl.String,
    "source": pl.String,
    "subtask": pl.String,
    "score": pl.Float64,
}


def checkpoint_weights(lrs: Sequence[float], normalize: bool = True) -> np.ndarray:
    """Weights η̄_i of the checkpoints; normalising to sum 1 leaves the ranking unchanged."""
    w = np.asarray(lrs, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"checkpoint learning rates must be finite and >= 0, got {list(lrs)}")
    return w / w.sum() if normalize and w.sum() > 0 else w


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def target_matrix(
    store: Store,
    target_subtask: dict[str, str],
    subtasks: list[str],
    method: str,
    columns: slice | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The (d, columns) matrix pool features are multiplied with, and, for
    ``mean_of_shots`` and ``subspace``, the subtask index of each column (columns are then
    single unit shots). ``columns`` keeps only those feature columns (a sub-sketch, for
    split-half checks)."""
    feats = np.asarray(store.features[:, columns or slice(None)], dtype=np.float32)
    col_subtask = np.array([subtasks.index(target_subtask[i]) for i in store.ids])
    if method in ("mean_of_shots", "subspace"):
        return unit_rows(feats).T.copy(), col_subtask
    means = np.stack([feats[col_subtask == j].mean(0) for j in range(len(subtasks))])
    if method == "paper":
        means = unit_rows(means)
    elif method != "dot":
        raise ValueError(
            f"unknown score method {method!r}; expected paper, mean_of_shots, subspace, dot"
        )
    return means.T.copy(), None


def subtask_scores(
    pool_stores: Sequence[Store],
    target_stores: Sequence[Store],
    targets: pl.DataFrame,
    lrs: Sequence[float],
    cfg: ScoreConfig = ScoreConfig(),
    columns: slice | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Matrix (n_pool, n_subtasks) of learning-rate-weighted scores, and subtask names.

    ``columns`` scores with only those feature columns of every store (e.g. one half of
    the projection: ``diagnostics.split_half`` uses it to measure projection noise)."""
    if len(pool_stores) != len(target_stores) or len(pool_stores) != len(lrs):
        raise ValueError("need one pool store, one target store and one lr per checkpoint")
    check_compatible(pool_stores, target_stores)
    target_subtask = dict(zip(targets["example_id"], targets["subtask"], strict=True))
    subtasks = sorted(set(target_subtask[i] for i in target_stores[0].ids))
    weights = checkpoint_weights(lrs, cfg.normalize_lr)
    n = len(pool_stores[0])
    out = np.zeros((n, len(subtasks)), dtype=np.float64)
    nonfinite: set[str] = set()
    for pool, target, w in zip(pool_stores, target_stores, weights, strict=True):
        if bad := set(target.nonfinite_ids):  # one NaN shot would make every score NaN
            warnings.warn(
                f"{target.path}: left out {len(bad)} target examples with "
                f"non-finite gradients: {sorted(bad)[:10]}",
                stacklevel=2,
            )
            keep = [i for i, e in enumerate(target.ids) if e not in bad]
            target = dataclasses.replace(
                target,
                ids=[target.ids[i] for i in keep],
                features=np.asarray(target.features)[keep],
            )
        mat, cols = target_matrix(target, target_subtask, subtasks, cfg.method, columns)
        grams = _grams(mat, cols, len(subtasks)) if cfg.method == "subspace" else None
        nonfinite.update(pool.nonfinite_ids)
        # Streamed with plain reads into reused buffers: bounded memory at any store size.
        for start, chunk in pool.iter_chunks(cfg.chunk_rows):
            chunk = chunk if columns is None else chunk[:, columns]
            sims = chunk @ mat
            if cfg.method != "dot":  # cosine: divide by row norms, cheaper than unit_rows(chunk)
                norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
                sims /= np.where(norms > 0, norms, 1.0)[:, None]
            if cols is not None:
                sims = _per_subtask(sims, cols, len(subtasks), grams)
            out[start : start + len(chunk)] += w * sims
    if nonfinite:
        warnings.warn(
            f"{len(nonfinite)} of {n} pool examples have non-finite gradients: "
            f"their scores are NaN and selection skips them: {sorted(nonfinite)[:10]}",
            stacklevel=2,
        )
    return out, subtasks


def _grams(mat: np.ndarray, cols: np.ndarray, n_subtasks: int) -> list[np.ndarray]:
    """Each subtask's Gram matrix of unit shots (``subspace`` scoring)."""
    return [mat[:, cols == j].T.astype(np.float64) @ mat[:, cols == j] for j in range(n_subtasks)]


def _per_subtask(
    sims: np.ndarray, cols: np.ndarray, n_subtasks: int, grams: list | None
) -> np.ndarray:
    """Per-shot cosines -> one score per subtask: the mean over its shots
    (``mean_of_shots``) or the cosine with the cone they span (``subspace``)."""
    if grams is None:
        return np.stack([sims[:, cols == j].mean(1) for j in range(n_subtasks)], 1)
    return np.stack([cone_cosines(sims[:, cols == j], g) for j, g in enumerate(grams)], 1)


def check_compatible(pool_stores: Sequence[Store], target_stores: Sequence[Store]) -> None:
    """Pool and target features must come from the same projection, model and checkpoint."""
    ids = pool_stores[0].ids
    for p, t in zip(pool_stores, target_stores, strict=True):
        for key in ("projection", "dim", "model", "checkpoint"):
            if p.meta.get(key) != t.meta.get(key):
                raise ValueError(
                    f"{p.path} and {t.path} differ in {key}: "
                    f"{p.meta.get(key)!r} vs {t.meta.get(key)!r}"
                )
        if p.ids != ids:
            raise ValueError(f"{p.path}: pool rows differ from {pool_stores[0].path}")


def long_frame(
    matrix: np.ndarray, subtasks: list[str], ids: list[str], sources: dict[str, str] | None = None
) -> pl.DataFrame:
    """The shared scorer output: one row per (pool example, subtask)."""
    n, m = matrix.shape
    src = [(sources or {}).get(i, "") for i in ids]
    return pl.DataFrame(
        {
            "example_id": np.repeat(np.asarray(ids, dtype=object), m).tolist(),
            "source": np.repeat(np.asarray(src, dtype=object), m).tolist(),
            "subtask": subtasks * n,
            "score": matrix.reshape(-1),
        },
        schema=SCORE_SCHEMA,
    )


AGGREGATES = ("max", "mean", "zscore", "rank", "round_robin")


def aggregate(scores: pl.DataFrame, how: str = "max") -> pl.DataFrame:
    """One row per example, in pool order. ``max`` (paper): the best subtask's raw score,
    keeping the argmax subtask; ``mean``: the mean over subtasks. The scale-free remedies
    (``ScoreConfig.aggregate``) first put every subtask on one scale, so that a subtask
    whose cosines run 2x higher no longer takes every pick: ``zscore`` standardises each
    subtask's scores over the pool, ``rank`` turns them into percentile ranks (1 = best),
    then both take the max; ``round_robin`` lets subtasks take turns (the score is then
    the pick priority, 1 for the first pick down to 1/n). Non-finite scores (non-finite
    gradients) stay NaN and are never selected."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {how!r}; expected {', '.join(AGGREGATES)}")
    # NaN sorts above every number in polars: make it null so it sorts last.
    ordered = scores.with_columns(pl.col("score").fill_nan(None)).with_row_index("_order")
    if how == "round_robin":
        return _round_robin_order(ordered)
    if how in ("zscore", "rank"):
        ordered = ordered.with_columns(_rescaled(how).over("subtask").alias("score"))
    if how == "mean":
        best = ordered.group_by("example_id").agg(
            pl.col("_order").min(),
            pl.col("source").first(),
            pl.lit("mean").alias("subtask"),
            pl.col("score").mean(),
        )
    else:
        best = (
            ordered.sort("score", descending=True, nulls_last=True)
            .group_by("example_id", maintain_order=True)
            .first()
        )
    return best.sort("_order").select(list(SCORE_SCHEMA))


def _rescaled(how: str) -> pl.Expr:
    """One subtask's scores on a common scale: z-scores or percentile ranks in (0, 1]."""
    s = pl.col("score")
    if how == "zscore":
        sd = s.std()
        return pl.when(sd > 0).then((s - s.mean()) / sd).otherwise(0.0)
    return s.rank("average") / s.count()


def _round_robin_order(ordered: pl.DataFrame) -> pl.DataFrame:
    """Every example's round-robin pick priority: subtasks take turns, each taking its
    best untaken example (``selection.round_robin_rows`` over the whole pool); examples
    with no finite score come last with a null score."""
    valid = ordered.drop_nulls("score").sort(["score", "_order"], descending=[True, False])
    ids = valid["example_id"].unique(maintain_order=True).to_list()
    subtasks = sorted(valid["subtask"].unique().to_list())
    ex = valid["example_id"].replace_strict(ids, list(range(len(ids))), return_dtype=pl.Int64)
    sub = valid["subtask"].replace_strict(
        subtasks, list(range(len(subtasks))), return_dtype=pl.Int64
    )
    rows = round_robin_rows(ex.to_numpy(), sub.to_numpy(), valid["score"].to_numpy(), len(ids))
    n = max(len(rows), 1)
    picked = valid[rows].with_columns(pl.Series("score", 1.0 - np.arange(len(rows)) / n))
    firsts = ordered.group_by("example_id", maintain_order=True).agg(pl.col("_order").min())
    rest = firsts.join(picked.select("example_id"), on="example_id", how="anti")
    rest = rest.join(ordered.group_by("example_id").agg(pl.col("source").first()), on="example_id")
    rest = rest.with_columns(pl.lit("").alias("subtask"), pl.lit(None, pl.Float64).alias("score"))
    out = pl.concat([picked.select("_order", *SCORE_SCHEMA), rest.select("_order", *SCORE_SCHEMA)])
    return out.sort("_order").select(list(SCORE_SCHEMA))
