"""Views at the paper's scale (less_lab.views.scale): long curves are downsampled keeping
the top and the end, big distributions are sent as box statistics, big scatters as a
sample, many groups folded, and the wide fast paths give the same rows as the exact polars
code. Small inputs are never reduced (tests/views/test_plots.py checks them value by
value)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from less_lab.core.scoring import long_frame
from less_lab.views import frames, plots, scale


def scores_frame(n: int, k: int, seed: int = 0, nan_share: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0, 1, (n, k)).round(2)  # rounded: ties happen
    matrix[rng.random((n, k)) < nan_share] = np.nan
    ids = [f"e{i}" for i in range(n)]
    sources = {i: ("a" if j % 3 else "b") for j, i in enumerate(ids)}
    return long_frame(matrix, [f"s{j}" for j in range(k)], ids, sources)


def test_long_curves_keep_their_top_and_end_with_bounded_points():
    scores = scores_frame(5000, 2)
    fig = plots.similarity_curve_figure(scores, ["s0"], max_points=500)
    full = frames.sorted_similarities(scores, "s0")
    x, y = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
    assert len(x) <= 501 and x[0] == 1 and x[-1] == 5000
    assert np.array_equal(x[: scale.CURVE_HEAD], np.arange(1, scale.CURVE_HEAD + 1))
    assert np.allclose(y, full[x - 1], atol=1e-6) and np.all(np.diff(y) <= 0)
    assert y.dtype == np.float32 and '"bdata"' in fig.to_json()  # a typed array, not a list
    small = plots.similarity_curve_figure(scores, ["s0"], max_points=5000)
    assert list(small.data[0].y) == list(full)


def test_wide_fast_paths_match_the_exact_frames(monkeypatch):
    scores = scores_frame(300, 7, nan_share=0.2)
    exact = {
        (neg, n): frames.top_examples(scores, None, n, neg)
        for neg in (False, True)
        for n in (1, 25)
    }
    names = [*frames.subtasks_of(scores), frames.MAX_SUBTASK]
    curves = {name: frames.sorted_similarities(scores, name) for name in names}
    monkeypatch.setattr(frames, "LARGE_ROWS", 0)
    assert scale.wide_scores(scores) is not None
    for (neg, n), want in exact.items():
        got = frames.top_examples(scores, None, n, neg)
        assert got.select("rank", "example_id", "source").equals(want.select(
            "rank", "example_id", "source"))  # fmt: skip
        assert np.allclose(got["score"].to_numpy(), want["score"].to_numpy())
    fast = frames.similarity_curves(scores, names)
    for name in names:
        assert np.array_equal(fast[name], curves[name]), name


def test_frames_not_in_the_scorer_layout_are_not_read_as_a_matrix():
    scores = scores_frame(50, 3)
    assert scale.wide_scores(scores) is not None
    assert scale.wide_scores(scores.sort("subtask")) is None
    assert scale.wide_scores(scores.slice(1)) is None
    assert scale.wide_scores(pl.concat([scores, scores])) is None  # duplicate ids


def test_big_boxes_are_sent_as_statistics():
    lengths = np.arange(1, 10_001)
    tok = pl.DataFrame({"example_id": [f"e{i}" for i in lengths], "n_tokens": lengths + 5,
                        "n_completion_tokens": lengths})  # fmt: skip
    sel = {"LESS": tok.head(10)}
    fig = plots.length_bias_figure(sel, tok, include_pool=True, max_points=1000)
    small, big = fig.data
    assert list(small.y) == list(range(1, 11))  # under the threshold: every value
    assert big.y is None and big.median == (5000.5,) and big.q1 == (np.quantile(lengths, 0.25),)
    assert big.lowerfence == (1,) and big.upperfence == (10_000,) and big.mean == (5000.5,)
    assert len(fig.to_json()) < 20_000


def test_big_scatters_are_sampled_but_rho_uses_every_point():
    n = 3000
    tok = pl.DataFrame({"example_id": [f"e{i}" for i in range(n)],
                        "n_completion_tokens": np.arange(1, n + 1)})  # fmt: skip
    ids = [f"e{i}" for i in range(n)]
    stats = pl.DataFrame({"example_id": ids, "grad_norm": 1 / np.arange(1, n + 1),
                          "feature_norm": np.ones(n)})  # fmt: skip
    fig = plots.norm_vs_length_figure(stats, tok, max_points=100)
    assert len(fig.data[0].x) == 100 and "ρ = -1.00" in fig.layout.annotations[0].text
    assert len(plots.norm_vs_length_figure(stats, tok).data[0].x) == n  # default: all


def test_many_groups_fold_into_other():
    pool = pl.DataFrame({"example_id": [f"e{i}" for i in range(100)],
                         "source": [f"src{i % 30:02d}" for i in range(100)]})  # fmt: skip
    sel = {"LESS": pool.head(40).select("example_id")}
    fig = plots.subset_distribution_figure(sel, pool, include_pool=True, max_groups=5)
    names = [t.name for t in fig.data]
    assert len(names) == 5 and scale.OTHER in names
    for m in range(2):
        assert sum(t.y[m] for t in fig.data) == pytest.approx(1.0)
    every = plots.subset_distribution_figure(sel, pool, include_pool=True, max_groups=30)
    assert len(every.data) == 30


def test_paper_scale_similarity_payload_is_compact():
    scores = scores_frame(20_000, 12)
    fig = plots.similarity_curve_figure(scores)
    payload = fig.to_json()
    assert len(payload) < 1_000_000
    trace = json.loads(payload)["data"][0]
    assert trace["y"]["dtype"] == "f4"


def test_long_tables_show_a_page_and_count_the_rest():
    from less_lab.views.html import html_table

    rows = [[str(i)] for i in range(1000)]
    table = html_table(["n"], rows, max_rows=50)
    assert table.count("<tr>") == 1 + 50 + 1 and "950 more rows" in table
    assert html_table(["n"], rows[:3]).count("<tr>") == 4
