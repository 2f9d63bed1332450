"""Views of distributions and curves: selected lengths against the pool (the length bias
of dot product vs cosine), loss against accuracy over fine-tuning epochs, and the sorted
similarity curve of each subtask."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as W
import numpy as np
import polars as pl

from less_lab.views import frames, plots
from less_lab.views.base import ALL_SUBTASKS, BUTTONS, View, dropdown
from less_lab.views.frames import MAX_SUBTASK
from less_lab.views.html import esc, fmt, html_table


class LengthBiasView(View):
    """Completion lengths of each method's selection (Table 13: dot product picks short
    completions) or, with ``stats``, gradient and update norms against length (Figures 3-4)."""

    def __init__(
        self,
        selections: Mapping[str, pl.DataFrame],
        tokenized_pool: pl.DataFrame,
        stats: pl.DataFrame | None = None,
        *,
        include_pool: bool = False,
    ):
        self.selections, self.tokenized, self.stats = selections, tokenized_pool, stats
        self.include_pool = include_pool
        kinds = ["selected lengths"] + (["norm vs length"] if stats is not None else [])
        self.controls = {"kind": W.ToggleButtons(options=kinds, value=kinds[0], style=BUTTONS)}
        self._build()

    def update(self) -> None:
        if self.controls["kind"].value == "norm vs length":
            self._draw(plots.norm_vs_length_figure(self.stats, self.tokenized))
            data = self.stats.join(
                self.tokenized.select("example_id", "n_completion_tokens"),
                on="example_id",
                how="inner",
            )
            rows = [
                [
                    esc(col),
                    fmt(data.height),
                    fmt(frames.spearman(data["n_completion_tokens"], data[col]), "+.3f"),
                ]
                for col in ("grad_norm", "feature_norm")
            ]
            self.table.value = html_table(["norm", "examples", "Spearman ρ with length"], rows)
            return
        self._draw(
            plots.length_bias_figure(
                self.selections, self.tokenized, include_pool=self.include_pool
            )
        )
        lengths = frames.selected_lengths(
            self.selections, self.tokenized, include_pool=self.include_pool
        )
        summary = lengths.group_by("method", maintain_order=True).agg(
            pl.len().alias("n"),
            pl.col("length").mean().alias("mean"),
            pl.col("length").median().alias("median"),
        )
        rows = [
            [esc(m), fmt(n), fmt(mean, ".1f"), fmt(med, ".1f")]
            for m, n, mean, med in summary.iter_rows()
        ]
        self.table.value = html_table(
            ["method", "selected", "mean completion tokens", "median"], rows
        )


class LossAccuracyView(View):
    """Validation loss against a chosen metric over fine-tuning epochs, per method
    (appendix I); the table puts the lowest-loss epoch next to the best-metric epoch."""

    def __init__(self, histories: Mapping[str, pl.DataFrame], *, loss: str = "val_loss"):
        self.histories, self.loss = histories, loss
        metrics = plots.metric_columns(histories, loss)
        if not metrics:
            raise ValueError(f"histories have no numeric column besides epoch/step/lr/{loss}")
        default = next((m for m in metrics if m != "train_loss"), metrics[0])
        self.controls = {"metric": dropdown("metric", metrics, default)}
        self._build()

    def update(self) -> None:
        metric = self.controls["metric"].value
        self._draw(plots.loss_accuracy_figure(self.histories, metric, self.loss))
        maximize = "loss" not in metric
        rows = []
        for method, h in self.histories.items():
            cols = [self.loss, metric]
            h = h.with_columns(pl.col(cols).cast(pl.Float64).fill_nan(None)).drop_nulls(cols)
            if h.is_empty():
                rows.append([esc(method)] + ["–"] * 5)
                continue
            low = h.sort([self.loss, "epoch"]).row(0, named=True)
            best = h.sort([metric, "epoch"], descending=[maximize, False]).row(0, named=True)
            rows.append([esc(method), fmt(low["epoch"]), fmt(low[self.loss], ".4f"),
                         fmt(low[metric], ".4f"), fmt(best["epoch"]),
                         fmt(best[metric], ".4f")])  # fmt: skip
        loss, metric = esc(self.loss), esc(metric)
        header = ["method", f"lowest {loss} epoch", loss, f"{metric} there",
                  f"best {metric} epoch", f"best {metric}"]  # fmt: skip
        self.table.value = html_table(header, rows)


class SimilarityCurveView(View):
    """Sorted similarity of the pool to each target subtask (appendix J, Figure 9)."""

    def __init__(self, scores: pl.DataFrame):
        self.scores = scores
        self.subtasks = frames.subtasks_of(scores)
        options = [ALL_SUBTASKS, *self.subtasks, MAX_SUBTASK]
        self.controls = {"subtask": dropdown("subtask", options)}
        self._build()

    def shown(self) -> list[str]:
        """Subtasks drawn for the current choice."""
        choice = self.controls["subtask"].value
        return self.subtasks if choice == ALL_SUBTASKS else [choice]

    def update(self) -> None:
        shown = self.shown()
        curves = frames.similarity_curves(self.scores, shown)
        self._draw(plots.similarity_curve_figure(self.scores, shown, curves=curves))
        rows = []
        for name in shown:
            s = curves[name]
            if not len(s):
                rows.append([esc(name), "0"] + ["–"] * 4)
                continue
            stats = [(s[0], "+.4f"), (float(np.median(s)), "+.4f"), (s[-1], "+.4f"),
                     (float((s < 0).mean()), ".1%")]  # fmt: skip
            rows.append([esc(name), fmt(len(s))] + [fmt(v, spec) for v, spec in stats])
        self.table.value = html_table(
            ["subtask", "examples", "max", "median", "min", "share < 0"], rows
        )
