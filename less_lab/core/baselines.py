"""The paper's baselines (§5.2, appendix C): random, BM25, DSIR and RDS.

Every scorer returns the frame LESS returns (``scoring.long_frame``: one row per pool
example and target subtask, columns ``example_id, source, subtask, score``), so
``scoring.aggregate`` (max over subtasks, as Eq. 2) and ``selection.select_top`` treat
them exactly like LESS scores. Subtasks are the sorted distinct ``subtask`` values of the
targets, as in ``scoring.subtask_scores``.

This module holds the random baseline and the registry (:data:`SCORERS`,
:func:`baseline_scores`); each other family has its own module: ``baseline_bm25``,
``baseline_dsir`` and ``baseline_rds``, with what they share (text, words, the score
frame) in ``baseline_common``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import DataConfig
from less_lab.core.baseline_bm25 import bm25_scores
from less_lab.core.baseline_common import score_frame, target_subtasks
from less_lab.core.baseline_dsir import dsir_resample, dsir_scores
from less_lab.core.baseline_rds import last_token_states, rds_scores

__all__ = [  # with the family scorers callers import from here
    "SCORERS",
    "baseline_scores",
    "bm25_scores",
    "dsir_resample",
    "dsir_scores",
    "last_token_states",
    "random_scores",
    "rds_scores",
]


def random_scores(pool: pl.DataFrame, targets: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Uniform [0, 1) scores from ``seed``; every subtask gets the example's same score, so
    the max over subtasks keeps it and ``select_top`` makes a uniform random selection."""
    subtasks = target_subtasks(targets)
    u = np.random.default_rng(seed).random(pool.height)
    return score_frame(np.repeat(u[:, None], len(subtasks), axis=1), subtasks, pool)


def _rds(
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    seed: int,
    model: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> pl.DataFrame:
    if model is None or tokenizer is None:
        raise ValueError("the rds baseline needs model= and tokenizer=")
    return rds_scores(model, tokenizer, pool, targets, **options)  # deterministic: no seed


SCORERS: dict[str, Callable[..., pl.DataFrame]] = {
    "random": random_scores,
    "bm25": lambda pool, targets, *, seed, **options: bm25_scores(pool, targets, **options),
    "dsir": dsir_scores,
    "rds": _rds,
}
"""Baseline name -> scorer taking ``(pool, targets, *, seed, **options)``; ``rds`` also
takes ``model``, ``tokenizer`` and ``data_cfg``."""


def baseline_scores(
    method: str,
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    model: Any = None,
    tokenizer: Any = None,
    data_cfg: DataConfig | None = None,
    seed: int = 0,
    **options: Any,
) -> pl.DataFrame:
    """Long score frame of baseline ``method`` (a key of :data:`SCORERS`); ``options`` go
    to the scorer (e.g. ``k1`` for bm25, ``n_buckets`` for dsir, ``token_budget`` for rds).
    ``seed`` drives random draws and DSIR's hashing; BM25 and RDS are deterministic."""
    if method not in SCORERS:
        raise ValueError(f"unknown baseline {method!r}; expected one of {sorted(SCORERS)}")
    if method == "rds":
        options |= dict(model=model, tokenizer=tokenizer, data_cfg=data_cfg)
    elif model is not None or tokenizer is not None:
        warnings.warn(f"baseline {method!r} ignores model and tokenizer", stacklevel=2)
    return SCORERS[method](pool, targets, seed=seed, **options)
