"""Static plotly figures of LESS results (paper §3.2, §6.2, appendices H-K), fed by frames.

Every function here reads frames the pipeline already produced (scores, selections, the
pool, tokenized lengths, store stats, fine-tuning histories) and never recomputes a stage,
so a figure is cheap to redraw; :mod:`less_lab.widgets` redraws them when a control moves.
The small ``*_frame``-style helpers return the exact numbers each figure plots, so tests
and notebooks can check a figure against its data.

Dataset text (and ids, sources, subtask names: all come from user files) is untrusted:
plotly renders trace names, tick labels and hover text as a subset of HTML, so every such
string goes through :func:`esc` (``html.escape``) before it reaches a figure.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from less_lab.views.frames import (
    MAX_SUBTASK,
    selected_lengths,
    selections_with_pool,
    similarity_curves,
    spearman,
    subset_shares,
    subtasks_of,
    top_examples,
    with_examples,
)
from less_lab.views.scale import (
    BOX_POINTS,
    CURVE_POINTS,
    MAX_GROUPS,
    SCATTER_POINTS,
    box_stats,
    curve_points,
    fold_groups,
    sample_rows,
)

HISTORY_COLUMNS = ("epoch", "step", "lr")


# --------------------------------------------------------------------------- text


def esc(value: object) -> str:
    """HTML-escaped ``str(value)``: for table cells, hover text, names and tick labels.

    Only ``<``, ``>`` and ``&`` are escaped: that is enough to keep dataset text from forming
    tags in element content and in Plotly's pseudo-HTML, and Plotly would print ``&quot;``
    literally. Never put the result inside an HTML attribute value.
    """
    return html.escape("" if value is None else str(value), quote=False)


def shorten(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters (raw: cut before escaping, so an entity
    like ``&lt;`` is never cut in half)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def hover_text(text: str, width: int = 80, limit: int = 480) -> str:
    """Escaped, wrapped hover text: lines are wrapped raw, escaped, then joined by <br>."""
    lines = textwrap.wrap(shorten(text, limit), width) or [""]
    return "<br>".join(esc(line) for line in lines)


def example_hover(rows: pl.DataFrame) -> list[str]:
    """Hover text of each row of ``example_id, source, text``: the id in bold, its source,
    then the wrapped text, every piece escaped."""
    return [
        f"<b>{esc(i)}</b> ({esc(s)})<br>{hover_text(t)}"
        for i, s, t in rows.select("example_id", "source", "text").iter_rows()
    ]


def _colors(values: Sequence[str]) -> dict[str, str]:
    palette = qualitative.Plotly + qualitative.Set2 + qualitative.Pastel1
    return {v: palette[i % len(palette)] for i, v in enumerate(sorted(set(values)))}


# --------------------------------------------------------------------------- figures


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=kw.pop("height", 420),
        margin=dict(l=60, r=20, t=60, b=60),
        **kw,
    )
    return fig


def top_examples_figure(
    scores: pl.DataFrame,
    pool: pl.DataFrame,
    subtask: str | None,
    n: int = 10,
    negative: bool = False,
    *,
    tokenized: pl.DataFrame | None = None,
    rows: pl.DataFrame | None = None,
) -> go.Figure:
    """Bars of the ``n`` top (or lowest) scores for ``subtask`` (None: max over subtasks),
    best first; hover shows the (escaped) example text. Bars are coloured by pool source
    with one trace per source, so the legend says which colour is which source; the x axis
    keeps the rank order across traces. ``rows``: the ranked rows with their text
    (``with_examples`` of ``top_examples``), when the caller has them already."""
    if rows is None:
        rows = with_examples(top_examples(scores, subtask, n, negative), pool, tokenized)
    sources = pool["source"] if "source" in pool.columns else rows["source"]
    colors = _colors(sources.drop_nulls().unique().to_list())
    fig = go.Figure()
    for source in rows["source"].unique(maintain_order=True):
        part = rows.filter(pl.col("source").eq_missing(source))
        fig.add_trace(_source_bars(part, source, colors.get(source, "#636efa")))
    what = "Lowest" if negative else "Top"
    name = MAX_SUBTASK if subtask is None else subtask
    ranked = [esc(i) for i in rows["example_id"]]
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=ranked, title="example")
    fig.update_yaxes(title="score")
    # overlay: each example has one bar, so it keeps its slot's full width (group would
    # split every slot between all the sources)
    fig.update_layout(barmode="overlay", showlegend=True, legend_title_text="source")
    return _layout(fig, f"{what} {rows.height} examples: {esc(name)}")


def _source_bars(rows: pl.DataFrame, source: str | None, color: str) -> go.Bar:
    """The bars of one source's ranked examples, named (escaped) after the source."""
    return go.Bar(
        x=[esc(i) for i in rows["example_id"]],
        y=rows["score"].to_list(),
        name="(missing)" if source is None else esc(source),
        marker_color=color,
        hovertext=example_hover(rows),
        hoverinfo="text+y",
        customdata=rows["example_id"].to_list(),
    )


def with_source(frame: pl.DataFrame, pool: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the pool's ``source`` column (empty when the pool has none)."""
    if "source" in frame.columns:
        return frame
    if "source" not in pool.columns:
        return frame.with_columns(pl.lit("").alias("source"))
    return frame.join(
        pool.select("example_id", "source"), on="example_id", how="left", maintain_order="left"
    )


def neighbors_figure(neighbors: Mapping[str, pl.DataFrame], pool: pl.DataFrame) -> go.Figure:
    """One panel per method (e.g. LESS / BM25 / RDS, paper Tables 16-18): horizontal bars
    of each method's nearest pool examples to one target example, rank 1 on top. Scores of
    different methods live on different scales, so every panel has its own axis."""
    methods = list(neighbors)
    fig = make_subplots(
        rows=1,
        cols=max(len(methods), 1),
        horizontal_spacing=0.12,
        subplot_titles=[esc(m) for m in methods] or None,
    )
    for col, method in enumerate(methods, start=1):
        rows = with_examples(with_source(neighbors[method], pool), pool)
        labels = [f"{r}. {esc(i)}" for r, i in rows.select("rank", "example_id").iter_rows()]
        fig.add_trace(
            go.Bar(
                y=labels,
                x=rows["score"].to_list(),
                orientation="h",
                name=esc(method),
                hovertext=example_hover(rows),
                hoverinfo="text+x",
                customdata=rows["example_id"].to_list(),
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col)
    fig.update_layout(showlegend=False)
    return _layout(fig, "Nearest pool examples to one target example")


def subset_distribution_figure(
    selections: Mapping[str, pl.DataFrame],
    pool: pl.DataFrame,
    by: str = "source",
    include_pool: bool = False,
    *,
    max_groups: int = MAX_GROUPS,
) -> go.Figure:
    """Stacked bars: share of each pool ``by`` group in each method's selection (one trace
    per group, x = methods; appendix K.3). Beyond ``max_groups`` groups, the smallest (by
    count over all methods) are summed into one ``(other)`` bar."""
    shares = subset_shares(selections, pool, by, include_pool)
    methods = list(selections_with_pool(selections, pool, include_pool))
    totals = (
        shares.group_by(by).agg(pl.col("count").sum()).sort(["count", by], descending=[True, False])
    )
    shares = fold_groups(shares, by, totals[by].to_list(), max_groups)
    fig = go.Figure()
    for group in sorted(shares[by].unique().to_list()):
        part = dict(shares.filter(pl.col(by) == group).select("method", "share").iter_rows())
        counts = dict(shares.filter(pl.col(by) == group).select("method", "count").iter_rows())
        fig.add_trace(
            go.Bar(
                x=[esc(m) for m in methods],
                y=[part.get(m, 0.0) for m in methods],
                name=esc(group),
                hovertext=[f"{esc(group)}: {counts.get(m, 0)} examples" for m in methods],
                hoverinfo="text+y",
            )
        )
    fig.update_layout(barmode="stack", legend_title=esc(by))
    fig.update_yaxes(title="share of selection", tickformat=".0%", range=[0, 1])
    return _layout(fig, f"Selected examples by {esc(by)}")


def length_bias_figure(
    selections: Mapping[str, pl.DataFrame],
    tokenized_pool: pl.DataFrame,
    column: str = "n_completion_tokens",
    include_pool: bool = False,
    *,
    max_points: int = BOX_POINTS,
) -> go.Figure:
    """One box per method of its selected examples' completion lengths (mean marked):
    the dot product favours short completions, cosine much less (Table 13). A method
    with more than ``max_points`` lengths is sent as its box statistics only."""
    data = selected_lengths(selections, tokenized_pool, column, include_pool)
    fig = go.Figure()
    for method in selections_with_pool(selections, tokenized_pool, include_pool):
        part = data.filter(pl.col("method") == method)
        if part.height > max_points:
            stats = {k: [v] for k, v in box_stats(part["length"].to_numpy()).items()}
            fig.add_trace(go.Box(name=esc(method), x=[esc(method)], boxmean=True, **stats))
            continue
        fig.add_trace(
            go.Box(
                y=part["length"].to_list(),
                name=esc(method),
                boxmean=True,
                boxpoints="all" if part.height <= 2000 else "outliers",
                jitter=0.4,
                pointpos=0,
                hovertext=[esc(i) for i in part["example_id"]],
                hoverinfo="text+y",
            )
        )
    fig.update_layout(showlegend=False)
    fig.update_yaxes(title=column.replace("n_", "").replace("_", " "))
    return _layout(fig, "Lengths of the selected examples")


def norm_vs_length_figure(
    stats: pl.DataFrame,
    tokenized_pool: pl.DataFrame,
    column: str = "n_completion_tokens",
    *,
    max_points: int = SCATTER_POINTS,
) -> go.Figure:
    """Gradient norm (Figure 3) and Adam-update norm ``feature_norm`` (Figure 4) against
    completion length; titles give Spearman's rho (negative: short examples weigh more),
    over every example; beyond ``max_points`` examples a seeded sample is drawn."""
    data = stats.join(tokenized_pool.select("example_id", column), on="example_id", how="inner")
    specs = [("grad_norm", "‖∇ℓ‖ (gradient norm)"), ("feature_norm", "‖Γ‖ (update norm)")]
    titles = [f"{label}, ρ = {spearman(data[column], data[col]):+.2f}" for col, label in specs]
    if data.height > max_points:
        data = sample_rows(data, max_points)
        titles = [f"{t} ({max_points:,} of the examples drawn)" for t in titles]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.1)
    hover = [esc(i) for i in data["example_id"]]
    for k, (col, label) in enumerate(specs, start=1):
        fig.add_trace(
            go.Scatter(
                x=data[column].to_list(),
                y=data[col].to_list(),
                mode="markers",
                name=label,
                hovertext=hover,
                hoverinfo="text+x+y",
                marker=dict(size=5, opacity=0.6),
            ),
            row=1,
            col=k,
        )
        fig.update_xaxes(title="completion tokens", type="log", row=1, col=k)
        fig.update_yaxes(type="log", row=1, col=k)
    fig.update_layout(showlegend=False)
    return _layout(fig, "Sequence-level gradient norms vs completion length")


def metric_columns(histories: Mapping[str, pl.DataFrame], loss: str = "val_loss") -> list[str]:
    """Numeric history columns that can be plotted against the loss (sorted)."""
    cols: set[str] = set()
    for h in histories.values():
        cols |= {c for c, t in h.schema.items() if t.is_numeric()}
    return sorted(cols - set(HISTORY_COLUMNS) - {loss})


def loss_accuracy_figure(
    histories: Mapping[str, pl.DataFrame], metric: str, loss: str = "val_loss"
) -> go.Figure:
    """Validation loss (x) against ``metric`` (y) at every fine-tuning epoch, one trace per
    method with points in epoch order: a lower loss need not mean a higher accuracy
    (appendix I)."""
    fig = go.Figure()
    for method, h in histories.items():
        for col in (loss, metric):
            if col not in h.columns:
                raise KeyError(f"history of {method!r} has no column {col!r}; have {h.columns}")
        h = h.sort("epoch")
        fig.add_trace(
            go.Scatter(
                x=h[loss].to_list(),
                y=h[metric].to_list(),
                mode="lines+markers+text",
                name=esc(method),
                text=[f"e{e}" for e in h["epoch"]],
                textposition="top center",
                hovertext=[f"{esc(method)} epoch {e}" for e in h["epoch"]],
                hoverinfo="text+x+y",
            )
        )
    fig.update_xaxes(title=esc(loss))
    fig.update_yaxes(title=esc(metric))
    return _layout(fig, f"{esc(loss)} vs {esc(metric)} across epochs")


def similarity_curve_figure(
    scores: pl.DataFrame,
    subtasks: Sequence[str] | None = None,
    *,
    max_points: int = CURVE_POINTS,
    curves: Mapping[str, np.ndarray] | None = None,
) -> go.Figure:
    """Every pool example's similarity to each target subtask, sorted descending (appendix
    J, Figure 9): a few high scores, a sharp drop, then a smooth decline, maybe below 0.
    ``subtasks`` may include :data:`MAX_SUBTASK` for the aggregated score. A curve longer
    than ``max_points`` keeps its top ranks and its last, evenly spaced ranks between
    (``scale.curve_points``); ``curves`` passes already sorted curves by name."""
    names = subtasks_of(scores) if subtasks is None else list(subtasks)
    curves = similarity_curves(scores, names) if curves is None else curves
    fig = go.Figure()
    for name in names:
        x, y = curve_points(curves[name], max_points)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=esc(name)))
    fig.add_hline(y=0, line_dash="dot", line_color="gray")
    fig.update_xaxes(title="pool examples, by decreasing score")
    fig.update_yaxes(title="score")
    return _layout(fig, "Sorted similarity to the targets")
