"""Balanced selection and the selection report, checked against plain definitions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from less_lab.config import SelectConfig
from less_lab.core.scoring import aggregate, long_frame
from less_lab.core.selection import select_balanced, select_top, selection_report


def random_long(n=30, m=4, seed=0, dominant=None):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, m))
    if dominant is not None:  # one subtask scores higher for every example
        matrix[:, dominant] += 10
    ids = [f"e{i:02d}" for i in range(n)]
    subtasks = [f"s{j}" for j in range(m)]
    return long_frame(matrix, subtasks, ids, {i: f"src{int(i[1:]) % 3}" for i in ids}), matrix


def score_of(matrix, example_id, subtask):
    return matrix[int(example_id[1:]), int(subtask[1:])]


def test_max_puts_everything_in_the_dominant_subtask_round_robin_spreads_it():
    long, _ = random_long(dominant=2)
    paper = select_top(aggregate(long), SelectConfig(k=8))
    assert paper["subtask"].unique().to_list() == ["s2"]
    rr = select_balanced(long, SelectConfig(k=8))
    assert rr["subtask"].value_counts().sort("subtask")["count"].to_list() == [2, 2, 2, 2]
    assert rr["rank"].to_list() == list(range(1, 9))
    assert rr["example_id"].n_unique() == 8
    assert rr.columns == ["rank", "example_id", "source", "subtask", "score"]


@pytest.mark.parametrize("seed", range(5))
def test_round_robin_is_greedy_per_subtask(seed):
    """Every pick is its subtask's best example among those not picked before it, and the
    subtasks' counts differ by at most one."""
    long, matrix = random_long(seed=seed)
    k = 11
    rr = select_balanced(long, SelectConfig(k=k))
    taken: set[str] = set()
    for eid, sub, score in rr.select("example_id", "subtask", "score").iter_rows():
        j = int(sub[1:])
        free = [i for i in range(matrix.shape[0]) if f"e{i:02d}" not in taken]
        assert score == pytest.approx(matrix[free, j].max())
        assert score == pytest.approx(score_of(matrix, eid, sub))
        taken.add(eid)
    counts = rr["subtask"].value_counts()["count"]
    assert counts.max() - counts.min() <= 1 and rr.height == k


@pytest.mark.parametrize("seed", range(5))
def test_cap_is_greedy_over_pairs(seed):
    """Each pick is the best (example, subtask) pair whose example is untaken and whose
    subtask is not yet full; no subtask exceeds the cap."""
    long, matrix = random_long(seed=seed)
    cap, k = 3, 10
    sel = select_balanced(long, SelectConfig(k=k), mode="cap", cap=cap)
    taken: set[int] = set()
    counts = np.zeros(matrix.shape[1], int)
    for eid, sub, score in sel.select("example_id", "subtask", "score").iter_rows():
        allowed = [
            matrix[i, j]
            for i in range(matrix.shape[0])
            for j in range(matrix.shape[1])
            if i not in taken and counts[j] < cap
        ]
        assert score == pytest.approx(max(allowed))
        taken.add(int(eid[1:]))
        counts[int(sub[1:])] += 1
    assert counts.max() <= cap and sel.height == k


def test_cap_at_least_k_and_one_subtask_reduce_to_the_paper_max():
    long, _ = random_long(seed=3)
    paper = select_top(aggregate(long), SelectConfig(k=9))
    capped = select_balanced(long, SelectConfig(k=9), mode="cap", cap=9)
    assert capped.drop("rank").equals(paper.drop("rank"))
    single = long.filter(pl.col("subtask") == "s1")
    rr = select_balanced(single, SelectConfig(k=9))
    assert rr.equals(select_top(aggregate(single), SelectConfig(k=9)))


def test_default_cap_nan_and_errors():
    long, _ = random_long(dominant=0)
    sel = select_balanced(long, SelectConfig(k=10), mode="cap")  # cap = ceil(10 / 4) = 3
    assert sel["subtask"].value_counts()["count"].max() == 3
    with pytest.raises(ValueError, match="cannot hold"):
        select_balanced(long, SelectConfig(k=10), mode="cap", cap=2)
    with pytest.raises(ValueError, match="unknown balanced mode"):
        select_balanced(long, SelectConfig(k=3), mode="max")
    nan = long.with_columns(
        pl.when(pl.col("example_id") == "e00")
        .then(float("nan"))
        .otherwise(pl.col("score"))
        .alias("score")
    )
    for mode in ("round_robin", "cap"):
        picked = select_balanced(nan, SelectConfig(k=29), mode=mode, cap=29)
        assert "e00" not in picked["example_id"].to_list() and picked.height == 29


def test_selection_report_by_hand():
    pool = pl.DataFrame(
        {"example_id": [f"e{i}" for i in range(10)], "source": ["a"] * 6 + ["b"] * 4}
    )
    tok = pool.select("example_id").with_columns(
        pl.Series("n_completion_tokens", [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),
        pl.Series("n_tokens", [100] * 10),
        pl.Series("n_prompt_tokens_cut", [0] * 9 + [5]),
    )
    selected = pl.DataFrame(
        {"example_id": ["e0", "e1", "e2", "e9"], "subtask": ["x", "x", "x", "y"]}
    )
    rep = selection_report(selected, pool, tok, subtasks=["x", "y", "z"])
    assert rep.subtasks.select("subtask", "n").rows() == [("x", 3), ("y", 1), ("z", 0)]
    src = {r["source"]: r for r in rep.sources.iter_rows(named=True)}
    assert src["a"]["share_selected"] == pytest.approx(0.75)
    assert src["b"]["share_pool"] == pytest.approx(0.4)
    assert src["b"]["ratio"] == pytest.approx(0.25 / 0.4)
    lengths = {r["stat"]: r for r in rep.lengths.iter_rows(named=True)}
    mean = lengths["n_completion_tokens mean"]
    assert (mean["pool"], mean["selected"]) == (55.0, 40.0)
    assert lengths["share with prompt cut"]["selected"] == pytest.approx(0.25)
    assert any("3 of 4 picks are for one subtask" in w for w in rep.warnings)
    assert not any("length" in w for w in rep.warnings)  # 40/55 = 0.73 is within bounds
    short = selection_report(selected.head(2), pool, tok, max_source_shift=0.3)
    assert any("completion length" in w for w in short.warnings)  # 15 vs 55
    # 100% a vs 60% a: total variation 0.4
    assert any("source mix differs from the pool by 40%" in w for w in short.warnings)
    assert not selection_report(selected.head(2), pool, tok).warnings[1:]
    assert "selection of 4" in rep.text() and "WARNING" in rep.text()
    assert "WARNING" not in rep.text(warnings=False)
