"""What keeps the views interactive at the paper's scale (270K pool rows x 57 subtasks:
15M scores): curves drawn with a bounded number of points, distributions sent as box
statistics, scatter plots as a seeded sample, many groups folded into "(other)", and the
score matrix read straight from the scorer's example-major layout instead of through
string group-bys.

Every reduction starts only above a documented threshold (the module constants below, also
keyword arguments of the functions that use them), so a small input is drawn exactly as
it is: the view tests check figures value by value on small frames.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import polars as pl

CURVE_POINTS = 2000
"""A sorted-similarity curve longer than this is drawn with about this many points: the
first :data:`CURVE_HEAD` ranks (the top, where the curve drops) and the last rank exactly,
the rest evenly spaced in rank."""
CURVE_HEAD = 200
BOX_POINTS = 5000
"""A box with more values than this is sent as its statistics (quartiles, fences, mean)
instead of every value."""
SCATTER_POINTS = 5000
"""A scatter with more points than this shows a seeded random sample of this size
(statistics such as Spearman's rho are still computed on every point)."""
MAX_GROUPS = 24
"""A subset view with more groups than this keeps the largest (by pool share) and folds
the rest into :data:`OTHER`."""
OTHER = "(other)"
LARGE_ROWS = 200_000
"""Score frames with more rows than this take the fast paths (wide matrix, candidate
top-k); smaller frames go through the exact polars code they always used."""


@dataclass(frozen=True)
class WideScores:
    """A long score frame in the scorer's example-major layout as a matrix: ``matrix[i, j]``
    is example ``ids[i]``'s score for ``subtasks[j]`` (NaN where missing)."""

    ids: pl.Series
    sources: pl.Series
    subtasks: list[str]
    matrix: np.ndarray


_WIDE: dict[int, tuple[weakref.ref, WideScores | None]] = {}


def wide_scores(scores: pl.DataFrame) -> WideScores | None:
    """The matrix of a frame laid out as ``scoring.long_frame`` writes it (each example's
    rows contiguous, the subtasks in the same order every time, ids unique), else None.

    Remembered per frame object while it lives (views redraw from the same frame; polars
    frames are not changed in place by the pipeline), so the layout is checked once."""
    key = id(scores)
    hit = _WIDE.get(key)
    if hit is not None and hit[0]() is scores:
        return hit[1]
    wide = _wide_of(scores)
    _WIDE[key] = (weakref.ref(scores, lambda _ref: _WIDE.pop(key, None)), wide)
    return wide


def _wide_of(scores: pl.DataFrame) -> WideScores | None:
    n_rows = scores.height
    if n_rows == 0 or scores["subtask"].null_count() or scores["example_id"].null_count():
        return None
    head = scores["subtask"].head(4096).to_list()
    m = head.index(head[0], 1) if head[0] in head[1:] else len(head)
    names = head[:m]
    if n_rows % m or len(set(names)) != m:
        return None
    ids, subtask = scores["example_id"], scores["subtask"]
    if not (subtask.slice(m) == subtask.head(n_rows - m)).all():  # period m
        return None
    changes = (ids.slice(1) != ids.head(n_rows - 1)).arg_true().to_numpy()
    if not np.array_equal(changes, np.arange(m - 1, n_rows - 1, m)):  # runs of m
        return None
    first = ids.gather_every(m, 0)
    if first.n_unique() != first.len():
        return None
    values = scores["score"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return WideScores(first, scores["source"].gather_every(m, 0), names, values.reshape(-1, m))


def row_max(matrix: np.ndarray) -> np.ndarray:
    """Per-row max ignoring NaN (NaN where a row has no finite value), warning-free."""
    return np.fmax.reduce(matrix, axis=1) if matrix.shape[1] else np.full(len(matrix), np.nan)


def curve_points(
    values: np.ndarray, max_points: int = CURVE_POINTS, head: int = CURVE_HEAD
) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, values)`` to draw of a curve already sorted descending: every point when
    there are at most ``max_points``, else the first ``head`` ranks, the last rank and
    evenly spaced ranks between, as int32 ranks (1-based) and float32 values."""
    n = len(values)
    if n <= max_points:
        return np.arange(1, n + 1), values
    head = min(head, max_points // 2)
    rest = np.linspace(head, n - 1, max_points - head).round().astype(np.int64)
    idx = np.unique(np.concatenate([np.arange(head), rest, [n - 1]]))
    return (idx + 1).astype(np.int32), np.asarray(values)[idx].astype(np.float32)


def box_stats(values: np.ndarray) -> dict[str, float]:
    """Plotly's box statistics of ``values`` (linear quartiles, whiskers at the furthest
    values within 1.5 IQR, mean): what a precomputed ``go.Box`` needs."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    low, high = v[v >= q1 - 1.5 * iqr].min(), v[v <= q3 + 1.5 * iqr].max()
    stats = dict(q1=q1, median=med, q3=q3, lowerfence=low, upperfence=high, mean=v.mean())
    return {k: float(x) for k, x in stats.items()}


def sample_rows(frame: pl.DataFrame, max_rows: int = SCATTER_POINTS, seed: int = 0) -> pl.DataFrame:
    """``frame`` itself when it has at most ``max_rows`` rows, else a seeded random sample
    of ``max_rows`` of them in the frame's order."""
    if frame.height <= max_rows:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(frame.height, max_rows, replace=False))
    return frame[keep]


def fold_groups(
    shares: pl.DataFrame, by: str, order: list[str], max_groups: int = MAX_GROUPS
) -> pl.DataFrame:
    """``shares`` (``method, <by>, count, share``) with every group after the first
    ``max_groups - 1`` of ``order`` summed into :data:`OTHER` (unchanged when there are at
    most ``max_groups`` groups)."""
    if len(order) <= max_groups:
        return shares
    keep = set(order[: max_groups - 1])
    folded = shares.with_columns(
        pl.when(pl.col(by).is_in(list(keep))).then(pl.col(by)).otherwise(pl.lit(OTHER)).alias(by)
    )
    return folded.group_by("method", by, maintain_order=True).agg(
        pl.col("count").sum(), pl.col("share").sum()
    )
