"""The token-contribution figure and HTML, from hand-made frames (no model)."""

from __future__ import annotations

import polars as pl
import pytest

from less_lab.views.tokens import marker_share, token_figure, token_html, visible

SCRIPT = "<script>alert(1)</script>"


def _contrib() -> pl.DataFrame:
    """Two examples: a one-letter answer whose EOS carries 80%, and one whose token text
    is hostile markup."""
    return pl.DataFrame(
        {
            "example_id": ["mc-0", "mc-0", "mc-0", "x<b>1"],
            "position": [9, 10, 11, 4],
            "token_id": [40, 2, 5, 7],
            "token": ["B", "</s>", "\n", SCRIPT],
            "kind": ["content", "eos", "template", "content"],
            "loss": [1.0, 2.0, 0.5, 3.0],
            "grad_norm": [0.1, 0.3, 0.05, 0.2],
            "norm_share": [0.1 / 0.45, 0.3 / 0.45, 0.05 / 0.45, 1.0],
            "projection_share": [0.2, 0.85, -0.05, 1.0],
        }
    )


def test_figure_bars_are_the_shares_coloured_by_kind_with_the_marker_share_in_the_title():
    fig = token_figure(_contrib())
    assert [t.name for t in fig.data] == ["content", "eos", "template"]
    bars = {x: y for t in fig.data for x, y in zip(t.x, t.y, strict=True)}
    assert bars == {9: 0.2, 10: 0.85, 11: -0.05}
    assert len({t.marker.color for t in fig.data}) == 3
    assert list(fig.layout.xaxis.tickvals) == [9, 10, 11]
    assert list(fig.layout.xaxis.ticktext) == ["B", "&lt;/s&gt;", "↵"]
    assert fig.layout.title.text == "mc-0: end marker tokens carry 80% of the gradient"
    assert marker_share(_contrib().filter(pl.col("example_id") == "mc-0")) == pytest.approx(0.8)


def test_figure_escapes_ids_and_tokens_and_refuses_unknown_ids():
    fig = token_figure(_contrib(), "x<b>1")
    assert "<b>1" not in fig.layout.title.text and "x&lt;b&gt;1" in fig.layout.title.text
    assert list(fig.layout.xaxis.ticktext) == ["&lt;script&gt;alert(1)&lt;/script&gt;"]
    assert "<script>" not in " ".join(fig.data[0].hovertext)
    with pytest.raises(KeyError, match="nope"):
        token_figure(_contrib(), "nope")
    with pytest.raises(ValueError):
        token_figure(_contrib().head(0))


def test_html_escapes_token_text_and_marks_end_markers():
    page = token_html(_contrib(), "x<b>1")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x&lt;b&gt;1</b>" in page
    page = token_html(_contrib())
    assert page.count("<span") == 3
    assert "&lt;/s&gt;" in page and "<sub" in page and "border:2px solid #ef553b" in page
    assert "eos 85%" in page and "template -5%" in page
    assert "rgba(99,110,250,1.00)" in page  # the largest share is fully opaque
    assert "rgba(239,85,59," in page  # a negative share is red


def test_visible_whitespace():
    assert visible("\n") == "↵" and visible("") == "∅" and visible(" a") == " a"
