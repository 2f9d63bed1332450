"""The "beats random?" forest plot (less_lab.views.paired) against a hand-made frame of
paired differences: one panel per metric, error bars equal to the interval, a zero line
in every panel, colours by verdict, escaped names and the pair count in the hover."""

from __future__ import annotations

import polars as pl
import pytest

from less_lab.core.paired import BETTER, DIFF_SCHEMA, NA, TIE, WORSE
from less_lab.views.paired import VERDICT_COLORS, paired_figure, with_verdicts

EVIL = "<img src=x onerror=alert(1)>"

# method, metric, n_pairs, mean, lo, hi, excludes_zero, better
ROWS = [
    ("less", "test_acc", 3, 0.05, 0.01, 0.09, True, True),
    ("bm25", "test_acc", 3, -0.02, -0.05, 0.01, False, None),
    (EVIL, "test_acc", 1, 0.10, None, None, False, None),
    ("less", "val_loss", 3, -0.20, -0.30, -0.10, True, True),
    ("bm25", "val_loss", 3, 0.30, 0.10, 0.50, True, False),
    (EVIL, "val_loss", 0, None, None, None, False, None),
]


def diffs_frame() -> pl.DataFrame:
    rows = [(*r, 1.0, 1.0) for r in ROWS]  # method_mean, baseline_mean: not plotted
    return pl.DataFrame(rows, schema=DIFF_SCHEMA, orient="row")


def panel_traces(fig, axis: str) -> list:
    return [t for t in fig.data if t.xaxis == axis]


def points(traces) -> dict[str, tuple]:
    """``{method: (x, err_plus, err_minus, colour, verdict)}`` over a panel's traces."""
    out = {}
    for t in traces:
        for i, method in enumerate(t.y):
            out[method] = (t.x[i], t.error_x.array[i], t.error_x.arrayminus[i], t.marker.color,
                           t.name)  # fmt: skip
    return out


def test_one_panel_per_metric_with_interval_error_bars():
    fig = paired_figure(diffs_frame(), title="LESS vs random")
    acc, loss = panel_traces(fig, "x"), panel_traces(fig, "x2")
    assert acc and loss and len(acc) + len(loss) == len(fig.data)
    assert {t.meta for t in acc} == {"test_acc"} and {t.meta for t in loss} == {"val_loss"}
    assert [a.text for a in fig.layout.annotations] == ["test_acc", "val_loss"]
    p = points(acc)
    assert p["less"][:3] == pytest.approx((0.05, 0.04, 0.04))
    assert p["bm25"][:3] == pytest.approx((-0.02, 0.03, 0.03))
    assert p["less"][3:] == (VERDICT_COLORS[BETTER], BETTER)
    assert p["bm25"][3:] == (VERDICT_COLORS[TIE], TIE)
    q = points(loss)
    assert q["bm25"][:3] == pytest.approx((0.30, 0.20, 0.20))
    assert q["bm25"][3:] == (VERDICT_COLORS[WORSE], WORSE)
    assert fig.layout.title.text == "LESS vs random"


def test_zero_line_in_every_panel():
    fig = paired_figure(diffs_frame())
    lines = [(s.xref, s.x0, s.x1) for s in fig.layout.shapes if s.type == "line"]
    assert sorted(lines) == [("x", 0, 0), ("x2", 0, 0)]


def test_no_interval_and_no_difference():
    fig = paired_figure(diffs_frame())
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    acc = points(panel_traces(fig, "x"))
    assert acc[escaped] == (0.10, 0.0, 0.0, VERDICT_COLORS[NA], NA)  # one pair: a bare dot
    assert escaped not in points(panel_traces(fig, "x2"))  # no pairs: nothing to draw
    assert list(fig.layout.yaxis.categoryarray) == ["less", "bm25", escaped]
    assert with_verdicts(diffs_frame()).height == 5


def test_hover_is_escaped_and_tells_the_pair_count():
    fig = paired_figure(diffs_frame())
    hover = " ".join(h for t in fig.data for h in t.hovertext)
    assert "n_pairs 3" in hover and "n_pairs 1" in hover
    assert "<img" not in hover and "&lt;img" in hover
    assert fig.to_json()  # serialisable


def test_legend_shows_each_verdict_once():
    fig = paired_figure(diffs_frame())
    shown = [t.name for t in fig.data if t.showlegend]
    assert sorted(shown) == sorted({BETTER, WORSE, TIE, NA})


def test_an_empty_frame_draws_an_empty_figure():
    fig = paired_figure(pl.DataFrame(schema=DIFF_SCHEMA))
    assert len(fig.data) == 0
