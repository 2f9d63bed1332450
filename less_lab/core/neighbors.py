"""Nearest pool examples to ONE target example, by LESS, BM25 and RDS (paper Tables 16-18).

The paper's qualitative comparison (§6.2, appendix K) takes a single validation example as
the whole target set and shows each method's top pool examples: BM25 and RDS match the
target's language and words, LESS its task type. Each function here returns the same
frame, ``example_id, score, rank`` (best first, ``rank`` from 1), so
:func:`less_lab.plots.neighbors_figure` and :class:`less_lab.widgets.NeighborsView` put
them side by side.

With one target example, a subtask mean is that example itself, so these are the Eq. 2
scores of a one-example target set: LESS is the learning-rate-weighted sum over checkpoints
of cos(Γ_i(z), g_i(z')), RDS the cosine of last-token hidden states, BM25 the BM25 score of
the pool example for the target's text as query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import DataConfig
from less_lab.core.baselines import bm25_scores, last_token_states
from less_lab.core.datastore import Store
from less_lab.core.scoring import check_compatible, checkpoint_weights, unit_rows

NEIGHBOR_SCHEMA = {"example_id": pl.String, "score": pl.Float64, "rank": pl.UInt32}


def top_k(ids: Sequence[str], scores: Sequence[float] | np.ndarray, k: int = 10) -> pl.DataFrame:
    """``example_id, score, rank`` of the ``k`` highest finite scores; ties keep id order."""
    frame = pl.DataFrame(
        {"example_id": list(ids), "score": np.asarray(scores, dtype=np.float64)},
        schema={"example_id": pl.String, "score": pl.Float64},
    )
    best = frame.with_columns(pl.col("score").fill_nan(None)).drop_nulls("score")
    best = best.sort("score", descending=True, maintain_order=True).head(max(k, 0))
    return best.with_row_index("rank", offset=1).select(list(NEIGHBOR_SCHEMA))


def one_target(targets: pl.DataFrame, target_id: str) -> pl.DataFrame:
    """The target row ``target_id`` as a one-example target set (its own subtask)."""
    row = targets.filter(pl.col("example_id") == target_id)
    if row.height != 1:
        found = "not found" if row.is_empty() else f"found {row.height} times"
        raise KeyError(f"target example {target_id!r} {found} among {targets.height} targets")
    return row.with_columns(pl.lit(str(target_id)).alias("subtask"))


def less_similarities(
    pool_stores: Sequence[Store],
    target_stores: Sequence[Store],
    lrs: Sequence[float],
    target_id: str,
    *,
    normalize_lr: bool = True,
    chunk_rows: int = 16384,
) -> np.ndarray:
    """``sum_i w_i cos(pool feature_i(z), target feature_i(target_id))`` for every pool row
    (``pool_stores[0].ids`` order); ``w`` = the checkpoints' mean learning rates. Pool rows
    are read in chunks, so memory stays bounded on paper-scale stores."""
    if not (len(pool_stores) == len(target_stores) == len(lrs)) or not pool_stores:
        raise ValueError("need one pool store, one target store and one lr per checkpoint")
    check_compatible(pool_stores, target_stores)
    weights = checkpoint_weights(lrs, normalize_lr)
    n = len(pool_stores[0])
    out = np.zeros(n, dtype=np.float64)
    for pool, target, w in zip(pool_stores, target_stores, weights, strict=True):
        if target_id not in target.ids:
            raise KeyError(f"target example {target_id!r} is not in store {target.path}")
        row = target.ids.index(target_id)
        vec = unit_rows(np.asarray(target.features[row : row + 1], dtype=np.float32))[0]
        for start, chunk in pool.iter_chunks(chunk_rows):
            out[start : start + len(chunk)] += w * (unit_rows(chunk) @ vec)
    return out


def less_neighbors(
    pool_stores: Sequence[Store],
    target_stores: Sequence[Store],
    lrs: Sequence[float],
    target_id: str,
    k: int = 10,
    *,
    normalize_lr: bool = True,
) -> pl.DataFrame:
    """Top ``k`` pool examples for one target example by LESS's lr-weighted cosine of the
    pool's (Adam) features with the target example's gradient features."""
    scores = less_similarities(
        pool_stores, target_stores, lrs, target_id, normalize_lr=normalize_lr
    )
    return top_k(pool_stores[0].ids, scores, k)


def bm25_neighbors(
    pool: pl.DataFrame, targets: pl.DataFrame, target_id: str, k: int = 10, **bm25_options: Any
) -> pl.DataFrame:
    """Top ``k`` pool examples by BM25 with the target example's full text as the query
    (``baselines.bm25_scores``; ``bm25_options`` such as ``k1``, ``b`` go to it)."""
    long = bm25_scores(pool, one_target(targets, target_id), **bm25_options)
    return top_k(long["example_id"].to_list(), long["score"].to_numpy(), k)


def rds_neighbors(
    model: Any,
    tokenizer: Any,
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    target_id: str,
    k: int = 10,
    data_cfg: DataConfig | None = None,
    *,
    pool_states: tuple[list[str], np.ndarray] | None = None,
    progress: bool = False,
    **state_options: Any,
) -> pl.DataFrame:
    """Top ``k`` pool examples by cosine of last-token final hidden states (RDS) with the
    target example's. Pass ``pool_states`` (``baselines.last_token_states(model, tokenizer,
    pool, ...)``) to reuse the pool's states across several targets; pool examples
    ``formatting.tokenize`` drops have no state and are never ranked."""
    kw = dict(data_cfg=data_cfg, progress=progress, **state_options)
    t_ids, t_states = last_token_states(
        model, tokenizer, one_target(targets, target_id), desc="rds target", **kw
    )
    if not t_ids:
        raise ValueError(
            f"target example {target_id!r} has no completion token left after "
            "tokenization; RDS cannot embed it"
        )
    p_ids, p_states = pool_states or last_token_states(
        model, tokenizer, pool, desc="rds pool", **kw
    )
    if not p_ids:
        return pl.DataFrame(schema=NEIGHBOR_SCHEMA)
    return top_k(p_ids, unit_rows(p_states) @ unit_rows(t_states)[0], k)
