"""Explaining a run's gradients and scores: which tokens and which LoRA modules make them.

Functions of a ``Lab`` (duck-typed, like ``inspection``): the facade's methods
``Lab.token_contributions`` and ``Lab.score_decomposition`` call them. They gather the
tokenized rows, the model with the right adapter and the checkpoints, and hand them to
``core.contributions``; the views (``views.tokens``) then draw the frames they return.

Both are exact, unprojected computations on a few examples: one backward pass per chunk
of 16 tokens (token contributions) or per checkpoint and 16 target rows (score
decomposition), cheap next to a datastore, too dear for a whole pool.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import polars as pl

from less_lab.core import contributions
from less_lab.core.training import Checkpoint, load_adapter
from less_lab.data.token_kinds import loss_labels


def example_rows(lab: Any, split: str, example_ids: Sequence[str] | str | None) -> pl.DataFrame:
    """The tokenized rows of ``split`` to explain, in the order asked. None: every row of
    a target; refused for the pool (each token costs a backward pass: name a few)."""
    tokenized = lab.tokenized(split)
    if example_ids is None:
        if split == "pool":
            raise ValueError(
                "name the pool examples to explain (example_ids=[...]): the whole pool "
                "would cost one backward pass per 16 completion tokens of every example"
            )
        return tokenized
    wanted = [example_ids] if isinstance(example_ids, str) else list(dict.fromkeys(example_ids))
    missing = sorted(set(wanted) - set(tokenized["example_id"].to_list()))
    if missing:
        raise KeyError(
            f"{split}: no tokenized example {missing[:5]} ({len(missing)} missing; an "
            f"example dropped by tokenization is listed in lab.dropped[{split!r}])"
        )
    return pl.concat([tokenized.filter(pl.col("example_id") == i) for i in wanted])


def warmup_checkpoint(lab: Any, index: int) -> Checkpoint:
    """Warmup checkpoint ``index`` (Python indexing: -1 is the last); runs the warmup
    first if it has not run (cached, like every stage)."""
    checkpoints = lab.checkpoints() or lab.warmup()
    if not -len(checkpoints) <= index < len(checkpoints):
        raise IndexError(f"checkpoint {index}: the warmup has {len(checkpoints)} checkpoints")
    return checkpoints[index]


def token_contributions(
    lab: Any,
    split: str,
    example_ids: Sequence[str] | str | None = None,
    checkpoint: int = -1,
) -> pl.DataFrame:
    """How much of each example's gradient each of its completion tokens carries, at
    warmup checkpoint ``checkpoint`` (``core.contributions.token_contributions``; one
    row per token, plus the ``checkpoint`` epoch). ``split``: ``"pool"`` or a target name;
    ``example_ids``: one id, a list, or None for every example of a target.
    Draw it with ``token_figure`` / ``token_html``; ``kind_shares`` sums it by kind."""
    rows = example_rows(lab, split, example_ids)
    ckpt = warmup_checkpoint(lab, checkpoint)
    model = lab.model
    load_adapter(model, ckpt)
    frame = contributions.token_contributions(
        model, rows, lab.tokenizer, pad_id=lab.tokenizer.pad_token_id
    )
    return frame.insert_column(1, pl.Series("checkpoint", [ckpt.epoch] * frame.height))


def best_subtask(scores: pl.DataFrame, example_id: str, subtask: str | None) -> tuple[str, float]:
    """``(subtask, projected score)`` of ``example_id`` in the long per-subtask scores:
    the named subtask, or the best-scoring one when ``subtask`` is None."""
    mine = scores.filter(pl.col("example_id") == example_id)
    if mine.height == 0:
        raise KeyError(f"no score for pool example {example_id!r}")
    if subtask is None:
        best = mine.sort("score", descending=True, nulls_last=True)
        return best["subtask"][0], best["score"][0]
    row = mine.filter(pl.col("subtask") == subtask)
    if row.height == 0:
        raise KeyError(f"no subtask {subtask!r} (have {sorted(mine['subtask'].to_list())})")
    return subtask, row["score"][0]


def score_decomposition(
    lab: Any, target: str, example_id: str, subtask: str | None = None
) -> pl.DataFrame:
    """The exact score of pool example ``example_id`` for one ``target`` subtask (None:
    its best-scoring one), split by warmup checkpoint and LoRA module
    (``core.contributions.score_decomposition``). Columns ``example_id, subtask,
    checkpoint, weight, module, cosine_term, term, projected_score``: ``term`` sums to
    the exact, unprojected score; ``projected_score`` is the run's own (projected) score
    from ``lab.subtask_scores``, repeated on every row, to compare. With
    ``projection='none'`` (``lab.exact()``) the two agree to float precision."""
    scores = lab.subtask_scores(target)  # runs warmup and datastores if needed
    subtask, projected = best_subtask(scores, example_id, subtask)
    if lab.score_cfg.method != "paper":
        warnings.warn(
            f"score method {lab.score_cfg.method!r}: the decomposition is of the paper's "
            "cosine score, projected_score is of the run's method",
            stacklevel=2,
        )
    # the labels the stores were built with (``gradients.*_tokens=content`` drops markers)
    g = lab.grad_cfg
    targets = loss_labels(lab.tokenized(target), lab.tokenizer, g.target_tokens)
    targets = targets.filter(pl.col("subtask") == subtask)
    pool_row = loss_labels(example_rows(lab, "pool", [example_id]), lab.tokenizer, g.pool_tokens)
    frame = contributions.score_decomposition(
        lab.model,
        pool_row,
        targets,
        lab.checkpoints(),
        pad_id=lab.tokenizer.pad_token_id,
        cfg=lab.grad_cfg,
        normalize_lr=lab.score_cfg.normalize_lr,
    )
    return frame.select(
        pl.lit(example_id).alias("example_id"),
        pl.lit(subtask).alias("subtask"),
        pl.all(),
        pl.lit(projected, pl.Float64).alias("projected_score"),
    )
