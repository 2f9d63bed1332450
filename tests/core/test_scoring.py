"""Eq. 2 by hand, the scoring variants (mean of shots, dot product), checkpoint weights,
selection sizes and NaN handling, on stores made from hand-written matrices."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from less_lab.config import ScoreConfig, SelectConfig
from less_lab.core.scoring import aggregate, checkpoint_weights, long_frame, subtask_scores
from less_lab.core.selection import select_top, selection_size


def test_paper_score_by_hand(tmp_path, make_store):
    """Two checkpoints, two subtasks, hand-computed Eq. 2."""
    pool = [
        np.array([[1, 0, 0], [0, 2, 0], [1, 1, 0]], np.float32),
        np.array([[0, 0, 1], [0, 1, 0], [3, 0, 0]], np.float32),
    ]
    # targets: subtask "a" has shots t0, t1; subtask "b" has t2
    tgt = [
        np.array([[2, 0, 0], [0, 2, 0], [0, 0, 5]], np.float32),
        np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32),
    ]
    targets = pl.DataFrame({"example_id": ["t0", "t1", "t2"], "subtask": ["a", "a", "b"]})
    pstores = [
        make_store(tmp_path / f"p{i}", m, checkpoint={"epoch": i}) for i, m in enumerate(pool)
    ]
    tstores = [
        make_store(
            tmp_path / f"t{i}",
            m,
            ids=["t0", "t1", "t2"],
            split="target",
            feature="sgd",
            checkpoint={"epoch": i},
        )
        for i, m in enumerate(tgt)
    ]
    lrs = [3e-5, 1e-5]
    matrix, subtasks = subtask_scores(pstores, tstores, targets, lrs)
    assert subtasks == ["a", "b"]
    w = [0.75, 0.25]
    s2 = 1 / np.sqrt(2)
    # ckpt 0: mean of a = (1,1,0)/.. -> unit (s2,s2,0); b = (0,0,1)
    # ckpt 1: mean of a = (1,0,0); b = (0,1,0)
    want = np.array(
        [
            [w[0] * s2 + w[1] * 0, w[0] * 0 + w[1] * 0],  # e0: (1,0,0) / (0,0,1)
            [w[0] * s2 + w[1] * 0, w[0] * 0 + w[1] * 1],  # e1: (0,1,0) / (0,1,0)
            [w[0] * 1 + w[1] * 1, w[0] * 0 + w[1] * 0],  # e2: (s2,s2,0) / (1,0,0)
        ]
    )
    np.testing.assert_allclose(matrix, want, atol=1e-6)
    agg = aggregate(long_frame(matrix, subtasks, pstores[0].ids))
    assert agg["subtask"].to_list() == [subtasks[j] for j in want.argmax(1)]
    np.testing.assert_allclose(agg["score"], want.max(1), atol=1e-6)
    top = select_top(agg, SelectConfig(k=2))
    # e0 and e1 tie (0.75 / sqrt 2): ties keep pool order
    assert top["example_id"].to_list() == ["e2", "e0"] and top["rank"].to_list() == [1, 2]

    shots, _ = subtask_scores(pstores, tstores, targets, lrs, ScoreConfig(method="mean_of_shots"))
    # e2 at ckpt 0: cos with t0 = s2, with t1 = s2 -> mean s2; ckpt 1: 1, 1
    assert shots[2, 0] == pytest.approx(w[0] * s2 + w[1] * 1, abs=1e-6)
    dot, _ = subtask_scores(pstores, tstores, targets, lrs, ScoreConfig(method="dot"))
    # e2 at ckpt 0: (1,1,0).(1,1,0) = 2; ckpt 1: (3,0,0).(1,0,0) = 3
    assert dot[2, 0] == pytest.approx(w[0] * 2 + w[1] * 3, abs=1e-6)


def test_weights_and_selection_size():
    np.testing.assert_allclose(checkpoint_weights([2.0, 2.0]), [0.5, 0.5])
    np.testing.assert_allclose(checkpoint_weights([2.0, 1.0], normalize=False), [2.0, 1.0])
    assert selection_size(1000, SelectConfig()) == 50
    assert selection_size(1000, SelectConfig(k=7)) == 7
    assert selection_size(10, SelectConfig(fraction=0.01)) == 1
    with pytest.raises(ValueError):
        selection_size(10, SelectConfig(fraction=0.0))


def test_nan_scores_are_never_selected():
    agg = pl.DataFrame(
        {
            "example_id": ["a", "b", "c"],
            "source": ["x"] * 3,
            "subtask": ["s"] * 3,
            "score": [float("nan"), 0.1, 0.2],
        }
    )
    top = select_top(aggregate(agg), SelectConfig(k=3))
    assert top["example_id"].to_list() == ["c", "b"]
