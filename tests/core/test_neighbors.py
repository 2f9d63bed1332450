"""Per-target nearest pool examples (LESS, BM25, RDS) against hand computations and the
scorers they must agree with."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

import less_lab.model.lora  # noqa: F401  (RDS imports it lazily; slow first import)
from less_lab.config import DataConfig, ScoreConfig
from less_lab.core.baseline_common import example_text, word_tokens
from less_lab.core.baseline_rds import rds_scores
from less_lab.core.datastore import build_store
from less_lab.core.neighbors import (
    bm25_neighbors,
    less_neighbors,
    less_similarities,
    one_target,
    rds_neighbors,
    top_k,
)
from less_lab.core.scoring import subtask_scores

SETTINGS = {"dim": 3, "dtype": "float32", "projection": {"kind": "none"}, "model": "m"}


def _compute(matrix: np.ndarray):
    def compute(rows):
        x = torch.as_tensor(matrix[rows], dtype=torch.float32)
        yield SimpleNamespace(
            rows=rows,
            features=x,
            loss=x[:, 0] * 0,
            grad_norm=x.norm(dim=1),
            feature_norm=x.norm(dim=1),
        )

    return compute


def _store(path, matrix, ids, split, epoch):
    settings = {
        **SETTINGS,
        "split": split,
        "feature": "adam" if split == "pool" else "sgd",
        "checkpoint": {"epoch": epoch},
    }
    return build_store(
        path, settings, ids, _compute(np.asarray(matrix, np.float32)), progress=False
    )


@pytest.fixture
def stores(tmp_path):
    pool = [
        [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 2]],
        [[0, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]],
    ]
    target = [[[1, 0, 0], [0, 0, 1]], [[0, 2, 0], [1, 0, 0]]]
    ids, tids = ["p0", "p1", "p2", "p3"], ["t0", "t1"]
    p = [_store(tmp_path / f"p{e}", pool[e], ids, "pool", e) for e in range(2)]
    t = [_store(tmp_path / f"t{e}", target[e], tids, "target", e) for e in range(2)]
    return p, t


def test_less_neighbors_hand_computed(stores):
    pool, target = stores
    # weights 0.75/0.25; t0: p0 .75+.25=1, p1 0+.25, p2 .75/sqrt2+0, p3 0+0
    out = less_neighbors(pool, target, [3e-5, 1e-5], "t0", k=3)
    assert out.columns == ["example_id", "score", "rank"]
    assert out["example_id"].to_list() == ["p0", "p2", "p1"]
    np.testing.assert_allclose(out["score"], [1.0, 0.75 / math.sqrt(2), 0.25], rtol=1e-6)
    assert out["rank"].to_list() == [1, 2, 3]
    # t1 = [0,0,1] then [1,0,0]: p3 .75*1 + .25*1 = 1; p0 .25; p1, p2 0
    out1 = less_neighbors(pool, target, [3e-5, 1e-5], "t1", k=2)
    assert out1["example_id"].to_list() == ["p3", "p0"]
    raw = less_similarities(pool, target, [3e-5, 1e-5], "t0", normalize_lr=False)
    np.testing.assert_allclose(raw, [4e-5, 1e-5, 3e-5 / math.sqrt(2), 0], rtol=1e-6)
    with pytest.raises(KeyError, match="t9"):
        less_neighbors(pool, target, [1, 1], "t9")


def test_less_neighbors_equal_eq2_scores_with_the_target_as_its_own_subtask(stores):
    pool, target = stores
    targets = pl.DataFrame({"example_id": ["t0", "t1"], "subtask": ["only_t0", "rest"]})
    matrix, subtasks = subtask_scores(pool, target, targets, [2.0, 1.0], ScoreConfig())
    mine = less_similarities(pool, target, [2.0, 1.0], "t0")
    np.testing.assert_allclose(mine, matrix[:, subtasks.index("only_t0")], rtol=1e-6)


def test_top_k_drops_nan_and_keeps_id_order_on_ties():
    out = top_k(["a", "b", "c", "d"], [0.5, float("nan"), 0.5, 0.9], k=10)
    assert out["example_id"].to_list() == ["d", "a", "c"]


def _frame(texts, answers, prefix, subtasks=None):
    rows = []
    for i, (q, a) in enumerate(zip(texts, answers, strict=True)):
        row = {
            "example_id": f"{prefix}{i}",
            "source": "s",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        if subtasks:
            row["subtask"] = subtasks[i]
        rows.append(row)
    return pl.DataFrame(rows)


POOL_TEXTS = [
    "the cat sat on the mat",
    "dogs bark loudly",
    "a cat and a dog",
    "birds fly high",
    "numbers add up",
]
POOL_ANSWERS = ["yes", "no", "maybe", "up", "four"]


def test_bm25_neighbors_match_rank_bm25_for_the_one_target_query():
    from rank_bm25 import BM25Okapi

    pool = _frame(POOL_TEXTS, POOL_ANSWERS, "p")
    targets = _frame(["where is the cat", "birds"], ["on the mat", "fly"], "t", ["x", "x"])
    out = bm25_neighbors(pool, targets, "t0", k=3)
    index = BM25Okapi([word_tokens(example_text(m)) for m in pool["messages"].to_list()])
    query = word_tokens(example_text(targets["messages"][0].to_list()))
    expected = index.get_scores(query)
    order = np.argsort(-expected, kind="stable")[:3]
    assert out["example_id"].to_list() == [f"p{i}" for i in order]
    np.testing.assert_allclose(out["score"], expected[order], rtol=1e-9)
    assert one_target(targets, "t1")["subtask"].to_list() == ["t1"]


def test_rds_neighbors_equal_rds_scores_of_a_one_example_target(tiny_model, tiny_tokenizer):
    from less_lab.core.baseline_rds import last_token_states

    cfg = DataConfig(max_length=64)
    pool = _frame(POOL_TEXTS, POOL_ANSWERS, "p")
    targets = _frame(["where is the cat", "birds"], ["on the mat", "fly"], "t", ["x", "x"])
    out = rds_neighbors(tiny_model, tiny_tokenizer, pool, targets, "t1", k=5, data_cfg=cfg)
    ref = rds_scores(
        tiny_model, tiny_tokenizer, pool, one_target(targets, "t1"), data_cfg=cfg, progress=False
    ).sort("score", descending=True)
    assert out["example_id"].to_list() == ref["example_id"].to_list()
    np.testing.assert_allclose(out["score"], ref["score"], rtol=1e-5, atol=1e-6)
    states = last_token_states(tiny_model, tiny_tokenizer, pool, data_cfg=cfg, progress=False)
    again = rds_neighbors(
        tiny_model, tiny_tokenizer, pool, targets, "t1", k=2, data_cfg=cfg, pool_states=states
    )
    assert again["example_id"].to_list() == out["example_id"].to_list()[:2]
