"""Shaping the top of a ranking: length-matched quotas and near-duplicate suppression.

Why: with a small selector model, cosine scores favour short completions (a pilot here
picked 5-token MMLU answers from one source) and near-identical examples crowd the top k.
Both remedies keep the paper's ranking and only decide which of the ranked examples
make the cut (``SelectConfig.length_bins``, ``SelectConfig.max_similarity``; both off by
default). Every scorer's aggregated frame can be shaped, so the remedies apply to LESS
variants and baselines alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from less_lab.config import SelectConfig
from less_lab.core.selection import selection_size

FeatureRows = Callable[[Sequence[str]], np.ndarray]
"""Rows of unit-scaled features for some example ids, whose inner products are the
similarities compared with ``max_similarity`` (``weighted_unit_features``)."""


def length_bin_of(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Each example's completion-length quantile bin (0 = shortest). Ties stay in one
    bin, so heavily tied lengths can give fewer, uneven bins."""
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="left")


def bin_quotas(bins: np.ndarray, k: int) -> np.ndarray:
    """Picks per bin: the bin's share of the pool times ``k``, rounded by largest
    remainder so that the quotas sum to ``k``."""
    counts = np.bincount(bins)
    exact = counts / counts.sum() * k
    quota = np.floor(exact).astype(np.int64)
    for j in np.argsort(-(exact - quota), kind="stable")[: k - quota.sum()]:
        quota[j] += 1
    return quota


def weighted_unit_features(stores: Sequence, weights: Sequence[float]) -> FeatureRows:
    """Row reader over per-checkpoint stores: each checkpoint's row scaled to unit length
    times ``sqrt(w_i)``, concatenated, so an inner product is ``sum_i w_i cos_i``, the
    learning-rate-weighted cosine the score itself uses."""
    index = {e: i for i, e in enumerate(stores[0].ids)}

    def rows(ids: Sequence[str]) -> np.ndarray:
        idx = np.asarray([index[e] for e in ids])
        order = np.argsort(idx)  # memmaps read fastest in order
        parts = []
        for store, w in zip(stores, weights, strict=True):
            x = np.empty((len(idx), store.features.shape[1]), dtype=np.float32)
            x[order] = np.asarray(store.features[idx[order]], dtype=np.float32)
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            parts.append(x / np.where(norms > 0, norms, 1.0) * np.sqrt(w))
        return np.concatenate(parts, axis=1)

    return rows


def shape_top(
    scores: pl.DataFrame,
    cfg: SelectConfig,
    *,
    lengths: pl.DataFrame | None = None,
    features: FeatureRows | None = None,
    chunk: int = 256,
) -> pl.DataFrame:
    """The top of an aggregated frame (one row per example) under ``cfg``'s remedies,
    best first with a 1-based ``rank``, like ``selection.select_top``.

    Candidates are visited best first; one is skipped when its length bin is full
    (``length_bins``; ``lengths`` has ``example_id, n_completion_tokens`` for the whole
    pool) or when its similarity to an already-selected example exceeds
    ``max_similarity`` (``features``). If quotas leave the selection short (a bin ran out
    of scored candidates), the best quota-skipped candidates fill it."""
    valid = scores.with_columns(pl.col("score").fill_nan(None)).drop_nulls("score")
    ranked = valid.sort("score", descending=True, maintain_order=True)
    k = selection_size(ranked.height, cfg)
    ids = ranked["example_id"].to_list()
    bins, quota = _bins(ids, lengths, cfg.length_bins, k)
    if cfg.max_similarity is not None and features is None:
        raise ValueError("max_similarity needs the pool's features (a gradient store)")
    picked, deferred = _greedy(ids, k, bins, quota, features, cfg.max_similarity, chunk)
    picked += deferred[: k - len(picked)]
    return ranked[sorted(picked)].with_row_index("rank", offset=1)


def _bins(ids, lengths, n_bins: int, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not n_bins:
        return None, None
    if lengths is None:
        raise ValueError("length_bins needs the pool's completion lengths")
    pool_len = lengths["n_completion_tokens"].to_numpy()
    pool_bins = length_bin_of(pool_len, n_bins)
    bin_of = dict(zip(lengths["example_id"].to_list(), pool_bins.tolist(), strict=True))
    return np.asarray([bin_of[e] for e in ids]), bin_quotas(pool_bins, k)


def _greedy(ids, k, bins, quota, features, threshold, chunk) -> tuple[list[int], list[int]]:
    """Positions accepted best first, and those skipped only for a full bin."""
    picked: list[int] = []
    deferred: list[int] = []
    used = np.zeros(len(quota), dtype=np.int64) if quota is not None else None
    kept = np.zeros((0, 0), dtype=np.float32)
    for start in range(0, len(ids), chunk):
        block = features(ids[start : start + chunk]) if threshold is not None else None
        for j in range(min(chunk, len(ids) - start)):
            pos = start + j
            if block is not None and kept.size and float((kept @ block[j]).max()) > threshold:
                continue
            if used is not None and used[bins[pos]] >= quota[bins[pos]]:
                deferred.append(pos)
                continue
            picked.append(pos)
            if used is not None:
                used[bins[pos]] += 1
            if block is not None:
                kept = block[j][None] if not kept.size else np.vstack([kept, block[j]])
            if len(picked) == k:
                return picked, deferred
    return picked, deferred
