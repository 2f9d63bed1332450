"""Datastore round trip, resume, refusal of mismatched settings, corruption; scoring by hand."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from less_lab.config import ScoreConfig, SelectConfig
from less_lab.core.datastore import build_store, open_store
from less_lab.core.scoring import aggregate, checkpoint_weights, long_frame, subtask_scores
from less_lab.core.selection import select_top, selection_size
from less_lab.errors import SettingsMismatchError

SETTINGS = {
    "split": "pool",
    "feature": "adam",
    "dim": 3,
    "dtype": "float32",
    "projection": {"kind": "none"},
    "model": "m",
    "checkpoint": {"epoch": 1},
}


def _compute(matrix: np.ndarray, batch: int = 2, calls: list | None = None):
    def compute(rows):
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            if calls is not None:
                calls.extend(part)
            x = torch.as_tensor(matrix[part], dtype=torch.float32)
            norm = x.norm(dim=1)
            yield SimpleNamespace(
                rows=part, features=x, loss=norm * 0 + 1, grad_norm=norm, feature_norm=norm
            )

    return compute


def make_store(path, matrix, ids=None, **settings):
    ids = ids or [f"e{i}" for i in range(len(matrix))]
    return build_store(
        path,
        {**SETTINGS, "dim": matrix.shape[1], **settings},
        ids,
        _compute(matrix),
        progress=False,
    )


def test_round_trip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    store = make_store(tmp_path / "s", x)
    again = open_store(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(again.features), x)
    assert again.ids == ["e0", "e1", "e2", "e3"]
    np.testing.assert_allclose(again.stats["grad_norm"], np.linalg.norm(x, axis=1), rtol=1e-6)
    assert store.meta["n"] == 4 and store.meta["format_version"] == 1


def test_reuse_with_other_settings_is_refused_naming_both(tmp_path):
    x = np.ones((2, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    with pytest.raises(SettingsMismatchError) as err:
        make_store(tmp_path / "s", x, projection={"kind": "sparse_sign", "seed": 1})
    assert "'kind': 'none'" in str(err.value) and "'sparse_sign'" in str(err.value)
    with pytest.raises(SettingsMismatchError, match="model"):
        open_store(tmp_path / "s", {"model": "other"})


def test_missing_meta_means_incomplete_and_resume_computes_only_missing_rows(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    path = tmp_path / "s"

    def crashing(rows):
        for i, out in enumerate(_compute(x)(rows)):
            if i == 2:
                raise KeyboardInterrupt
            yield out

    with pytest.raises(KeyboardInterrupt):
        build_store(path, SETTINGS, [f"e{i}" for i in range(7)], crashing, progress=False)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_store(path)
    calls: list[int] = []
    store = build_store(
        path, SETTINGS, [f"e{i}" for i in range(7)], _compute(x, calls=calls), progress=False
    )
    assert sorted(calls) == [4, 5, 6]  # rows 0-3 were done before the crash
    np.testing.assert_array_equal(np.asarray(store.features), x)


def test_corruption_and_truncation_are_detected(tmp_path):
    x = np.ones((3, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    feats = tmp_path / "s" / "features.bin"
    data = bytearray(feats.read_bytes())
    data[5] ^= 0xFF
    feats.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        open_store(tmp_path / "s")
    feats.write_bytes(bytes(data[:-4]))
    with pytest.raises(ValueError, match="size"):
        open_store(tmp_path / "s")


def test_nonfinite_rows_are_reported(tmp_path):
    x = np.ones((3, 3), dtype=np.float32)
    x[1, 2] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        store = make_store(tmp_path / "s", x)
    assert store.meta["nonfinite_ids"] == ["e1"]


def test_paper_score_by_hand(tmp_path):
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


def test_meta_json_is_written_last(tmp_path):
    x = np.ones((2, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["crc32"] and meta["n"] == 2
