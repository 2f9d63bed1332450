"""Readers of plotly figures shared by the figure and widget tests.

Why: the top-examples figure draws one bar trace per pool source (so the legend names
each colour), and the rank order lives in the x axis's category array, not in any one
trace. Tests read the bars back in that order instead of assuming a single trace.
"""

from __future__ import annotations

import plotly.graph_objects as go


def ranked_bars(fig: go.Figure) -> tuple[list[str], list[float]]:
    """(x labels, heights) of every bar, in the x axis's category order, across traces."""
    heights = {x: y for t in fig.data for x, y in zip(t.x, t.y, strict=True)}
    order = list(fig.layout.xaxis.categoryarray)
    assert sorted(order) == sorted(heights), "each bar has exactly one slot on the x axis"
    return order, [heights[x] for x in order]


def all_hover(fig: go.Figure) -> str:
    """The hover text of every trace, joined."""
    return " ".join(h for t in fig.data for h in t.hovertext or ())
