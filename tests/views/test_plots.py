"""Static figures (less_lab.plots) against hand-made frames, and per-target neighbors
(less_lab.neighbors) against hand-computed cosines and the plain baseline definitions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import polars as pl
import pytest
from figure_utils import all_hover, ranked_bars

import less_lab.model.lora  # noqa: F401  (RDS imports it lazily; slow first import)
from less_lab.core.datastore import stats_frame
from less_lab.views import frames, plots

EVIL = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"
IDS = ["e0", "e1", "e2", "e3", "e4", "e5"]
SOURCES = ["flan", "flan", "cot", "dolly", "cot", "flan"]
SKILLS = ["math", "math", "logic", "qa", "qa", "math"]
# subtask a and b scores per example (e2 has NaN for b: never shown for b)
A = [0.10, 0.50, -0.20, 0.30, 0.05, -0.40]
B = [0.20, -0.10, float("nan"), 0.60, 0.00, 0.15]


def make_pool(evil: bool = False) -> pl.DataFrame:
    rows = []
    for i, (eid, src, skill) in enumerate(zip(IDS, SOURCES, SKILLS, strict=True)):
        prompt = f"question {i} " + ("word " * i)
        answer = EVIL if evil and i == 1 else f"answer {i}"
        rows.append(
            {
                "example_id": eid,
                "source": src,
                "skill": skill,
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return pl.DataFrame(rows)


def make_scores() -> pl.DataFrame:
    rows = []
    for eid, src, a, b in zip(IDS, SOURCES, A, B, strict=True):
        rows += [
            {"example_id": eid, "source": src, "subtask": "a", "score": a},
            {"example_id": eid, "source": src, "subtask": "b", "score": b},
        ]
    return pl.DataFrame(rows)


def make_tokenized() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "example_id": IDS,
            "n_tokens": [10, 20, 30, 40, 50, 60],
            "n_completion_tokens": [3, 9, 4, 25, 1, 7],
        }
    )


# ----------------------------------------------------------------------------- figures


def test_top_examples_figure_shows_the_chosen_subtask_best_first_and_lowest_when_negative():
    pool, scores = make_pool(), make_scores()
    fig = plots.top_examples_figure(scores, pool, "a", n=3)
    assert ranked_bars(fig) == (["e1", "e3", "e0"], [0.50, 0.30, 0.10])
    low = plots.top_examples_figure(scores, pool, "a", n=2, negative=True)
    assert ranked_bars(low) == (["e5", "e2"], [-0.40, -0.20])
    b = plots.top_examples_figure(scores, pool, "b", n=10, negative=True)
    ids, _ = ranked_bars(b)
    assert "e2" not in ids and len(ids) == 5  # NaN is never shown
    # max over subtasks (the paper's score): e3 0.6, e1 0.5, e0 0.2, e5 0.15, e4 0.05, e2 -0.2
    best = plots.top_examples_figure(scores, pool, None, n=6)
    assert ranked_bars(best) == (
        ["e3", "e1", "e0", "e5", "e4", "e2"],
        [0.6, 0.5, 0.2, 0.15, 0.05, -0.2],
    )
    with pytest.raises(KeyError, match="no scores for subtask"):
        frames.top_examples(scores, "zzz")


def test_top_examples_figure_names_each_source_colour_in_the_legend():
    pool, scores = make_pool(), make_scores()
    fig = plots.top_examples_figure(scores, pool, None, n=6)
    # one trace per source, in order of its best rank: e3 dolly; e1, e0, e5 flan; e4, e2 cot
    assert [t.name for t in fig.data] == ["dolly", "flan", "cot"]
    assert [list(t.x) for t in fig.data] == [["e3"], ["e1", "e0", "e5"], ["e4", "e2"]]
    assert fig.layout.showlegend and fig.layout.legend.title.text == "source"
    assert fig.layout.barmode == "overlay"  # one full-width bar per example, not grouped
    colors = {t.name: t.marker.color for t in fig.data}
    assert len(set(colors.values())) == 3
    # a source keeps its colour whatever the subtask or n shows
    low = plots.top_examples_figure(scores, pool, "a", n=2, negative=True)
    assert {t.name: t.marker.color for t in low.data} == {
        "flan": colors["flan"],
        "cot": colors["cot"],
    }
    hover = {t.name: list(t.hovertext) for t in fig.data}
    assert hover["dolly"][0].startswith("<b>e3</b> (dolly)<br>")


def test_with_examples_lengths_in_tokens_and_chars():
    rows = frames.with_examples(
        frames.top_examples(make_scores(), "a", 2), make_pool(), make_tokenized()
    )
    assert rows["example_id"].to_list() == ["e1", "e3"]
    assert rows["prompt_tokens"].to_list() == [11, 15]
    assert rows["completion_tokens"].to_list() == [9, 25]
    chars = frames.with_examples(frames.top_examples(make_scores(), "a", 1), make_pool())
    assert chars["prompt_chars"][0] == len("question 1 word ")
    assert chars["completion_chars"][0] == len("answer 1")
    assert chars["text"][0] == "User: question 1 word \n\nAssistant: answer 1"


def test_subset_distribution_shares_match_a_hand_count_and_sum_to_one():
    pool = make_pool()
    sel = {
        "LESS": pl.DataFrame({"example_id": ["e0", "e1", "e2"], "rank": [1, 2, 3]}),
        "random": pl.DataFrame({"example_id": ["e3", "e4"]}),
    }
    fig = plots.subset_distribution_figure(sel, pool, by="source", include_pool=True)
    assert fig.layout.barmode == "stack"
    by_group = {t.name: dict(zip(t.x, t.y, strict=True)) for t in fig.data}
    # LESS: flan e0,e1 + cot e2; random: dolly e3 + cot e4; pool: flan 3, cot 2, dolly 1
    assert by_group["flan"] == pytest.approx({"LESS": 2 / 3, "random": 0, "(pool)": 3 / 6})
    assert by_group["cot"] == pytest.approx({"LESS": 1 / 3, "random": 1 / 2, "(pool)": 2 / 6})
    assert by_group["dolly"] == pytest.approx({"LESS": 0, "random": 1 / 2, "(pool)": 1 / 6})
    for method in ("LESS", "random", "(pool)"):
        assert sum(g[method] for g in by_group.values()) == pytest.approx(1.0)
    skills = frames.subset_shares(sel, pool, by="skill")
    assert dict(skills.filter(pl.col("method") == "LESS").select("skill", "count").iter_rows()) == {
        "math": 2,
        "logic": 1,
    }


def test_length_bias_values_are_the_selected_completion_lengths():
    sel = {
        "cosine": pl.DataFrame({"example_id": ["e3", "e1", "e0"]}),
        "dot": pl.DataFrame({"example_id": ["e4", "e0"]}),
    }
    fig = plots.length_bias_figure(sel, make_tokenized())
    assert [t.name for t in fig.data] == ["cosine", "dot"]
    assert list(fig.data[0].y) == [25, 9, 3] and list(fig.data[1].y) == [1, 3]
    assert fig.data[0].boxmean is True
    pooled = plots.length_bias_figure(sel, make_tokenized(), include_pool=True)
    assert list(pooled.data[2].y) == [3, 9, 4, 25, 1, 7]


def test_norm_vs_length_aligns_stats_by_id_and_reports_spearman():
    stats = pl.DataFrame(
        {
            "example_id": IDS[::-1],
            "loss": [1.0] * 6,
            "grad_norm": [6.0, 5, 4, 3, 2, 1],
            "feature_norm": [1.0, 2, 3, 4, 5, 6],
        }
    )
    fig = plots.norm_vs_length_figure(stats, make_tokenized())
    lengths = dict(zip(IDS, [3, 9, 4, 25, 1, 7], strict=True))
    grad = dict(zip(IDS[::-1], [6.0, 5, 4, 3, 2, 1], strict=True))
    xs, ys = fig.data[0].x, fig.data[0].y
    assert sorted(zip(xs, ys, strict=True)) == sorted((lengths[i], grad[i]) for i in IDS)
    # by hand: lengths ranks e0..e5 = 2,5,3,6,1,4; grad_norm(e_i) = i+1, ranks 1..6
    d2 = sum((a - b) ** 2 for a, b in zip([2, 5, 3, 6, 1, 4], [1, 2, 3, 4, 5, 6], strict=True))
    rho = 1 - 6 * d2 / (6 * 35)
    assert frames.spearman([lengths[i] for i in IDS], [grad[i] for i in IDS]) == pytest.approx(rho)
    assert f"{rho:+.2f}" in fig.layout.annotations[0].text
    assert math.isnan(frames.spearman([1, 2], [3, 4]))


def test_stats_frame_attaches_store_ids():
    store = SimpleNamespace(
        ids=["x", "y"],
        stats=pl.DataFrame(
            {"loss": [1.0, 2.0], "grad_norm": [3.0, 4.0], "feature_norm": [5.0, 6.0]}
        ),
    )
    assert stats_frame(store).select("example_id", "grad_norm").rows() == [
        ("x", 3.0),
        ("y", 4.0),
    ]


def test_loss_accuracy_has_one_trace_per_method_with_its_points_in_epoch_order():
    hist = {
        "LESS": pl.DataFrame(
            {
                "epoch": [2, 1, 3],
                "train_loss": [1.0, 2.0, 0.5],
                "val_loss": [0.9, 1.2, 0.8],
                "acc": [0.5, 0.3, 0.45],
            }
        ),
        "random": pl.DataFrame({"epoch": [1, 2], "val_loss": [1.3, 1.1], "acc": [0.2, 0.25]}),
    }
    fig = plots.loss_accuracy_figure(hist, "acc")
    assert [t.name for t in fig.data] == ["LESS", "random"]
    assert list(fig.data[0].x) == [1.2, 0.9, 0.8] and list(fig.data[0].y) == [0.3, 0.5, 0.45]
    assert list(fig.data[1].x) == [1.3, 1.1] and list(fig.data[1].text) == ["e1", "e2"]
    assert plots.metric_columns(hist) == ["acc", "train_loss"]
    with pytest.raises(KeyError, match="no column 'f1'"):
        plots.loss_accuracy_figure(hist, "f1")


def test_similarity_curve_is_sorted_descending_per_subtask():
    scores = make_scores()
    fig = plots.similarity_curve_figure(scores)
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == sorted(A, reverse=True)
    assert list(fig.data[1].y) == sorted([b for b in B if not math.isnan(b)], reverse=True)
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5, 6]
    agg = plots.similarity_curve_figure(scores, [frames.MAX_SUBTASK])
    assert list(agg.data[0].y) == [0.6, 0.5, 0.2, 0.15, 0.05, -0.2]


def _figure_strings(fig) -> list[str]:
    out = []
    for t in fig.data:
        for key in ("hovertext", "text", "x", "y", "name"):
            value = getattr(t, key, None)
            if value is not None:
                out += [str(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    return out + [fig.to_json()]


def test_untrusted_text_is_escaped_in_every_figure():
    pool = make_pool(evil=True).with_columns(
        pl.when(pl.col("example_id") == "e3")
        .then(pl.lit("<img src=y>"))
        .otherwise("source")
        .alias("source")
    )
    scores = make_scores().with_columns(subtask=pl.lit("<script>s</script>"))
    sel = {"<img src=m>": pl.DataFrame({"example_id": ["e1", "e3"]})}
    neigh = {"LESS": pl.DataFrame({"example_id": ["e1"], "score": [0.5], "rank": [1]})}
    figs = [
        plots.top_examples_figure(scores, pool, "<script>s</script>", n=6),
        plots.neighbors_figure(neigh, pool),
        plots.subset_distribution_figure(sel, pool),
        plots.length_bias_figure(sel, make_tokenized()),
        plots.similarity_curve_figure(scores),
    ]
    for fig in figs:
        for text in _figure_strings(fig):
            assert "<script" not in text.lower() and "<img" not in text.lower(), text[:200]
    hover = all_hover(figs[0])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hover and "&lt;img src=x" in hover
    evil_source = make_scores().with_columns(source=pl.lit("<img src=y>"))
    legend = [t.name for t in plots.top_examples_figure(evil_source, pool, "a", n=2).data]
    assert legend == ["&lt;img src=y&gt;"]


def test_quotes_reach_plotly_as_quotes():
    """Plotly has no ``&quot;`` entity: escaping quotes would print it literally."""
    assert plots.esc('say "hi" & it\'s <b>') == 'say "hi" &amp; it\'s &lt;b&gt;'
