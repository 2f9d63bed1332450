"""The frames each view shows, built from frames the pipeline produced (pure polars and
numpy: no figure, no widget, no datastore). Tests and notebooks check a figure against
the frame it plots; every view and figure takes its numbers from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from less_lab.core.scoring import aggregate
from less_lab.core.stats import correlation
from less_lab.views.scale import LARGE_ROWS, WideScores, row_max, wide_scores

MAX_SUBTASK = "(max over subtasks)"
"""Subtask choice meaning the paper's score: the max over subtasks (``scoring.aggregate``)."""
POOL_LABEL = "(pool)"
"""Name of the whole-pool reference bar/box when ``include_pool=True``."""
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def conversation_text(messages: Sequence[Mapping[str, str]] | None) -> str:
    """``User: ...`` / ``Assistant: ...`` turns, as the paper prints examples (raw text)."""
    turns = []
    for m in messages or []:
        turns.append(f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}")
    return "\n\n".join(turns)


def prompt_completion(messages: Sequence[Mapping[str, str]] | None) -> tuple[str, str]:
    """(prompt text, completion text): completion is every assistant turn, as in training."""
    prompt = [m["content"] for m in messages or [] if m["role"] != "assistant"]
    completion = [m["content"] for m in messages or [] if m["role"] == "assistant"]
    return "\n".join(prompt), "\n".join(completion)


def messages_by_id(pool: pl.DataFrame) -> dict[str, list]:
    return dict(zip(pool["example_id"].to_list(), pool["messages"].to_list(), strict=True))


def messages_for(pool: pl.DataFrame, ids: Sequence[str]) -> dict[str, list]:
    """:func:`messages_by_id` of only the pool rows with these ids: a lookup that costs
    one filter, not a dict of the whole (270K-row) pool."""
    wanted = [i for i in ids if i is not None]
    return messages_by_id(pool.filter(pl.col("example_id").is_in(wanted)))


def subtasks_of(scores: pl.DataFrame) -> list[str]:
    """Distinct subtasks of a long score frame, sorted."""
    wide = wide_scores(scores) if scores.height > LARGE_ROWS else None
    if wide is not None:
        return sorted(wide.subtasks)
    return sorted(scores["subtask"].drop_nulls().unique().to_list())


def top_examples(
    scores: pl.DataFrame, subtask: str | None = None, n: int = 10, negative: bool = False
) -> pl.DataFrame:
    """``rank, example_id, source, subtask, score`` of the ``n`` highest (or, with
    ``negative``, lowest: appendix K.2) scores for one subtask, or for the paper's max over
    subtasks when ``subtask`` is None or :data:`MAX_SUBTASK`. NaN scores never show; ties
    keep pool order."""
    if subtask is None or subtask == MAX_SUBTASK:
        wide = wide_scores(scores) if scores.height > LARGE_ROWS else None
        if wide is not None:
            return _top_of_wide(wide, n, negative)
        rows = aggregate(scores)
    else:
        rows = scores.filter(pl.col("subtask") == subtask)
        if rows.is_empty():
            raise KeyError(f"no scores for subtask {subtask!r}; have {subtasks_of(scores)}")
    rows = rows.with_columns(pl.col("score").fill_nan(None)).drop_nulls("score")
    rows = rows.sort("score", descending=not negative, maintain_order=True).head(max(n, 0))
    return rows.with_row_index("rank", offset=1).select(
        "rank", "example_id", "source", "subtask", "score"
    )


def _top_of_wide(wide: WideScores, n: int, negative: bool) -> pl.DataFrame:
    """:func:`top_examples` of the max over subtasks from the matrix (same rows, same
    tie order: pool order), without aggregating 15M rows through a string group-by."""
    best = row_max(wide.matrix)
    finite = np.flatnonzero(np.isfinite(best))
    order = finite[np.argsort(best[finite] if negative else -best[finite], kind="stable")]
    pick = order[: max(n, 0)]
    argmax = np.nanargmax(wide.matrix[pick], axis=1) if len(pick) else np.zeros(0, int)
    return pl.DataFrame(
        {
            "rank": np.arange(1, len(pick) + 1, dtype=np.uint32),
            "example_id": wide.ids.gather(pick),
            "source": wide.sources.gather(pick),
            "subtask": [wide.subtasks[j] for j in argmax],
            "score": best[pick],
        },
        schema={"rank": pl.UInt32, "example_id": pl.String, "source": pl.String,
                "subtask": pl.String, "score": pl.Float64},
    )  # fmt: skip


def with_examples(
    frame: pl.DataFrame, pool: pl.DataFrame, tokenized: pl.DataFrame | None = None
) -> pl.DataFrame:
    """``frame`` plus raw ``text`` (the conversation) and prompt/completion lengths:
    tokens when ``tokenized`` is given (``prompt_tokens, completion_tokens``), else
    characters (``prompt_chars, completion_chars``). Row order is kept."""
    msgs = messages_for(pool, frame["example_id"].to_list())
    convs = [msgs.get(i) for i in frame["example_id"].to_list()]
    out = frame.with_columns(
        pl.Series("text", [conversation_text(m) for m in convs], dtype=pl.String)
    )
    if tokenized is not None:
        lengths = tokenized.select(
            "example_id",
            (pl.col("n_tokens") - pl.col("n_completion_tokens")).alias("prompt_tokens"),
            pl.col("n_completion_tokens").alias("completion_tokens"),
        )
        return out.join(lengths, on="example_id", how="left", maintain_order="left")
    pairs = [prompt_completion(m) for m in convs]
    return out.with_columns(
        pl.Series("prompt_chars", [len(p) for p, _ in pairs], pl.Int64),
        pl.Series("completion_chars", [len(c) for _, c in pairs], pl.Int64),
    )


def selections_with_pool(
    selections: Mapping[str, pl.DataFrame], pool: pl.DataFrame, include_pool: bool
) -> dict[str, pl.DataFrame]:
    """``selections`` by method, then, with ``include_pool``, the whole pool's ids as method
    :data:`POOL_LABEL`: the reference an unbiased pick would match. Every figure and table
    that compares methods takes its methods, and their order, from here."""
    named = dict(selections)
    if include_pool:
        named[POOL_LABEL] = pool.select("example_id")
    return named


def subset_shares(
    selections: Mapping[str, pl.DataFrame],
    pool: pl.DataFrame,
    by: str = "source",
    include_pool: bool = False,
) -> pl.DataFrame:
    """``method, <by>, count, share``: how each method's selection splits over the pool's
    ``by`` groups (appendix K.3); shares sum to 1 per method. ``include_pool`` adds the
    whole pool as method :data:`POOL_LABEL`, the share an unbiased pick would have."""
    if by not in pool.columns:
        raise KeyError(f"pool has no column {by!r}; have {pool.columns}")
    groups = pool.select("example_id", pl.col(by).cast(pl.String).fill_null("(missing)"))
    parts = []
    for method, sel in selections_with_pool(selections, pool, include_pool).items():
        rows = sel.select("example_id").join(groups, on="example_id", how="left")
        counts = rows.with_columns(pl.col(by).fill_null("(not in pool)")).group_by(by).len("count")
        parts.append(
            counts.with_columns(
                pl.lit(method).alias("method"),
                (pl.col("count") / max(rows.height, 1)).alias("share"),
            )
        )
    out = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(
            schema={by: pl.String, "count": pl.UInt32, "method": pl.String, "share": pl.Float64}
        )
    )
    return out.select("method", by, "count", "share").sort("method", by, maintain_order=True)


def selected_lengths(
    selections: Mapping[str, pl.DataFrame],
    tokenized_pool: pl.DataFrame,
    column: str = "n_completion_tokens",
    include_pool: bool = False,
) -> pl.DataFrame:
    """``method, example_id, length``: the ``column`` length of each selected example, in
    the selection's row order (Table 13 averages these). Examples ``tokenize`` dropped have
    no length and are left out."""
    lengths = tokenized_pool.select("example_id", pl.col(column).alias("length"))
    named = selections_with_pool(selections, tokenized_pool, include_pool)
    parts = [
        sel.select("example_id")
        .join(lengths, on="example_id", how="inner", maintain_order="left")
        .with_columns(pl.lit(m).alias("method"))
        for m, sel in named.items()
    ]
    if not parts:
        return pl.DataFrame(
            schema={"method": pl.String, "example_id": pl.String, "length": pl.Int64}
        )
    return pl.concat(parts).select("method", "example_id", "length")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with < 3 finite pairs."""
    return correlation(np.asarray(x, dtype=float), np.asarray(y, dtype=float), "spearman")


def sorted_similarities(scores: pl.DataFrame, subtask: str) -> np.ndarray:
    """One subtask's scores (or :data:`MAX_SUBTASK`'s), finite ones only, descending."""
    rows = (
        aggregate(scores) if subtask == MAX_SUBTASK else scores.filter(pl.col("subtask") == subtask)
    )
    s = rows["score"].to_numpy().astype(float)
    return -np.sort(-s[np.isfinite(s)])


def similarity_curves(scores: pl.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`sorted_similarities` of each of ``names``; a large frame in the scorer's
    layout is sorted as one matrix (57 subtasks x 270K: a tenth of a second) instead of
    57 filters of 15M rows."""
    wide = wide_scores(scores) if scores.height > LARGE_ROWS else None
    if wide is None:
        return {name: sorted_similarities(scores, name) for name in names}
    column = {name: j for j, name in enumerate(wide.subtasks)}
    out = {}
    for name in names:
        if name == MAX_SUBTASK:
            s = row_max(wide.matrix)
        elif name in column:
            s = wide.matrix[:, column[name]]
        else:
            s = np.zeros(0)
        out[name] = -np.sort(-s[np.isfinite(s)])
    return out
