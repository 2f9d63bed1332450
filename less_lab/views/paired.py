"""Forest plot of paired differences against random selection ("beats random?").

Why a forest plot: the question is not how high a method scores but whether its gap to
random selection is clear of zero, so each method is drawn as its mean paired difference
with the confidence interval around it, against a zero line, one panel per metric (the
metrics live on different scales). Colour says the verdict, so a glance finds the methods
whose interval sits wholly on the good side.

Takes the frame of :func:`less_lab.core.paired.paired_differences` and nothing else.
Method and metric names come from user settings, so they are escaped (``plots.esc``).
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from less_lab.core.paired import BETTER, NA, TIE, WORSE, verdict
from less_lab.views.plots import esc

VERDICT_COLORS = {BETTER: "#2ca02c", WORSE: "#d62728", TIE: "#7f7f7f", NA: "#c7c7c7"}


def with_verdicts(diffs: pl.DataFrame) -> pl.DataFrame:
    """``diffs`` (rows with a mean difference) plus a ``verdict`` column and the error-bar
    lengths ``err_plus`` / ``err_minus`` (0 where there is no interval): what the figure
    plots, so tests and notebooks can check it."""
    rows = diffs.filter(pl.col("mean_diff").is_not_null())
    verdicts = [verdict(b, lo) for b, lo in rows.select("better", "ci_low").iter_rows()]
    return rows.with_columns(
        pl.Series("verdict", verdicts, dtype=pl.String),
        (pl.col("ci_high") - pl.col("mean_diff")).fill_null(0.0).alias("err_plus"),
        (pl.col("mean_diff") - pl.col("ci_low")).fill_null(0.0).alias("err_minus"),
    )


def _hover(rows: pl.DataFrame) -> list[str]:
    """Escaped hover text: the method, its difference and interval, and the pair count."""

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    cols = ("method", "mean_diff", "ci_low", "ci_high", "n_pairs", "method_mean", "baseline_mean")
    return [
        f"<b>{esc(m)}</b><br>difference {fmt(d)} [{fmt(lo)}, {fmt(hi)}]<br>n_pairs {n}"
        f"<br>method {fmt(mm)} vs baseline {fmt(bm)}"
        for m, d, lo, hi, n, mm, bm in rows.select(cols).iter_rows()
    ]


def _verdict_trace(rows: pl.DataFrame, word: str, metric: str, first: bool) -> go.Scatter:
    """One verdict's markers in one metric's panel, with asymmetric CI error bars."""
    color = VERDICT_COLORS[word]
    return go.Scatter(
        x=rows["mean_diff"].to_list(),
        y=[esc(m) for m in rows["method"]],
        mode="markers",
        name=esc(word),
        legendgroup=word,
        showlegend=first,
        marker=dict(color=color, size=10),
        error_x=dict(
            type="data",
            symmetric=False,
            array=rows["err_plus"].to_list(),
            arrayminus=rows["err_minus"].to_list(),
            color=color,
            thickness=2,
        ),
        hovertext=_hover(rows),
        hoverinfo="text",
        meta=esc(metric),
    )


def paired_figure(diffs: pl.DataFrame, title: str | None = None) -> go.Figure:
    """One panel per metric: each method's mean paired difference (method − baseline) with
    its confidence interval as error bars, a dotted zero line, markers coloured by verdict
    (better / worse / tie; n/a without an interval). Methods keep their order in
    ``diffs``, first on top; every panel shares the method axis. Each trace's ``meta`` is
    its (escaped) metric."""
    rows = with_verdicts(diffs)
    metrics = diffs["metric"].unique(maintain_order=True).to_list()
    methods = [esc(m) for m in diffs["method"].unique(maintain_order=True)]
    fig = make_subplots(
        rows=1,
        cols=max(len(metrics), 1),
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=[esc(m) for m in metrics] or None,
    )
    shown: set[str] = set()
    for col, metric in enumerate(metrics, start=1):
        part = rows.filter(pl.col("metric") == metric)
        for word in VERDICT_COLORS:
            group = part.filter(pl.col("verdict") == word)
            if group.height:
                fig.add_trace(_verdict_trace(group, word, metric, word not in shown), 1, col)
                shown.add(word)
        fig.add_vline(
            x=0, line_dash="dot", line_color="gray", row=1, col=col, exclude_empty_subplots=False
        )
        fig.update_xaxes(title="method − baseline", row=1, col=col)
    fig.update_yaxes(
        type="category", categoryorder="array", categoryarray=methods, autorange="reversed"
    )
    fig.update_layout(
        title=esc(title) if title else "Paired difference against the baseline (mean, CI)",
        template="plotly_white",
        height=max(300, 120 + 40 * len(methods)),
        margin=dict(l=80, r=20, t=80, b=60),
        legend_title_text="verdict",
    )
    return fig
