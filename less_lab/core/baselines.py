"""The paper's baselines (§5.2, appendix C): random, BM25, DSIR and RDS.

Every scorer returns the frame LESS returns (``scoring.long_frame``: one row per pool
example and target subtask, columns ``example_id, source, subtask, score``), so
``scoring.aggregate`` (max over subtasks, as Eq. 2) and ``selection.select_top`` treat
them exactly like LESS scores. Subtasks are the sorted distinct ``subtask`` values of the
targets, as in ``scoring.subtask_scores``.

Text for the lexical baselines (BM25, DSIR) is the example's message contents joined by
newlines (no chat markers), lower-cased and split into words: maximal runs of Unicode
letters, combining marks and digits, so Bengali or Telugu words keep their vowel signs.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import DataConfig, SelectConfig
from less_lab.core.scoring import SCORE_SCHEMA, aggregate, long_frame, unit_rows
from less_lab.core.selection import selection_size

Tokenizer = Callable[[str], list[str]]
ALL_TARGETS = "(all)"
"""Subtask name of the single column when DSIR pools all targets (``per_subtask=False``)."""


# --------------------------------------------------------------------------- text


class _WordChars(dict):
    """``str.translate`` table built lazily: letters, marks and digits stay, anything else
    becomes a space. Caching per code point keeps it C-speed after the first sighting."""

    def __missing__(self, code: int) -> int:
        keep = unicodedata.category(chr(code))[0] in "LMN"
        self[code] = value = code if keep else 32
        return value


_WORD_CHARS = _WordChars()


def word_tokens(text: str) -> list[str]:
    """Default tokenizer: lower-cased runs of letters, combining marks and digits."""
    return text.translate(_WORD_CHARS).lower().split()


def example_text(messages: Sequence[dict[str, str]]) -> str:
    """All message contents of an example, joined by newlines (prompt and completion)."""
    return "\n".join(m["content"] for m in messages)


def _texts(frame: pl.DataFrame) -> list[str]:
    return [example_text(m) for m in frame["messages"].to_list()]


def _subtasks(targets: pl.DataFrame) -> list[str]:
    if "subtask" not in targets.columns or targets.height == 0:
        raise ValueError("targets must be a non-empty frame with a 'subtask' column")
    return sorted(targets["subtask"].unique().to_list())


def _frame(matrix: np.ndarray, subtasks: list[str], pool: pl.DataFrame) -> pl.DataFrame:
    ids = pool["example_id"].to_list()
    sources = None
    if "source" in pool.columns:
        sources = dict(zip(ids, pool["source"].to_list(), strict=True))
    return long_frame(np.asarray(matrix, dtype=np.float64), subtasks, ids, sources)


# --------------------------------------------------------------------------- random


def random_scores(pool: pl.DataFrame, targets: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Uniform [0, 1) scores from ``seed``; every subtask gets the example's same score, so
    the max over subtasks keeps it and ``select_top`` makes a uniform random selection."""
    subtasks = _subtasks(targets)
    u = np.random.default_rng(seed).random(pool.height)
    return _frame(np.repeat(u[:, None], len(subtasks), axis=1), subtasks, pool)


# --------------------------------------------------------------------------- BM25


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

    subtasks = _subtasks(targets)
    if pool.height == 0:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    tok = tokenizer or word_tokens
    index = BM25Okapi([tok(t) for t in _texts(pool)], k1=k1, b=b, epsilon=epsilon)
    vocab = {term: j for j, term in enumerate(index.idf)}
    rows, cols, weights = _bm25_weights(index, vocab)
    query_counts = _mean_query_counts(targets, subtasks, vocab, tok)
    out = np.zeros((pool.height, len(subtasks)))
    for j, q in enumerate(query_counts):
        out[:, j] = np.bincount(rows, weights=weights * q[cols], minlength=pool.height)
    return _frame(out, subtasks, pool)


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
        texts = _texts(targets.filter(pl.col("subtask") == name))
        q = np.zeros(len(vocab))
        for text in texts:
            for term, n in Counter(tok(text)).items():
                if term in vocab:
                    q[vocab[term]] += n / len(texts)
        out.append(q)
    return out


# --------------------------------------------------------------------------- DSIR

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
    subtasks = _subtasks(targets)
    tok = tokenizer or word_tokens
    docs = [tok(t) for t in _texts(pool)] + [tok(t) for t in _texts(targets)]
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
    return _frame(out, subtasks if per_subtask else [ALL_TARGETS], pool)


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


# --------------------------------------------------------------------------- RDS


def last_token_states(
    model: Any,
    tokenizer: Any,
    frame: pl.DataFrame,
    *,
    data_cfg: DataConfig | None = None,
    token_budget: int = 4096,
    max_batch_examples: int = 64,
    progress: bool = True,
    desc: str = "rds",
) -> tuple[list[str], np.ndarray]:
    """``(example_ids, states)``: the final-layer hidden state (after the final norm, as
    ``hidden_states[-1]``) at the last non-padding token of each example, tokenized like
    LESS (``formatting.tokenize``). Examples ``tokenize`` drops are absent. Right padding and
    the attention mask make the state independent of the batch it was computed in."""
    import torch
    from tqdm.auto import tqdm

    from less_lab.data.batching import collate, token_budget_batches
    from less_lab.data.formatting import tokenize
    from less_lab.model.lora import decoder_and_head

    tok, _ = tokenize(frame, tokenizer, data_cfg or DataConfig())
    ids = tok["example_id"].to_list()
    input_ids, labels = tok["input_ids"].to_list(), tok["labels"].to_list()
    body, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = token_budget_batches(tok["n_tokens"].to_list(), token_budget, max_batch_examples)
    out = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                batch = collate([input_ids[i] for i in idx], [labels[i] for i in idx], pad)
                mask = batch["attention_mask"].to(device)
                hidden = body(input_ids=batch["input_ids"].to(device), attention_mask=mask)
                last = mask.sum(1) - 1
                states = hidden.last_hidden_state[torch.arange(len(idx), device=device), last]
                states = states.float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(ids), states.shape[1]), dtype=np.float32)
                out[idx] = states
    finally:
        model.train(was_training)
    return ids, out if out is not None else np.zeros((0, 0), dtype=np.float32)


def rds_scores(
    model: Any,
    tokenizer: Any,
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    data_cfg: DataConfig | None = None,
    token_budget: int = 4096,
    max_batch_examples: int = 64,
    progress: bool = True,
) -> pl.DataFrame:
    """RDS: Eq. 2 with last-token final hidden states in place of gradient features.

    Mirrors LESS's scoring: every representation is L2-normalised (as LESS's projected
    gradients are), subtask j's target is the mean of its normalised target states, and
    the score is the cosine with it; ``aggregate`` then takes the max. Works on a plain
    or PEFT-wrapped causal LM (LoRA layers active); runs in eval mode without gradients.
    Pool examples ``formatting.tokenize`` drops (no completion token left) score NaN and are
    never selected; a subtask left with no target example scores NaN, with a warning.
    """
    subtasks = _subtasks(targets)
    kw = dict(data_cfg=data_cfg, token_budget=token_budget, progress=progress)
    kw["max_batch_examples"] = max_batch_examples
    t_ids, t_states = last_token_states(model, tokenizer, targets, desc="rds targets", **kw)
    p_ids, p_states = last_token_states(model, tokenizer, pool, desc="rds pool", **kw)
    sub_of = dict(zip(targets["example_id"].to_list(), targets["subtask"].to_list(), strict=True))
    t_sub = np.asarray([sub_of[i] for i in t_ids], dtype=object)
    t_unit = unit_rows(t_states)
    means = np.full((len(subtasks), p_states.shape[1] or t_states.shape[1]), np.nan)
    for j, name in enumerate(subtasks):
        if (t_sub == name).any():
            means[j] = t_unit[t_sub == name].mean(0)
        else:
            warnings.warn(f"rds_scores: subtask {name!r} has no usable target", stacklevel=2)
    out = np.full((pool.height, len(subtasks)), np.nan)
    if p_ids:
        row = {eid: i for i, eid in enumerate(pool["example_id"].to_list())}
        out[[row[i] for i in p_ids]] = unit_rows(p_states) @ unit_rows(means).T
    return _frame(out, subtasks, pool)


# --------------------------------------------------------------------------- registry


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
