"""Scoring and selecting for a ``Lab``: the paper's top 5% and the named remedies.

Functions of a ``Lab`` (duck-typed, like ``inspection``): ``Lab.scores``, ``Lab.select``
and ``Lab.select_balanced`` call them. They gather what a remedy needs (token lengths
for length quotas, the pool stores for near-duplicate suppression, a conditional adapter
for ``loss_drop``) and hand it to the core functions, which never see a ``Lab``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import polars as pl

from less_lab.config import SelectConfig, fingerprint, record_settings, to_dict
from less_lab.core import pipeline
from less_lab.core.loss_drop import loss_drop_scores
from less_lab.core.scoring import aggregate, checkpoint_weights
from less_lab.core.selection import Selection, select_balanced, select_top, write_selection
from less_lab.core.shaping import shape_top, weighted_unit_features
from less_lab.data.token_kinds import loss_labels
from less_lab.layout import check_name


def loss_tokenized(lab: Any, split: str) -> pl.DataFrame:
    """``split`` tokenized with the labels its gradient loss uses: every completion token
    (paper), or only content tokens (``gradients.pool_tokens/target_tokens=content``)."""
    return loss_labels(lab.tokenized(split), lab.tokenizer, lab.grad_cfg.tokens(split))


def scores(lab: Any, target: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(long per-subtask scores, one row per example)`` under the lab's scoring."""
    lab.tokenized(target)  # refuse a target emptied by truncation before any training
    cfg = lab.score_cfg
    if cfg.method == "loss_drop":
        long = _loss_drop(lab, target)
        return long, aggregate(long, cfg.aggregate)
    pool_stores, target_stores = lab.datastore("pool"), lab.datastore(target)
    lrs = [c.lr for c in lab.checkpoints()]
    return pipeline.score(pool_stores, target_stores, lab.targets[target], lrs, cfg, lab.pool)


def _loss_drop(lab: Any, target: str) -> pl.DataFrame:
    """CoLoR-Filter scores: the last warmup checkpoint is the prior model."""
    prior = lab.warmup()[-1]
    sources = dict(zip(lab.pool["example_id"], lab.pool["source"], strict=True))
    return loss_drop_scores(
        lab.model,
        prior,
        lab.tokenized("pool"),
        lab.tokenized(target),
        lab.score_cfg,
        lab.warmup_cfg.train,
        lab.layout.loss_drop_dir(target) / loss_drop_tag(lab.score_cfg),
        pad_id=lab.tokenizer.pad_token_id,
        sources=sources,
        progress=lab.progress,
        model_fingerprint=lab.model_fingerprint,
        token_budget=lab.grad_cfg.token_budget,
        max_batch_examples=lab.grad_cfg.max_batch_examples,
    )


def loss_drop_tag(cfg) -> str:
    """A loss-drop variant's folder name: its conditional training settings, so that
    another ``loss_drop_lr`` is a new variant rather than a refused reuse."""
    return f"e{cfg.loss_drop_epochs}-lr{cfg.loss_drop_lr:g}"


def top(lab: Any, agg: pl.DataFrame, cfg: SelectConfig) -> pl.DataFrame:
    """The selected rows of an aggregated frame: the plain top (paper) or, with a remedy
    in ``cfg``, the shaped top (length quotas, near-duplicate suppression)."""
    if not cfg.shaped:
        return select_top(agg, cfg)
    lengths = lab.tokenized("pool").select("example_id", "n_completion_tokens")
    features = None
    if cfg.max_similarity is not None:
        stores = lab.datastore("pool")
        weights = checkpoint_weights([c.lr for c in lab.checkpoints()])
        features = weighted_unit_features(stores, weights)
    return shape_top(agg, cfg, lengths=lengths, features=features)


def select(lab: Any, target: str, cfg: SelectConfig | None = None) -> Selection:
    """Top examples for ``target`` (see ``Lab.select``)."""
    cfg = cfg or lab.select_cfg
    long, agg = scores(lab, target)
    chosen = top(lab, agg, cfg)
    rel = lab.reliability(target) if lab.score_cfg.method != "loss_drop" else None
    if rel is not None and rel.r_full < 0.8:
        warnings.warn(f"{target}: {rel.text()}", stacklevel=3)
    extra = [c for c in ("skill", "form") if c in lab.pool.columns]
    chosen = chosen.join(lab.pool.select("example_id", *extra), on="example_id", how="left")
    paths = write(lab, chosen, selection_dir(lab, target, cfg=cfg), long, cfg)
    return Selection(target, chosen, paths, rel, long)


def select_spread(
    lab: Any, target: str, cfg: SelectConfig | None, mode: str, cap: int | None
) -> Selection:
    """A selection spread over subtasks (see ``Lab.select_balanced``)."""
    cfg = cfg or lab.select_cfg
    long, _ = scores(lab, target)
    chosen = select_balanced(long, cfg, mode=mode, cap=cap)
    out = selection_dir(lab, target, balanced=True, cfg=cfg)
    return Selection(target, chosen, write(lab, chosen, out, long, cfg), None, long)


def write(lab: Any, chosen, out: Path, long, cfg: SelectConfig) -> dict[str, Path]:
    """Write a selection folder, refusing one made with other settings."""
    record_settings(
        out / "settings.json",
        {**lab.settings(), "select": to_dict(cfg), "pool_size": lab.pool.height},
        refused="this selection folder was made with other settings",
    )
    return write_selection(chosen, lab.pool, out, scores=long)


def variant_name(lab: Any, cfg: SelectConfig) -> list[str]:
    """The readable parts of a selection folder's name: what differs from the paper."""
    s, g = lab.score_cfg, lab.grad_cfg
    parts = [s.method] if s.method != "paper" else []
    parts += [s.aggregate] if s.aggregate != "max" else []
    parts += [g.pool_feature] if g.pool_feature != "adam" else []
    if g.target_tokens != "all" or g.pool_tokens != "all":
        parts.append(f"tokens-{g.target_tokens}-{g.pool_tokens}")
    parts += [f"len{cfg.length_bins}"] if cfg.length_bins else []
    parts += [f"dedup{cfg.max_similarity:g}"] if cfg.max_similarity is not None else []
    return parts


def selection_dir(
    lab: Any, target: str, balanced: bool = False, cfg: SelectConfig | None = None
) -> Path:
    """``selections/<target>[-variant parts][-balanced]-<fingerprint>``: the readable
    parts say what differs from the paper; the fingerprint covers every setting that
    made it (run, gradients, scoring, selection), so variants never overwrite each other."""
    cfg = cfg or lab.select_cfg
    parts = [check_name(target, "target"), *variant_name(lab, cfg)]
    parts += ["balanced"] if balanced else []
    key = {**lab.settings(), "select": to_dict(cfg)}
    parts.append(fingerprint(key)[:8])
    return lab.layout.selection_dir("-".join(parts))
