"""``subspace`` scoring: the cosine with the cone of a subtask's target shots, checked
against brute force over every support set of the non-negative least squares problem."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from less_lab.config import ScoreConfig
from less_lab.core.cone import cone_cosines
from less_lab.core.scoring import subtask_scores, unit_rows


def brute_cone_cosine(u: np.ndarray, shots: np.ndarray) -> float:
    """max over v in cone(shots), |v| = 1, of cos(u, v), by the definition: the squared
    projection length is the best ``a_S . b_S`` over support sets S whose least-squares
    coefficients are all >= 0; when none is positive, the best shot's cosine."""
    u = u / np.linalg.norm(u)
    t = unit_rows(shots[np.linalg.norm(shots, axis=1) > 0])
    b = t @ u
    best = 0.0
    for size in range(1, len(t) + 1):
        for s in itertools.combinations(range(len(t)), size):
            ts = t[list(s)]
            a, *_ = np.linalg.lstsq(ts.T, u, rcond=None)
            if (a >= -1e-12).all():
                best = max(best, float(a @ ts @ u))
    return np.sqrt(best) if best > 1e-12 else float(b.max())


def _cases(rng):
    d = 12
    yield rng.normal(size=(40, d)), rng.normal(size=(3, d))  # generic
    shots = rng.normal(size=(4, d))
    yield -shots[:2].sum(0, keepdims=True) + 0.01 * rng.normal(size=(5, d)), shots  # polar
    base = rng.normal(size=(2, d))
    yield rng.normal(size=(30, d)), np.stack([base[0], 3 * base[0], base[1]])  # duplicate
    yield rng.normal(size=(30, d)), np.stack([base[0], 0 * base[0], base[1]])  # zero shot
    yield rng.normal(size=(30, d)), rng.normal(size=(1, d))  # one shot


def test_cone_cosines_match_brute_force():
    rng = np.random.default_rng(0)
    for pool, shots in _cases(rng):
        t = unit_rows(shots)
        b = unit_rows(pool) @ t.T
        got = cone_cosines(b, t @ t.T)
        want = [brute_cone_cosine(u, shots) for u in pool]
        np.testing.assert_allclose(got, want, atol=1e-7)


def test_cone_is_the_best_nonnegative_mix_and_one_shot_is_the_cosine():
    rng = np.random.default_rng(1)
    pool, shots = rng.normal(size=(20, 8)), rng.normal(size=(3, 8))
    t = unit_rows(shots)
    got = cone_cosines(unit_rows(pool) @ t.T, t @ t.T)
    mixes = unit_rows(rng.random(size=(20_000, 3)) @ t)  # random points of the cone
    sampled = (unit_rows(pool) @ mixes.T).max(1)
    assert (got >= sampled - 1e-9).all() and np.allclose(got, sampled, atol=5e-3)
    one = cone_cosines(unit_rows(pool) @ t[:1].T, t[:1] @ t[:1].T)
    np.testing.assert_allclose(one, unit_rows(pool) @ t[0], atol=1e-12)
    # the span would score an opposing gradient as high as an aligned one; the cone does not
    pair = np.stack([t[0], -t[0]])
    assert cone_cosines(pair @ t[:1].T, t[:1] @ t[:1].T).tolist() == pytest.approx([1, -1])


def test_subspace_scores_are_the_cone_cosines_of_the_stores(tmp_path, make_store):
    """The streamed scorer (chunks of 7 rows) equals the definition on dense features:
    per checkpoint and subtask the cone cosine, weighted by the checkpoints' lrs; and it
    does not change when a shot's gradient is rescaled."""
    rng = np.random.default_rng(2)
    pools = [rng.normal(size=(23, 10)).astype(np.float32) for _ in range(2)]
    tgts = [rng.normal(size=(5, 10)).astype(np.float32) for _ in range(2)]
    ids = [f"t{i}" for i in range(5)]
    subtask = ["a", "a", "a", "b", "b"]
    targets = pl.DataFrame({"example_id": ids, "subtask": subtask})
    lrs = [2e-5, 1e-5]

    def scores(tg, name):
        ps = [
            make_store(tmp_path / f"{name}p{i}", m, checkpoint={"epoch": i})
            for i, m in enumerate(pools)
        ]
        ts = [
            make_store(
                tmp_path / f"{name}t{i}",
                m,
                ids=ids,
                split="target",
                feature="sgd",
                checkpoint={"epoch": i},
            )
            for i, m in enumerate(tg)
        ]
        cfg = ScoreConfig(method="subspace", chunk_rows=7)
        return subtask_scores(ps, ts, targets, lrs, cfg)

    got, subtasks = scores(tgts, "x")
    assert subtasks == ["a", "b"]
    w = np.array(lrs) / sum(lrs)
    sel = {"a": [0, 1, 2], "b": [3, 4]}
    want = np.array(
        [
            [
                sum(w[c] * brute_cone_cosine(pools[c][r], tgts[c][sel[s]]) for c in range(2))
                for s in subtasks
            ]
            for r in range(23)
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    rescaled = [m * np.array([[3], [0.5], [1], [7], [1]], np.float32) for m in tgts]
    np.testing.assert_allclose(scores(rescaled, "y")[0], got, atol=1e-6)
