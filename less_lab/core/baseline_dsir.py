"""The DSIR baseline (Xie et al. 2023; paper §5.2): hashed n-gram importance weights, as
deterministic scores or as DSIR's own importance resampling.

Why its own module: one baseline family per module (see ``baselines`` for the registry).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import SelectConfig
from less_lab.core.baseline_common import (
    Tokenizer,
    frame_texts,
    score_frame,
    target_subtasks,
    word_tokens,
)
from less_lab.core.scoring import aggregate
from less_lab.core.selection import selection_size

ALL_TARGETS = "(all)"
"""Subtask name of the single column when DSIR pools all targets (``per_subtask=False``)."""

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_STEP = np.uint64(0x100000001B3)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output (uint64, wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def word_hashes(words: Sequence[str], seed: int = 0) -> np.ndarray:
    """Stable 64-bit hash per word (keyed BLAKE2b): the same in every process, unlike
    Python's salted ``hash``; another ``seed`` gives other bucket collisions."""
    key = seed.to_bytes(8, "little", signed=True)
    digest = (hashlib.blake2b(w.encode(), digest_size=8, key=key).digest() for w in words)
    return np.fromiter((int.from_bytes(d, "little") for d in digest), np.uint64, len(words))


def hashed_ngrams(
    docs: Sequence[Sequence[str]], n_buckets: int, ngrams: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(doc, bucket)`` of every 1..``ngrams``-gram occurrence (DSIR's features; the
    authors' default, ngrams=2, is unigrams plus bigrams). n-grams never cross documents."""
    vocab: dict[str, int] = {}
    ids = [
        np.fromiter((vocab.setdefault(w, len(vocab)) for w in d), np.int64, len(d)) for d in docs
    ]
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    doc = np.repeat(np.arange(len(docs)), [len(x) for x in ids])
    h = word_hashes(list(vocab), seed)[flat]
    rows, buckets = [], []
    gram = h.copy()
    for order in range(1, ngrams + 1):
        if order > 1:  # extend each (order-1)-gram by the next word
            gram = _mix(gram[:-1] * _STEP + h[order - 1 :])
        valid = doc[: len(gram)] == doc[order - 1 : order - 1 + len(gram)]
        key = _mix(gram[valid] ^ np.uint64(order))
        rows.append(doc[: len(gram)][valid])
        buckets.append((key % np.uint64(n_buckets)).astype(np.int64))
    return np.concatenate(rows), np.concatenate(buckets)


def smoothed_distribution(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Add-alpha estimate ``(c + alpha) / (sum c + alpha * B)`` over the B buckets."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + alpha) / (counts.sum() + alpha * counts.shape[-1])


def dsir_scores(
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    n_buckets: int = 10_000,
    ngrams: int = 2,
    smoothing: float = 1.0,
    per_subtask: bool = True,
    length_normalize: bool = False,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> pl.DataFrame:
    """DSIR log importance weights (Xie et al. 2023, hashed n-gram features).

    Features are word unigrams..``ngrams``-grams hashed into ``n_buckets`` (hash keyed by
    ``seed``). The raw distribution is the pool's bag of hashed n-grams, the target one
    the targets'; both add-``smoothing`` estimates (the authors instead add 1e-8 to the
    probabilities, which makes every n-gram unseen in the few targets cost ~ -18 nats).
    The score of x is ``sum over its n-gram occurrences f of log p_target(f) - log
    p_raw(f)``, the log importance weight. Not normalised by length by default, like the
    authors, which is why DSIR favours short sequences (appendix C); ``length_normalize``
    divides by the number of n-grams instead.

    ``per_subtask=True`` fits one target distribution per subtask (one column each, max
    taken by ``aggregate`` like Eq. 2); ``False`` pools all targets into one distribution
    (the authors' setting), reported under subtask ``"(all)"``. These are deterministic
    scores for ``select_top``; :func:`dsir_resample` gives DSIR's sampling instead.
    """
    if n_buckets < 1 or ngrams < 1 or smoothing <= 0:
        raise ValueError("need n_buckets >= 1, ngrams >= 1 and smoothing > 0")
    subtasks = target_subtasks(targets)
    tok = tokenizer or word_tokens
    docs = [tok(t) for t in frame_texts(pool)] + [tok(t) for t in frame_texts(targets)]
    rows, buckets = hashed_ngrams(docs, n_buckets, ngrams, seed)
    in_pool = rows < pool.height
    p_rows, p_buckets = rows[in_pool], buckets[in_pool]
    log_raw = np.log(smoothed_distribution(np.bincount(p_buckets, minlength=n_buckets), smoothing))
    target_sub = np.asarray(targets["subtask"].to_list(), dtype=object)
    if per_subtask:
        groups = [target_sub == s for s in subtasks]
    else:
        groups = [np.ones(len(target_sub), dtype=bool)]
    t_rows, t_buckets = rows[~in_pool] - pool.height, buckets[~in_pool]
    n_feats = np.maximum(np.bincount(p_rows, minlength=pool.height), 1)
    out = np.zeros((pool.height, len(groups)))
    for j, members in enumerate(groups):
        counts = np.bincount(t_buckets[members[t_rows]], minlength=n_buckets)
        log_w = np.log(smoothed_distribution(counts, smoothing)) - log_raw
        out[:, j] = np.bincount(p_rows, weights=log_w[p_buckets], minlength=pool.height)
        if length_normalize:
            out[:, j] /= n_feats
    return score_frame(out, subtasks if per_subtask else [ALL_TARGETS], pool)


def gumbel_top_k(log_weights: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k draws without replacement with probability proportional to
    ``exp(log_weights)`` (Gumbel-top-k, as DSIR's resampling). NaN weights are never drawn."""
    lw = np.asarray(log_weights, dtype=np.float64)
    keys = lw + np.random.default_rng(seed).gumbel(size=lw.shape)
    keys[~np.isfinite(lw)] = -np.inf
    order = np.argsort(-keys, kind="stable")
    return order[: min(k, int(np.isfinite(lw).sum()))]


def dsir_resample(
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    cfg: SelectConfig | None = None,
    *,
    seed: int = 0,
    hash_seed: int = 0,
    **dsir_options: Any,
) -> pl.DataFrame:
    """DSIR importance resampling: ``cfg``'s k examples drawn without replacement with
    probability proportional to the importance weight (max over subtasks of the log weight
    when ``per_subtask``). Returns ``select_top``'s shape (rank, example_id, source,
    subtask, score) in draw order; ``seed`` drives the draw, ``hash_seed`` the hashing."""
    agg = aggregate(dsir_scores(pool, targets, seed=hash_seed, **dsir_options))
    k = selection_size(agg.height, cfg or SelectConfig())
    picked = gumbel_top_k(agg["score"].to_numpy(), k, seed)
    return agg[picked].with_row_index("rank", offset=1)
