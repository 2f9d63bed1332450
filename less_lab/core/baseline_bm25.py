"""The BM25 baseline (paper §5.2, appendix C): lexical overlap with the targets.

Why its own module: one baseline family per module (see ``baselines`` for the registry);
``neighbors`` also ranks pool examples by BM25.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import polars as pl

from less_lab.core.baseline_common import (
    Tokenizer,
    frame_texts,
    score_frame,
    target_subtasks,
    word_tokens,
)
from less_lab.core.scoring import SCORE_SCHEMA


def bm25_scores(
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    epsilon: float = 0.25,
    tokenizer: Tokenizer | None = None,
) -> pl.DataFrame:
    """BM25 (``rank_bm25.BM25Okapi``, as the paper) of each pool example against targets.

    Documents are pool examples, queries are target examples (full text each). The score
    of a pool example for subtask j is the *mean over the subtask's target examples* of
    their BM25 scores: one number per subtask, then ``aggregate`` takes the max, which is
    "the same approach to aggregating scores across subtasks as Eq. 2" (appendix C).

    Why it is fast: ``BM25Okapi.get_scores`` loops in Python over every document for every
    query token (minutes for 11k documents x 300 long queries). A BM25 score is linear in
    the query's term counts, so the mean over a subtask's queries equals the score of their
    mean count vector; we take idf, document frequencies and lengths from the
    ``BM25Okapi`` index (its idf definition and epsilon floor included) and compute that
    with one sparse gather per subtask. Tests compare it with ``get_scores``.
    """
    from rank_bm25 import BM25Okapi

    subtasks = target_subtasks(targets)
    if pool.height == 0:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    tok = tokenizer or word_tokens
    index = BM25Okapi([tok(t) for t in frame_texts(pool)], k1=k1, b=b, epsilon=epsilon)
    vocab = {term: j for j, term in enumerate(index.idf)}
    rows, cols, weights = _bm25_weights(index, vocab)
    query_counts = _mean_query_counts(targets, subtasks, vocab, tok)
    out = np.zeros((pool.height, len(subtasks)))
    for j, q in enumerate(query_counts):
        out[:, j] = np.bincount(rows, weights=weights * q[cols], minlength=pool.height)
    return score_frame(out, subtasks, pool)


def _bm25_weights(index: Any, vocab: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Sparse (doc, term, weight) with weight = idf * tf (k1 + 1) / (tf + k1 (1 - b + b
    |d| / avgdl)): the per-query-token term of ``BM25Okapi.get_scores``."""
    rows, cols, tfs = [], [], []
    for d, freqs in enumerate(index.doc_freqs):
        rows.append(np.full(len(freqs), d, dtype=np.int64))
        cols.append(np.fromiter((vocab[t] for t in freqs), np.int64, len(freqs)))
        tfs.append(np.fromiter(freqs.values(), np.float64, len(freqs)))
    row, col, tf = (np.concatenate(x) for x in (rows, cols, tfs))
    idf = np.array(list(index.idf.values()), dtype=np.float64)
    dl = np.asarray(index.doc_len, dtype=np.float64)[row]
    norm = index.k1 * (1 - index.b + index.b * dl / index.avgdl)
    return row, col, idf[col] * tf * (index.k1 + 1) / (tf + norm)


def _mean_query_counts(
    targets: pl.DataFrame, subtasks: list[str], vocab: dict[str, int], tok: Tokenizer
) -> list[np.ndarray]:
    """Per subtask, the mean over its target examples of their term counts (terms absent
    from the pool have idf 0 in ``BM25Okapi`` and are left out)."""
    out = []
    for name in subtasks:
        texts = frame_texts(targets.filter(pl.col("subtask") == name))
        q = np.zeros(len(vocab))
        for text in texts:
            for term, n in Counter(tok(text)).items():
                if term in vocab:
                    q[vocab[term]] += n / len(texts)
        out.append(q)
    return out
