"""Selection: the top of the aggregated scores, written back in the pool's own format."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from less_lab._io import write_parquet
from less_lab.config import SelectConfig
from less_lab.data.pool import write_jsonl


def selection_size(n: int, cfg: SelectConfig) -> int:
    """How many of ``n`` scored examples ``cfg`` asks for: ``SelectConfig.size``'s rule
    (``k`` wins, else the fraction rounded up), with ``k`` capped at ``n`` because ``n``
    counts the finitely scored examples, which can be fewer than the pool that
    ``SelectConfig.size`` checked ``k`` against."""
    return min(cfg.k, n) if cfg.k is not None else cfg.size(n)


def select_top(scores: pl.DataFrame, cfg: SelectConfig = SelectConfig()) -> pl.DataFrame:
    """Highest-scoring rows of an aggregated frame (one row per example), best first, with a
    1-based ``rank``. Examples whose score is NaN/null are never selected."""
    if scores["example_id"].n_unique() != scores.height:
        raise ValueError("select_top needs one row per example; call scoring.aggregate first")
    valid = scores.with_columns(pl.col("score").fill_nan(None)).drop_nulls("score")
    k = selection_size(valid.height, cfg)
    top = valid.sort("score", descending=True, maintain_order=True).head(k)
    return top.with_row_index("rank", offset=1)


def write_selection(
    selected: pl.DataFrame,
    pool: pl.DataFrame,
    out_dir: str | Path,
    scores: pl.DataFrame | None = None,
) -> dict[str, Path]:
    """Write ``selected.jsonl`` (the original pool lines, best first) and parquet files of
    the selection and, if given, all scores. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = selected.select("example_id", "rank").join(pool, on="example_id", how="left")
    missing = rows.filter(pl.col("raw").is_null())["example_id"].to_list()
    if missing:
        raise KeyError(f"{len(missing)} selected ids are not in the pool, e.g. {missing[0]}")
    paths = {"selected": write_jsonl(rows.sort("rank"), out_dir / "selected.jsonl")}
    write_parquet(out_dir / "selection.parquet", selected)
    paths["selection"] = out_dir / "selection.parquet"
    if scores is not None:
        write_parquet(out_dir / "scores.parquet", scores)
        paths["scores"] = out_dir / "scores.parquet"
    return paths


# --------------------------------------------------------------------- selection shape
_DEFAULT_SELECT = SelectConfig()
# Why: the paper's max over subtasks can hand most of a selection to one subtask (a pilot
# here put 55 of 60 MMLU picks in one subject), and cosine scores still lean towards short
# completions. These helpers offer a balanced alternative next to the max, and describe
# what any selection looks like against the pool it came from.


def _valid_long(long_scores: pl.DataFrame) -> pl.DataFrame:
    """Finite (example, subtask) scores with the pool order kept in ``_order``."""
    need = {"example_id", "subtask", "score"}
    if not need <= set(long_scores.columns):
        raise ValueError(f"need a long score frame with {sorted(need)}, got {long_scores.columns}")
    frame = (
        long_scores
        if "source" in long_scores.columns
        else long_scores.with_columns(pl.lit("").alias("source"))
    )
    return (
        frame.with_columns(pl.col("score").cast(pl.Float64).fill_nan(None))
        .drop_nulls("score")
        .with_row_index("_order")
    )


def round_robin_rows(ex: np.ndarray, sub: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """Rows picked by letting each subtask take its best untaken example in turn; within a
    round, subtasks go in order of their candidate's score, so a final partial round keeps
    the strongest candidates."""
    lists = [np.flatnonzero(sub == j) for j in range(sub.max() + 1)]  # rows sorted by score
    ptr = [0] * len(lists)
    taken = np.zeros(ex.max() + 1, dtype=bool)
    picks: list[int] = []

    def head(j: int) -> int | None:
        rows = lists[j]
        while ptr[j] < len(rows) and taken[ex[rows[ptr[j]]]]:
            ptr[j] += 1
        return rows[ptr[j]] if ptr[j] < len(rows) else None

    while len(picks) < k:
        heads = [(h, j) for j in range(len(lists)) if (h := head(j)) is not None]
        if not heads:
            break
        for _, j in sorted(heads, key=lambda hj: (-score[hj[0]], hj[1])):
            row = head(j)
            if row is None:
                continue
            taken[ex[row]] = True
            picks.append(row)
            if len(picks) == k:
                break
    return picks


def _capped(ex: np.ndarray, sub: np.ndarray, score: np.ndarray, k: int, cap: int) -> list[int]:
    """Greedy over (example, subtask) pairs, best first: an example is credited to the
    best subtask that still has room. With ``cap >= k`` this is the paper's max."""
    counts = np.zeros(sub.max() + 1, dtype=np.int64)
    taken = np.zeros(ex.max() + 1, dtype=bool)
    picks: list[int] = []
    for row in range(len(score)):  # rows come sorted by score, best first
        if taken[ex[row]] or counts[sub[row]] >= cap:
            continue
        taken[ex[row]] = True
        counts[sub[row]] += 1
        picks.append(int(row))
        if len(picks) == k:
            break
    return picks


def select_balanced(
    long_scores: pl.DataFrame,
    cfg: SelectConfig = _DEFAULT_SELECT,
    mode: str = "round_robin",
    cap: int | None = None,
) -> pl.DataFrame:
    """A selection spread over the target's subtasks, from the long per-subtask scores.

    ``round_robin``: subtasks take turns picking their best not-yet-selected example.
    ``cap``: the paper's ranking, but no subtask is credited with more than ``cap`` picks
    (default ``ceil(k / n_subtasks)``); an example whose best subtask is full counts for its
    next best one. Returns ``rank, example_id, source, subtask, score`` like ``select_top``,
    where ``subtask``/``score`` are the subtask the example was picked for and its score
    there. NaN scores are never selected."""
    if mode not in ("round_robin", "cap"):
        raise ValueError(f"unknown balanced mode {mode!r}; expected round_robin or cap")
    valid = _valid_long(long_scores)
    if valid.height == 0:
        return valid.drop("_order").with_row_index("rank", offset=1)
    subtasks = sorted(valid["subtask"].unique().to_list())
    ids = valid["example_id"].unique(maintain_order=True).to_list()
    k = selection_size(len(ids), cfg)
    ranked = valid.sort(["score", "_order"], descending=[True, False])
    ex = (
        ranked["example_id"]
        .replace_strict(ids, list(range(len(ids))), return_dtype=pl.Int64)
        .to_numpy()
    )
    sub = (
        ranked["subtask"]
        .replace_strict(subtasks, list(range(len(subtasks))), return_dtype=pl.Int64)
        .to_numpy()
    )
    score = ranked["score"].to_numpy()
    if mode == "round_robin":
        picks = round_robin_rows(ex, sub, score, k)
    else:
        cap = math.ceil(k / len(subtasks)) if cap is None else int(cap)
        if cap < 1 or cap * len(subtasks) < k:
            raise ValueError(f"cap={cap} x {len(subtasks)} subtasks cannot hold k={k} picks")
        picks = _capped(ex, sub, score, k, cap)
    top = ranked[picks].select("example_id", "source", "subtask", "score")
    return top.with_row_index("rank", offset=1)


@dataclass
class SelectionReport:
    """What a selection looks like next to its pool: subtasks it was picked for, sources,
    and token lengths. ``warnings`` name the shapes a pilot found harmful."""

    subtasks: pl.DataFrame
    """``subtask, n, share`` of the selection (zeros included when subtasks are given)."""
    sources: pl.DataFrame
    """``source, n_pool, share_pool, n_selected, share_selected, ratio``."""
    lengths: pl.DataFrame
    """``stat, pool, selected, ratio`` for completion/total tokens and prompt-cut share."""
    warnings: list[str]

    def text(self, warnings: bool = True) -> str:
        sel = self.subtasks.filter(pl.col("n") > 0).sort("n", descending=True)
        top = ", ".join(f"{s} {n}" for s, n in sel.select("subtask", "n").head(5).iter_rows())
        lines = [
            f"selection of {int(self.subtasks['n'].sum())}: {sel.height} of "
            f"{self.subtasks.height} subtasks used (top: {top})"
        ]
        for stat, p, s, r in self.lengths.iter_rows():
            lines.append(f"  {stat:<28} pool {p:8.1f}   selected {s:8.1f}   ratio {r:5.2f}")
        src = self.sources.sort("n_selected", descending=True)
        lines.append(
            "  sources (selected share vs pool share): "
            + ", ".join(
                f"{s} {a:.0%}/{b:.0%}"
                for s, a, b in src.select("source", "share_selected", "share_pool").iter_rows()
            )
        )
        lines += [f"  WARNING: {w}" for w in self.warnings] if warnings else []
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


def _length_rows(pool_tok: pl.DataFrame, sel_tok: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for col in ("n_completion_tokens", "n_tokens"):
        for stat, fn in (("mean", lambda s: s.mean()), ("median", lambda s: s.median())):
            p, s = float(fn(pool_tok[col]) or 0.0), float(fn(sel_tok[col]) or 0.0)
            rows.append((f"{col} {stat}", p, s))
    if "n_prompt_tokens_cut" in pool_tok.columns:
        cut = [float((f["n_prompt_tokens_cut"] > 0).mean() or 0.0) for f in (pool_tok, sel_tok)]
        rows.append(("share with prompt cut", cut[0], cut[1]))
    return pl.DataFrame(
        [(n, p, s, s / p if p else float("nan")) for n, p, s in rows],
        schema={"stat": pl.String, "pool": pl.Float64, "selected": pl.Float64, "ratio": pl.Float64},
        orient="row",
    )


def selection_report(
    selected: pl.DataFrame,
    pool: pl.DataFrame,
    tokenized_pool: pl.DataFrame,
    *,
    subtasks: list[str] | None = None,
    max_subtask_share: float = 0.5,
    length_ratio: float = 0.5,
    max_source_shift: float = 0.5,
) -> SelectionReport:
    """Per-subtask counts, source and completion-length distributions of ``selected``
    (any frame with ``example_id`` and ``subtask``) against the whole ``pool``.

    Warns when one subtask holds more than ``max_subtask_share`` of the picks (with 3+
    subtasks), when the mean completion is shorter than ``length_ratio`` times the pool's
    (or longer than its inverse), and when the source mix moves by more than
    ``max_source_shift`` in total-variation distance."""
    n_sel = selected.height
    counts = selected.group_by("subtask").agg(pl.len().alias("n"))
    if subtasks is not None:
        counts = pl.DataFrame({"subtask": subtasks}).join(counts, on="subtask", how="left")
    counts = (
        counts.with_columns(pl.col("n").fill_null(0).cast(pl.Int64))
        .with_columns((pl.col("n") / max(n_sel, 1)).alias("share"))
        .sort(["n", "subtask"], descending=[True, False])
    )
    src_pool = pool.group_by("source").agg(pl.len().alias("n_pool"))
    src_sel = (
        selected.select("example_id")
        .join(pool.select("example_id", "source"), on="example_id", how="left")
        .group_by("source")
        .agg(pl.len().alias("n_selected"))
    )
    sources = (
        src_pool.join(src_sel, on="source", how="full", coalesce=True)
        .with_columns(pl.col("n_pool", "n_selected").fill_null(0))
        .with_columns(
            (pl.col("n_pool") / pool.height).alias("share_pool"),
            (pl.col("n_selected") / max(n_sel, 1)).alias("share_selected"),
        )
        .with_columns((pl.col("share_selected") / pl.col("share_pool")).alias("ratio"))
        .select("source", "n_pool", "share_pool", "n_selected", "share_selected", "ratio")
        .sort("n_pool", descending=True)
    )
    sel_tok = selected.select("example_id").join(tokenized_pool, on="example_id", how="inner")
    lengths = _length_rows(tokenized_pool, sel_tok)
    warnings = []
    used = counts.filter(pl.col("n") > 0)
    if counts.height >= 3 and n_sel and used["share"].max() > max_subtask_share:
        warnings.append(
            f"{used['n'][0]} of {n_sel} picks are for one subtask "
            f"({used['subtask'][0]}): try selection.select_balanced"
        )
    ratio = lengths.filter(pl.col("stat") == "n_completion_tokens mean")["ratio"][0]
    if ratio < length_ratio or ratio > 1 / length_ratio:
        warnings.append(f"mean completion length is {ratio:.2f}x the pool's (length bias)")
    tv = 0.5 * float((sources["share_selected"] - sources["share_pool"]).abs().sum())
    if tv > max_source_shift:
        warnings.append(f"source mix differs from the pool by {tv:.0%} (total variation)")
    return SelectionReport(counts, sources, lengths, warnings)


@dataclass(frozen=True)
class Selection:
    """What ``Lab.select`` made: the selected rows, where they were written, the
    split-half reliability checked with them (None for exact features) and the long
    per-subtask scores they were picked from."""

    target: str
    frame: pl.DataFrame
    paths: dict[str, Path]
    reliability: Any = None
    """A ``checks.reliability.Reliability`` (the facade fills it in)."""
    scores: pl.DataFrame | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.paths["selected"].parent

    def __len__(self) -> int:
        return self.frame.height
