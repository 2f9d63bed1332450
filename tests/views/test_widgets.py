"""Interactive views (less_lab.widgets) driven in-process: set a control's value, then check
the FigureWidget data and the table rows it redrew; untrusted text must come out escaped."""

from __future__ import annotations

from html.parser import HTMLParser

import polars as pl
import pytest
from figure_utils import all_hover, ranked_bars

from less_lab.core.selection import write_selection
from less_lab.lab import Lab
from less_lab.views import widgets
from less_lab.views.frames import MAX_SUBTASK

EVIL = "<script>alert(1)</script> then <img src=x onerror=alert(1)>"
IDS = ["e0", "e1", "e2", "e3", "e4", "e5"]
SOURCES = ["flan", "flan", "cot", "dolly", "cot", "flan"]
SKILLS = ["math", "math", "logic", "qa", "qa", "math"]
A = [0.10, 0.50, -0.20, 0.30, 0.05, -0.40]
B = [0.20, -0.10, 0.00, 0.60, 0.01, 0.15]
LONG = "long answer " * 40


def make_pool(evil: bool = False) -> pl.DataFrame:
    rows = []
    for i, (eid, src, skill) in enumerate(zip(IDS, SOURCES, SKILLS, strict=True)):
        answer = LONG if i == 3 else (EVIL if evil and i == 1 else f"answer {i}")
        msgs = [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": answer},
        ]
        rows.append(
            {
                "example_id": eid,
                "source": src,
                "skill": skill,
                "messages": msgs,
                "raw": f'{{"id": "{eid}"}}',
            }
        )
    return pl.DataFrame(rows)


def make_scores() -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"example_id": e, "source": s, "subtask": t, "score": v}
            for e, s, a, b in zip(IDS, SOURCES, A, B, strict=True)
            for t, v in (("a", a), ("b", b))
        ]
    )


def make_tokenized() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "example_id": IDS,
            "n_tokens": [10, 20, 30, 40, 50, 60],
            "n_completion_tokens": [3, 9, 4, 25, 1, 7],
        }
    )


class _Cells(HTMLParser):
    """Rows of cell texts (entities decoded) of an HTML table: what a reader sees."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def cells(html: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(html)
    return parser.rows


def column(html: str, name: str) -> list[str]:
    rows = cells(html)
    j = rows[0].index(name)
    return [r[j] for r in rows[1:]]


# ----------------------------------------------------------------------------- views


def test_top_examples_view_follows_subtask_direction_and_n():
    view = widgets.TopExamplesView(make_scores(), make_pool(), make_tokenized(), n=3)
    fig = view.fig
    assert view.controls["subtask"].value == MAX_SUBTASK
    assert ranked_bars(fig) == (["e3", "e1", "e0"], [0.6, 0.5, 0.2])  # max over subtasks
    assert [t.name for t in fig.data] == ["dolly", "flan"]  # the legend: e3 dolly, e1/e0 flan
    view.controls["subtask"].value = "a"
    assert ranked_bars(view.fig) == (["e1", "e3", "e0"], [0.5, 0.3, 0.1])
    assert [t.name for t in view.fig.data] == ["flan", "dolly"]
    assert column(view.table.value, "example") == ["e1", "e3", "e0"]
    assert cells(view.table.value)[0] == [
        "rank",
        "score",
        "example",
        "source",
        "prompt tokens",
        "completion tokens",
        "text",
    ]
    assert column(view.table.value, "completion tokens") == ["9", "25", "3"]
    assert column(view.table.value, "prompt tokens") == ["11", "15", "7"]
    view.controls["direction"].value = "negative"
    assert ranked_bars(view.fig) == (["e5", "e2", "e4"], [-0.4, -0.2, 0.05])
    assert [t.name for t in view.fig.data] == ["flan", "cot"]
    assert column(view.table.value, "example") == ["e5", "e2", "e4"]
    view.controls["n"].value = 2
    assert column(view.table.value, "rank") == ["1", "2"]
    assert ranked_bars(view.fig)[0] == ["e5", "e2"]
    assert view.fig is fig  # the displayed widget is updated in place, never replaced


def test_top_examples_view_shows_full_text_of_the_picked_example():
    view = widgets.TopExamplesView(make_scores(), make_pool(), n=4)
    picker = view.controls["example"]
    assert [v for _, v in picker.options] == ["e3", "e1", "e0", "e5"] and picker.value == "e3"
    text = column(view.table.value, "text")[0]
    assert text.endswith("…") and len(text) <= 160  # truncated in the table
    assert LONG.strip() in cells(f"<table><tr><td>{view.detail.value}</td></tr></table>")[0][0]
    picker.value = "e0"
    assert "answer 0" in view.detail.value and "rank 3" in view.detail.value
    view.controls["n"].value = 3  # e0 still shown: the pick is kept
    assert picker.value == "e0" and "answer 0" in view.detail.value
    view.controls["n"].value = 2  # e0 gone: the first shown example is picked
    assert picker.value == "e3" and "long answer" in view.detail.value


def test_neighbors_view_puts_methods_side_by_side_per_target():
    def frame(ids, scores):
        return pl.DataFrame(
            {"example_id": ids, "score": scores, "rank": list(range(1, len(ids) + 1))}
        )

    targets = pl.DataFrame(
        {
            "example_id": ["t0", "t1"],
            "subtask": ["x", "y"],
            "messages": [
                [{"role": "user", "content": "target zero"}],
                [{"role": "user", "content": "target one"}],
            ],
        }
    )
    neigh = {
        "t0": {
            "LESS": frame(["e1", "e2"], [0.9, 0.8]),
            "BM25": frame(["e3"], [7.0]),
            "RDS": frame(["e0", "e4"], [0.5, 0.4]),
        },
        "t1": {
            "LESS": frame(["e5"], [0.3]),
            "BM25": frame(["e0"], [2.0]),
            "RDS": frame(["e2"], [0.1]),
        },
    }
    view = widgets.NeighborsView(neigh, make_pool(), targets)
    assert [label for label, _ in view.controls["target"].options] == ["t0 (x)", "t1 (y)"]
    rows = cells(view.table.value)
    assert rows[0] == ["rank", "LESS", "BM25", "RDS"]
    assert rows[1][1].startswith("e1 +0.9000 flan") and rows[1][2].startswith("e3 +7.0000 dolly")
    assert rows[2][2] == "" and rows[2][3].startswith("e4")
    assert [list(t.y) for t in view.fig.data] == [["1. e1", "2. e2"], ["1. e3"], ["1. e0", "2. e4"]]
    assert "target zero" in view.detail.value
    view.controls["target"].value = "t1"
    assert [list(t.x) for t in view.fig.data] == [[0.3], [2.0], [0.1]]
    assert len(cells(view.table.value)) == 2 and "target one" in view.detail.value


def test_subset_distribution_view_groups_by_source_or_skill():
    sel = {
        "LESS": pl.DataFrame({"example_id": ["e0", "e1", "e2"]}),
        "random": pl.DataFrame({"example_id": ["e3", "e4"]}),
    }
    view = widgets.SubsetDistributionView(sel, make_pool())
    assert (
        list(view.controls["by"].options)
        == [
            "source",
            "skill",
        ]
        and len(view.fig.data) == 3
    )
    assert cells(view.table.value)[1] == ["cot", "1 (33.3%)", "1 (50.0%)"]
    view.controls["by"].value = "skill"
    assert sorted(t.name for t in view.fig.data) == ["logic", "math", "qa"]
    for i, _ in enumerate(sel):
        assert sum(t.y[i] for t in view.fig.data) == pytest.approx(1.0)
    assert dict(cells(view.table.value)[1:][j][:2] for j in range(3)) == {
        "logic": "1 (33.3%)",
        "math": "2 (66.7%)",
        "qa": "0 (0.0%)",
    }


def test_length_bias_view_switches_between_lengths_and_norms():
    sel = {
        "cosine": pl.DataFrame({"example_id": ["e3", "e1"]}),
        "dot": pl.DataFrame({"example_id": ["e4", "e0"]}),
    }
    stats = pl.DataFrame(
        {"example_id": IDS, "grad_norm": [6.0, 5, 4, 3, 2, 1], "feature_norm": [1.0, 2, 3, 4, 5, 6]}
    )
    view = widgets.LengthBiasView(sel, make_tokenized(), stats)
    assert [list(t.y) for t in view.fig.data] == [[25, 9], [1, 3]]
    assert column(view.table.value, "mean completion tokens") == ["17.0", "2.0"]
    view.controls["kind"].value = "norm vs length"
    assert len(view.fig.data) == 2 and sorted(view.fig.data[0].x) == [1, 3, 4, 7, 9, 25]
    assert column(view.table.value, "norm") == ["grad_norm", "feature_norm"]
    assert list(widgets.LengthBiasView(sel, make_tokenized()).controls["kind"].options) == [
        "selected lengths"
    ]


def test_loss_accuracy_view_redraws_for_the_chosen_metric():
    hist = {
        "LESS": pl.DataFrame(
            {
                "epoch": [1, 2, 3],
                "train_loss": [2.0, 1.0, 0.5],
                "val_loss": [1.2, 0.9, 1.0],
                "acc": [0.3, 0.4, 0.5],
            }
        ),
        "random": pl.DataFrame(
            {"epoch": [1, 2], "train_loss": [2.1, 1.9], "val_loss": [1.3, 1.1], "acc": [0.2, 0.25]}
        ),
    }
    view = widgets.LossAccuracyView(hist)
    assert view.controls["metric"].value == "acc" and len(view.fig.data) == 2
    assert list(view.fig.data[0].y) == [0.3, 0.4, 0.5]
    row = cells(view.table.value)[1]  # lowest val_loss at epoch 2, best acc at epoch 3
    assert row == ["LESS", "2", "0.9000", "0.4000", "3", "0.5000"]
    view.controls["metric"].value = "train_loss"
    assert list(view.fig.data[1].y) == [2.1, 1.9]
    assert cells(view.table.value)[1][4] == "3"  # a loss is best when lowest


def test_similarity_curve_view_all_one_or_max():
    view = widgets.SimilarityCurveView(make_scores())
    assert view.controls["subtask"].value == "all" and [t.name for t in view.fig.data] == ["a", "b"]
    view.controls["subtask"].value = "b"
    assert len(view.fig.data) == 1 and list(view.fig.data[0].y) == sorted(B, reverse=True)
    assert cells(view.table.value)[1][:3] == ["b", "6", "+0.6000"]
    view.controls["subtask"].value = MAX_SUBTASK
    assert list(view.fig.data[0].y) == [0.6, 0.5, 0.2, 0.15, 0.05, 0.0]


def test_views_display_their_widget():
    view = widgets.SimilarityCurveView(make_scores())
    bundle = view._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == view.widget.model_id
    assert view.fig in view.widget.children and view.table in view.widget.children


# ----------------------------------------------------------------------------- escaping


def _assert_escaped(*texts: str) -> None:
    for text in texts:
        low = text.lower()
        assert "<script" not in low and "<img" not in low, text[:300]


def test_untrusted_text_is_escaped_in_tables_details_and_hover():
    pool = make_pool(evil=True).with_columns(
        source=pl.when(pl.col("example_id") == "e0").then(pl.lit("<img src=s>")).otherwise("source")
    )
    scores = make_scores().with_columns(subtask=pl.lit("<script>sub</script>"))
    top = widgets.TopExamplesView(scores, pool, n=6)
    top.controls["example"].value = "e1"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in top.detail.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in top.table.value
    assert "&lt;script&gt;alert(1)" in all_hover(top.fig)
    targets = pl.DataFrame(
        {
            "example_id": ["<img src=t>"],
            "subtask": ["<script>"],
            "messages": [[{"role": "user", "content": EVIL}]],
        }
    )
    neigh = {
        "<img src=t>": {
            "<script>m</script>": pl.DataFrame(
                {"example_id": ["e1", "e0"], "score": [0.2, 0.1], "rank": [1, 2]}
            )
        }
    }
    near = widgets.NeighborsView(neigh, pool, targets)
    sel = {"<img src=m>": pl.DataFrame({"example_id": ["e0", "e1"]})}
    subset = widgets.SubsetDistributionView(sel, pool)
    lengths = widgets.LengthBiasView(sel, make_tokenized())
    hist = {"<script>h</script>": pl.DataFrame({"epoch": [1], "val_loss": [1.0], "<img>": [0.5]})}
    loss = widgets.LossAccuracyView(hist)
    curve = widgets.SimilarityCurveView(scores)
    for view in (top, near, subset, lengths, loss, curve):
        details = getattr(view, "detail", None)
        _assert_escaped(view.table.value, details.value if details else "", view.fig.to_json())


# ----------------------------------------------------------------------------- explore


def test_explore_builds_the_views_a_lab_run_has_data_for(tmp_path):
    lab = Lab(tmp_path / "run", progress=False)
    pool = make_pool()
    lab.set_pool(pool)
    lab.add_target(
        "t",
        pl.DataFrame(
            {
                "example_id": ["t0"],
                "subtask": ["a"],
                "messages": [[{"role": "user", "content": "q"}]],
            }
        ),
    )
    scores = make_scores()
    top = pl.DataFrame(
        {
            "example_id": ["e1", "e3"],
            "source": ["flan", "dolly"],
            "subtask": ["a", "b"],
            "score": [0.5, 0.6],
        }
    ).with_row_index("rank", 1)
    write_selection(top, pool, lab.selection_dir("t"), scores=scores)
    with pytest.raises(FileNotFoundError, match="lab.select"):
        lab.explore("other")
    tab = lab.explore("t")
    assert tab.titles == ("Top examples", "Similarity", "Subsets")
    lab._tokenized["pool"] = make_tokenized()
    hist = {"LESS": pl.DataFrame({"epoch": [1, 2], "val_loss": [1.0, 0.9], "acc": [0.1, 0.2]})}
    neigh = {"t0": {"LESS": pl.DataFrame({"example_id": ["e1"], "score": [0.3], "rank": [1]})}}
    rand = {"random": pl.DataFrame({"example_id": ["e0", "e2"]})}
    tab = lab.explore("t", selections=rand, histories=hist, neighbors=neigh)
    assert tab.titles == (
        "Top examples",
        "Similarity",
        "Subsets",
        "Lengths",
        "Neighbors",
        "Loss vs accuracy",
    )
    # the views take frames: the same tab from frames alone, no Lab
    direct = widgets.explore(
        scores, top, pool, tokenized=make_tokenized(), selections=rand, histories=hist
    )
    assert direct.titles == ("Top examples", "Similarity", "Subsets", "Lengths", "Loss vs accuracy")
    subsets = tab.views["Subsets"]
    assert [t.x for t in subsets.fig.data][0] == ("LESS", "random", "(pool)")
    assert list(tab.views["Lengths"].fig.data[0].y) == [9, 25]
