"""Which completion tokens a gradient is made of, at a glance.

Fed by the frame of ``core.contributions.token_contributions`` (one row per labelled
token: ``example_id, position, token, kind, projection_share, ...``). The figure shows
each token's share of its example's gradient, end markers in their own colours, and
says in its title how much the end markers carry; the HTML shows the completion as text
shaded by share. Token text comes from the dataset, so it is escaped everywhere:
``plots.esc`` for Plotly's pseudo-HTML, ``html.esc`` (quotes too) for real HTML.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from less_lab.views import html as safe
from less_lab.views.plots import esc

KIND_COLORS = {"content": "#636efa", "eos": "#ef553b", "template": "#ffa15a"}
"""Bar / border colour of each token kind: content blue, end markers red and orange."""
MARKER_KINDS = ("eos", "template")
"""Kinds that end an answer rather than say it (``data.token_kinds``)."""
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(token: str) -> str:
    """Token text with whitespace made visible (a newline token would show as nothing);
    an empty token shows as ``∅``. Raw: escape afterwards."""
    text = "".join(VISIBLE.get(ch, ch) for ch in token)
    return text if text else "∅"


def example_rows(contrib: pl.DataFrame, example_id: str | None = None) -> pl.DataFrame:
    """One example's rows in position order (None: the frame's first example)."""
    if contrib.height == 0:
        raise ValueError("no token contributions to show")
    example_id = contrib["example_id"][0] if example_id is None else example_id
    rows = contrib.filter(pl.col("example_id") == example_id)
    if rows.height == 0:
        have = contrib["example_id"].unique(maintain_order=True).to_list()
        raise KeyError(f"no contributions for {example_id!r} (have {have[:10]})")
    return rows.sort("position")


def marker_share(rows: pl.DataFrame) -> float:
    """Summed ``projection_share`` of one example's end-marker tokens (eos, template)."""
    return float(rows.filter(pl.col("kind").is_in(MARKER_KINDS))["projection_share"].sum())


def summary_text(rows: pl.DataFrame) -> str:
    """One raw sentence: ``<id>: end marker tokens carry 81% of the gradient``."""
    return (
        f"{rows['example_id'][0]}: end marker tokens carry {marker_share(rows):.0%} of the gradient"
    )


def token_figure(contrib: pl.DataFrame, example_id: str | None = None) -> go.Figure:
    """Bars of each completion token's ``projection_share`` of one example's gradient
    (None: the first example), x = position labelled with the token text, one trace per
    kind so the legend names the colours; the title states the end markers' share."""
    rows = example_rows(contrib, example_id)
    fig = go.Figure()
    for kind in rows["kind"].unique(maintain_order=True):
        part = rows.filter(pl.col("kind") == kind)
        fig.add_trace(_kind_bars(part, kind))
    fig.update_xaxes(
        tickmode="array",
        tickvals=rows["position"].to_list(),
        ticktext=[esc(visible(t)) for t in rows["token"]],
        title="completion token (position)",
    )
    fig.update_yaxes(title="share of the example's gradient", tickformat=".0%")
    fig.update_layout(
        title=esc(summary_text(rows)),
        template="plotly_white",
        barmode="overlay",
        legend_title_text="token kind",
        height=380,
        margin=dict(l=60, r=20, t=60, b=80),
    )
    return fig


def _kind_bars(rows: pl.DataFrame, kind: str) -> go.Bar:
    """The bars of one kind's tokens; hover gives the token, loss and gradient norm."""
    hover = [
        f"<b>{esc(visible(t))}</b> (position {p})<br>loss {loss:.3f}, ‖g_t‖ {n:.3g}"
        for t, p, loss, n in rows.select("token", "position", "loss", "grad_norm").iter_rows()
    ]
    return go.Bar(
        x=rows["position"].to_list(),
        y=rows["projection_share"].to_list(),
        name=esc(kind),
        marker_color=KIND_COLORS.get(kind, "#7f7f7f"),
        hovertext=hover,
        hoverinfo="text+y",
    )


def _span(token: str, kind: str, share: float, scale: float) -> str:
    """One token as a shaded span: blue for a positive share, red for a negative one,
    opacity by |share|; end markers get a coloured border and a small kind label."""
    alpha = min(abs(share) / scale, 1.0) if scale > 0 else 0.0
    rgb = "99,110,250" if share >= 0 else "239,85,59"
    style = f"background:rgba({rgb},{alpha:.2f});padding:1px 2px;white-space:pre"
    label = ""
    if kind in MARKER_KINDS:
        style += f";border:2px solid {KIND_COLORS[kind]};border-radius:3px"
        label = f'<sub style="color:{KIND_COLORS[kind]}">{safe.esc(kind)}</sub>'
    title = safe.esc(f"{kind}: {share:.1%} of the gradient")
    return f'<span title="{title}" style="{style}">{safe.esc(visible(token))}{label}</span>'


def token_html(contrib: pl.DataFrame, example_id: str | None = None) -> str:
    """One example's completion as inline tokens shaded by ``|projection_share|`` (the
    largest share is fully opaque), end markers boxed and labelled, under a line giving
    each kind's share. Every piece of dataset text is escaped."""
    rows = example_rows(contrib, example_id)
    scale = float(rows["projection_share"].abs().max() or 0.0)
    spans = "".join(
        _span(t, k, s, scale)
        for t, k, s in rows.select("token", "kind", "projection_share").iter_rows()
    )
    by_kind = rows.group_by("kind", maintain_order=True).agg(pl.col("projection_share").sum())
    shares = ", ".join(f"{safe.esc(k)} {s:.0%}" for k, s in by_kind.iter_rows())
    head = f"<b>{safe.esc(rows['example_id'][0])}</b>: {shares} of the gradient"
    body = f'<div style="font-family:monospace;font-size:13px;line-height:1.9">{spans}</div>'
    return f"<div>{head}{body}</div>"
