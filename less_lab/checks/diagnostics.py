"""When to trust a LESS selection: one summary of every reliability check.

A pilot here (SmolLM2-135M, 600 pool examples, LoRA r=8, d=2048) found a faithful LESS
selecting mostly noise, silently: the true cosines were tiny and their spread about equal
to the noise the projection adds; eps dominated the Adam denominators; the max over
subtasks piled the picks into one subject; truncation had cut whole answers. Each check
measures one of these on the user's own run:

* :func:`reliability.split_half`: score with two independent halves of the projection;
  their agreement, turned into the reliability of the full-d score by Spearman-Brown, and
  the ``d`` that would reach a target reliability.
* :func:`adam_health.adam_health`: the share of coordinates where eps dominates Γ's
  denominator, and how much of Γ is the momentum term every example shares.
* :func:`selection.selection_report`: subtasks, sources and lengths of a selection.
* :func:`truncation_report`: what tokenization cut.

:func:`summary` gathers them into frames and a readable text with warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from less_lab.checks.adam_health import AdamHealth, adam_health, eps_share_table, momentum_table
from less_lab.checks.reliability import Reliability, agreement, mean_pairwise_cosine, split_half
from less_lab.config import ScoreConfig, SelectConfig
from less_lab.core.datastore import Store
from less_lab.core.selection import SelectionReport, selection_report

DEFAULT_SCORE, DEFAULT_SELECT = ScoreConfig(), SelectConfig()
__all__ = [
    "AdamHealth",
    "Diagnostics",
    "Reliability",
    "adam_health",
    "agreement",
    "eps_share_table",
    "mean_pairwise_cosine",
    "momentum_table",
    "selection_report",
    "split_half",
    "summary",
    "truncation_report",
]


# ---------------------------------------------------------------------------- truncation


def truncation_report(
    tokenized: pl.DataFrame, dropped: pl.DataFrame | None = None, pool: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Per source: examples, how many lost prompt tokens, lost part of the completion, or
    lost the whole completion (dropped), and the mean prompt tokens cut."""
    src = "source" if "source" in tokenized.columns else None
    tok = tokenized.with_columns(pl.lit("all").alias("source")) if src is None else tokenized
    kept = tok.group_by("source").agg(
        pl.len().alias("n_kept"),
        (pl.col("n_prompt_tokens_cut") > 0).sum().alias("prompt_cut"),
        (pl.col("n_completion_tokens_cut") > 0).sum().alias("completion_cut"),
        pl.col("n_prompt_tokens_cut").mean().alias("mean_prompt_tokens_cut"),
    )
    drop = pl.DataFrame(schema={"source": pl.String, "dropped": pl.UInt32})
    if dropped is not None and dropped.height:
        d = dropped
        if src is None:
            d = d.with_columns(pl.lit("all").alias("source"))
        elif "source" not in d.columns and pool is not None:
            d = d.join(pool.select("example_id", "source"), on="example_id", how="left")
        elif "source" not in d.columns:
            d = d.with_columns(pl.lit(None, dtype=pl.String).alias("source"))
        drop = d.group_by("source").agg(pl.len().alias("dropped"))
    out = kept.join(drop, on="source", how="full", coalesce=True).with_columns(
        pl.col("n_kept", "prompt_cut", "completion_cut", "dropped").fill_null(0)
    )
    return (
        out.with_columns((pl.col("n_kept") + pl.col("dropped")).alias("n"))
        .select("source", "n", "prompt_cut", "completion_cut", "dropped", "mean_prompt_tokens_cut")
        .sort("n", descending=True)
    )


# ------------------------------------------------------------------------------ summary


@dataclass
class Diagnostics:
    """Everything :func:`summary` found: the parts, their frames, and the warnings."""

    reliability: Reliability | None
    adam: AdamHealth | None
    selection: SelectionReport | None
    truncation: pl.DataFrame | None
    pairwise_cosine: pl.DataFrame | None
    warnings: list[str]

    def frames(self) -> dict[str, pl.DataFrame]:
        """All tables by name (for notebooks, widgets and files)."""
        out: dict[str, pl.DataFrame] = {}
        if self.reliability is not None:
            r = self.reliability
            out["reliability"] = pl.DataFrame(
                [
                    {
                        "d": r.d,
                        "half_dim": r.half_dim,
                        "n": r.n,
                        "k": r.k,
                        "r_half": r.r_half,
                        "r_full": r.r_full,
                        "overlap": r.overlap,
                        "chance": r.chance,
                        "target": r.target,
                        "d_needed": r.d_needed,
                    }
                ]
            )
            out["reliability_by_subtask"] = r.per_subtask
        if self.adam is not None:
            out["adam_by_checkpoint"] = self.adam.by_checkpoint()
            out["adam_by_kind"] = self.adam.by_kind()
        if self.selection is not None:
            out |= {
                f"selection_{k}": getattr(self.selection, k)
                for k in ("subtasks", "sources", "lengths")
            }
        if self.truncation is not None:
            out["truncation"] = self.truncation
        if self.pairwise_cosine is not None:
            out["pairwise_cosine"] = self.pairwise_cosine
        return out

    def text(self) -> str:
        parts = []
        if self.reliability is not None:
            parts.append(self.reliability.text())
        if self.pairwise_cosine is not None:
            parts.append(
                "mean pairwise cosine of pool features: "
                + ", ".join(f"checkpoint {c}: {v:.3f}" for c, v in self.pairwise_cosine.iter_rows())
            )
        if self.adam is not None:
            parts.append(self.adam.text(warnings=False))
        if self.selection is not None:
            parts.append(self.selection.text(warnings=False))
        if self.truncation is not None:
            t = self.truncation
            parts.append(
                f"truncation: {int(t['prompt_cut'].sum())} of {int(t['n'].sum())} "
                f"examples lost prompt tokens, {int(t['completion_cut'].sum())} part "
                f"of the completion, {int(t['dropped'].sum())} the whole completion"
            )
        verdict = "no warnings" if not self.warnings else f"{len(self.warnings)} warning(s):"
        return "\n".join([*parts, verdict, *(f"  - {w}" for w in self.warnings)])

    def __repr__(self) -> str:
        return self.text()


def summary(
    pool_stores: Sequence[Store],
    target_stores: Sequence[Store],
    targets: pl.DataFrame,
    lrs: Sequence[float],
    *,
    score_cfg: ScoreConfig = DEFAULT_SCORE,
    select_cfg: SelectConfig = DEFAULT_SELECT,
    selection: SelectionReport | None = None,
    adam: AdamHealth | None = None,
    tokenized_pool: pl.DataFrame | None = None,
    dropped: pl.DataFrame | None = None,
    pool: pl.DataFrame | None = None,
    target_reliability: float = 0.9,
    min_reliability: float = 0.8,
    max_dropped_share: float = 0.01,
    reliability: Reliability | None = None,
) -> Diagnostics:
    """The reliability of this LESS score (skipped for exact features), the pool features'
    mean pairwise cosine, and whichever of Adam health (:func:`adam_health`), selection shape
    (``selection.selection_report``) and truncation (from ``tokenized_pool``/``dropped``)
    are given, with every warning in one list. ``reliability``: a split-half result already
    computed for these stores (``Lab.select`` makes one), so it is not computed twice."""
    rel = reliability
    if rel is None and pool_stores[0].meta["projection"]["kind"] != "none":
        rel = split_half(
            pool_stores,
            target_stores,
            targets,
            lrs,
            score_cfg,
            select_cfg,
            target=target_reliability,
        )
    warnings = _reliability_warnings(rel, min_reliability)
    cosines = _pairwise_cosines(pool_stores)
    trunc = None
    if tokenized_pool is not None:
        trunc = truncation_report(tokenized_pool, dropped, pool)
        warnings += _truncation_warnings(trunc, max_dropped_share)
    warnings += adam.warnings if adam is not None else []
    warnings += selection.warnings if selection is not None else []
    return Diagnostics(rel, adam, selection, trunc, cosines, warnings)


def _reliability_warnings(rel: Reliability | None, min_reliability: float) -> list[str]:
    """A warning when the split-half reliability is below ``min_reliability``."""
    if rel is None or rel.r_full >= min_reliability:
        return []
    need = (
        "no d would help: the halves share no signal"
        if rel.d_needed is None
        else f"d ~ {rel.d_needed:,} would reach {rel.target}"
    )
    return [
        f"projection noise: the d={rel.d} score has reliability {rel.r_full:.2f} "
        f"(per subtask {rel.r_full_subtasks:.2f}) and the top-{rel.k} of two "
        f"independent halves share {rel.overlap} (chance {rel.chance:.1f}); {need}, "
        "or score exactly with projection='none'"
    ]


def _pairwise_cosines(pool_stores: Sequence[Store]) -> pl.DataFrame:
    """``checkpoint, mean_cosine``: the mean pairwise cosine of each pool store."""
    return pl.DataFrame(
        [
            ((s.meta.get("checkpoint") or {}).get("epoch", i), mean_pairwise_cosine(s))
            for i, s in enumerate(pool_stores)
        ],
        schema={"checkpoint": pl.Int64, "mean_cosine": pl.Float64},
        orient="row",
    )


def _truncation_warnings(trunc: pl.DataFrame, max_dropped_share: float) -> list[str]:
    """A warning when more than ``max_dropped_share`` of the pool lost its completion."""
    lost, n = int(trunc["dropped"].sum()), int(trunc["n"].sum())
    if n and lost / n > max_dropped_share:
        return [
            f"{lost} of {n} pool examples lost their whole completion to "
            "truncation: raise max_length or use truncation='prompt_left'"
        ]
    return []
