"""Selection: the top of the aggregated scores, written back in the pool's own format."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from .config import SelectConfig


def selection_size(n: int, cfg: SelectConfig) -> int:
    """How many examples ``cfg`` asks for out of ``n`` (``k`` wins over ``fraction``)."""
    if cfg.k is not None:
        if cfg.k < 1:
            raise ValueError(f"k must be >= 1, got {cfg.k}")
        return min(cfg.k, n)
    if cfg.fraction is None or not 0 < cfg.fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {cfg.fraction}")
    return max(1, math.ceil(cfg.fraction * n))


def select_top(scores: pl.DataFrame, cfg: SelectConfig = SelectConfig()) -> pl.DataFrame:
    """Highest-scoring rows of an aggregated frame (one row per example), best first, with a
    1-based ``rank``. Examples whose score is NaN/null are never selected."""
    if scores["example_id"].n_unique() != scores.height:
        raise ValueError("select_top needs one row per example; call scoring.aggregate first")
    valid = scores.with_columns(pl.col("score").fill_nan(None)).drop_nulls("score")
    k = selection_size(valid.height, cfg)
    top = valid.sort("score", descending=True, maintain_order=True).head(k)
    return top.with_row_index("rank", offset=1)


def write_selection(selected: pl.DataFrame, pool: pl.DataFrame, out_dir: str | Path,
                    scores: pl.DataFrame | None = None) -> dict[str, Path]:
    """Write ``selected.jsonl`` (the original pool lines, best first) and parquet files of
    the selection and, if given, all scores. Returns the paths written."""
    from .data import write_jsonl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = selected.select("example_id", "rank").join(pool, on="example_id", how="left")
    missing = rows.filter(pl.col("raw").is_null())["example_id"].to_list()
    if missing:
        raise KeyError(f"{len(missing)} selected ids are not in the pool, e.g. {missing[0]}")
    paths = {"selected": write_jsonl(rows.sort("rank"), out_dir / "selected.jsonl")}
    selected.write_parquet(out_dir / "selection.parquet")
    paths["selection"] = out_dir / "selection.parquet"
    if scores is not None:
        scores.write_parquet(out_dir / "scores.parquet")
        paths["scores"] = out_dir / "scores.parquet"
    return paths
