"""Looking at a run: split-half reliability, diagnostics and the interactive views.

Functions of a ``Lab`` (duck-typed, like ``compare``): the facade's methods
``Lab.reliability``, ``Lab.diagnostics`` and ``Lab.explore`` call them. They gather the
frames a check or a view needs from the run directory and hand them down; the checks and
views themselves never see a ``Lab``.
"""

from __future__ import annotations

import warnings
from typing import Any

import polars as pl

from less_lab.checks.adam_health import adam_health
from less_lab.checks.diagnostics import summary
from less_lab.checks.reliability import Reliability, split_half
from less_lab.core.datastore import open_store, stats_frame
from less_lab.core.selection import Selection, selection_report
from less_lab.views.widgets import explore as explore_views


def reliability(lab: Any, target: str) -> Reliability | None:
    """Split-half projection reliability of ``target``'s scores (None for exact features)."""
    pool_stores = lab.datastore("pool")
    if pool_stores[0].meta["projection"]["kind"] == "none":
        return None
    why = reliability_unavailable(pool_stores[0])
    if why is not None:
        warnings.warn(f"{target}: split-half reliability unavailable: {why}", stacklevel=2)
        return None
    return split_half(
        pool_stores,
        lab.datastore(target),
        lab.targets[target],
        [c.lr for c in lab.checkpoints()],
        lab.score_cfg,
        lab.select_cfg,
    )


def reliability_unavailable(store: Any) -> str | None:
    """Why split-half reliability cannot be measured on ``store`` (None when it can):
    it needs a projection whose column halves are independent sketches (every kind
    less_lab builds, and the reference's Rademacher projection) and at least 2 columns."""
    proj = store.meta.get("projection") or {}
    if proj.get("kind") in (None, "unknown"):
        return (
            f"{store.path}: the projection that made these features is not recorded, so "
            "its halves cannot be assumed independent"
        )
    if store.dim < 2:
        return f"{store.path}: d={store.dim} is too small to split"
    return None


def diagnostics(lab: Any, target: str, selection: Selection | None = None, *, adam_sample: int = 8):
    """Can this selection be trusted? Reliability, Adam health, selection shape,
    truncation (``checks.diagnostics.summary``; ``print`` it or use ``.frames()``).
    Reuses the split-half check of ``selection`` (made by ``select``)."""
    selection = selection if selection is not None else lab.select(target)
    tok = lab.tokenized("pool")
    report = selection_report(
        selection.frame,
        lab.pool,
        tok,
        subtasks=sorted(lab.targets[target]["subtask"].unique()),
    )
    adam = None
    if lab.grad_cfg.pool_feature == "adam":
        adam = adam_health(
            lab.checkpoints(),
            lab.grad_cfg,
            model=lab.model,
            tokenized=tok,
            pad_id=lab.tokenizer.pad_token_id,
            sample=adam_sample,
        )
    return summary(
        lab.datastore("pool"),
        lab.datastore(target),
        lab.targets[target],
        [c.lr for c in lab.checkpoints()],
        score_cfg=lab.score_cfg,
        select_cfg=lab.select_cfg,
        selection=report,
        adam=adam,
        tokenized_pool=tok,
        dropped=lab.dropped.get("pool"),
        pool=lab.pool,
        reliability=selection.reliability,
    )


def explore(lab: Any, target: str, **views: Any):
    """Interactive views of a finished selection: top/negative examples, similarity
    curves, subset distribution, lengths, neighbours (``views.widgets.explore``).
    Reads the scores and selection ``select`` wrote; never recomputes a stage."""
    out = lab.selection_dir(target)
    if not (out / "scores.parquet").exists():
        raise FileNotFoundError(f"{out / 'scores.parquet'} not found: run lab.select({target!r})")
    tokenized = views.pop("tokenized", None)
    tokenized = tokenized if tokenized is not None else lab.cached_tokenized("pool")
    return explore_views(
        pl.read_parquet(out / "scores.parquet"),
        pl.read_parquet(out / "selection.parquet"),
        lab.pool,
        targets=lab.targets[target],
        tokenized=tokenized,
        pool_stats=pool_stats(lab) if tokenized is not None else None,
        **views,
    )


def pool_stats(lab: Any) -> pl.DataFrame | None:
    """Stats of the pool store at the last warmup checkpoint, if that store is complete."""
    done = [d for d in lab.store_dirs("pool") if (d / "meta.json").exists()]
    return stats_frame(open_store(done[-1], verify=False)) if done else None
