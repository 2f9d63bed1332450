"""The selection remedies against their plain definitions: scale-free aggregation across
subtasks (z-score, rank, round robin), length-matched quotas and near-duplicate
suppression (brute force over every pair), and the settings that name them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from less_lab.config import GradientConfig, SelectConfig, fingerprint, to_dict
from less_lab.core.scoring import aggregate, long_frame
from less_lab.core.selection import select_balanced
from less_lab.core.shaping import bin_quotas, length_bin_of, shape_top
from less_lab.errors import ConfigError
from less_lab.overrides import REMEDIES, build_configs, remedy_settings


def _scale_dominated(n: int = 40, seed: int = 0) -> tuple[np.ndarray, pl.DataFrame]:
    """Subtask a's scores run ~10x higher than b's: the paper's max gives a every pick."""
    rng = np.random.default_rng(seed)
    m = np.c_[rng.normal(0.12, 0.01, n), rng.normal(0.012, 0.001, n)]
    return m, long_frame(m, ["a", "b"], [f"e{i}" for i in range(n)])


def test_zscore_and_rank_by_hand():
    m, long = _scale_dominated()
    assert set(aggregate(long, "max")["subtask"]) == {"a"}  # the problem
    z = (m - m.mean(0)) / m.std(0, ddof=1)
    agg = aggregate(long, "zscore")
    np.testing.assert_allclose(agg["score"], z.max(1), rtol=1e-9)
    assert agg["subtask"].to_list() == [["a", "b"][j] for j in z.argmax(1)]
    ranks = np.argsort(np.argsort(m, 0), 0) + 1  # no ties in continuous data
    np.testing.assert_allclose(aggregate(long, "rank")["score"], (ranks / len(m)).max(1))


def test_round_robin_order_matches_balanced_selection():
    _, long = _scale_dominated()
    agg = aggregate(long, "round_robin")
    assert agg.height == 40 and agg["score"].is_not_null().all()
    order = agg.sort("score", descending=True)
    for k in (1, 2, 7, 40):
        want = select_balanced(long, SelectConfig(k=k), mode="round_robin")
        assert order["example_id"].head(k).to_list() == want["example_id"].to_list()
    assert order["subtask"].head(4).to_list() == ["a", "b", "a", "b"]


def test_aggregates_keep_nan_rows_unselectable():
    m, _ = _scale_dominated(10)
    m[3] = np.nan
    long = long_frame(m, ["a", "b"], [f"e{i}" for i in range(10)])
    for how in ("zscore", "rank", "round_robin"):
        agg = aggregate(long, how)
        assert agg["example_id"].to_list() == [f"e{i}" for i in range(10)]  # pool order
        assert agg.filter(pl.col("example_id") == "e3")["score"].is_null().all()
    with pytest.raises(ValueError, match="zscore"):
        aggregate(long, "median")


def test_length_quotas_follow_the_pool():
    lengths = np.r_[np.full(50, 5), np.full(30, 40), np.full(20, 200)]
    bins = length_bin_of(lengths, 3)
    assert np.bincount(bins).tolist() == [50, 30, 20]
    assert bin_quotas(bins, 10).tolist() == [5, 3, 2]
    assert bin_quotas(bins, 7).sum() == 7  # largest remainder keeps the total


def test_length_matched_selection_by_brute_force():
    rng = np.random.default_rng(1)
    n, k = 100, 10
    ids = [f"e{i}" for i in range(n)]
    length = rng.integers(1, 300, n)
    score = -length + rng.normal(0, 5, n)  # short completions score highest (length bias)
    agg = pl.DataFrame({"example_id": ids, "source": "s", "subtask": "a", "score": score})
    lengths = pl.DataFrame({"example_id": ids, "n_completion_tokens": length})
    plain = shape_top(agg, SelectConfig(k=k))
    shaped = shape_top(agg, SelectConfig(k=k, length_bins=5), lengths=lengths)
    assert (
        plain["example_id"].to_list()
        == agg.sort("score", descending=True)["example_id"][:k].to_list()
    )
    bins = length_bin_of(length, 5)
    quota = bin_quotas(bins, k)
    got = np.bincount(bins[[ids.index(e) for e in shaped["example_id"]]], minlength=5)
    assert got.tolist() == quota.tolist()
    for b in range(5):  # within each bin: exactly that bin's best-scored examples
        in_bin = [i for i in np.argsort(-score) if bins[i] == b][: quota[b]]
        chosen = {ids.index(e) for e in shaped["example_id"]} & set(np.flatnonzero(bins == b))
        assert chosen == set(in_bin)
    assert shaped["score"].is_sorted(descending=True) and shaped["rank"].to_list() == list(
        range(1, k + 1)
    )


def test_near_duplicates_suppressed_by_brute_force():
    rng = np.random.default_rng(2)
    n, k, thr = 60, 8, 0.9
    base = rng.normal(size=(6, 16))
    x = base[rng.integers(0, 6, n)] + rng.normal(0, 0.2, (n, 16))  # clusters of near-copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"e{i}" for i in range(n)]
    score = rng.normal(size=n)
    agg = pl.DataFrame({"example_id": ids, "source": "s", "subtask": "a", "score": score})

    def rows(sel_ids):
        return x[[ids.index(e) for e in sel_ids]]

    got = shape_top(agg, SelectConfig(k=k, max_similarity=thr), features=rows, chunk=7)
    want: list[int] = []
    for i in np.argsort(-score):  # the plain definition: greedy over every pair
        if all(x[i] @ x[j] <= thr for j in want):
            want.append(int(i))
        if len(want) == k:
            break
    assert got["example_id"].to_list() == [ids[i] for i in sorted(want, key=lambda i: -score[i])]
    sims = rows(got["example_id"]) @ rows(got["example_id"]).T
    assert (sims[np.triu_indices(len(got), 1)] <= thr).all()
    with pytest.raises(ValueError, match="features"):
        shape_top(agg, SelectConfig(k=k, max_similarity=thr))


def test_remedy_settings_are_validated_config():
    assert SelectConfig(length_bins=0).shaped is False
    with pytest.raises(ConfigError, match="length_bins"):
        SelectConfig(length_bins=1)
    with pytest.raises(ConfigError, match="max_similarity"):
        SelectConfig(max_similarity=1.5)
    with pytest.raises(ConfigError, match="remedy 'nope'"):
        remedy_settings(["nope"])
    for name in REMEDIES:  # every named remedy builds valid configs
        build_configs(remedies=[name])
    c = build_configs(remedies=["zscore", "length_matched"])
    assert c["scoring"].aggregate == "zscore" and c["select"].length_bins == 5


def test_store_names_ignore_the_other_splits_tokens():
    paper = GradientConfig()
    legacy = {k: v for k, v in to_dict(paper).items() if not k.endswith("_tokens")}
    assert paper.store_key("pool") == legacy == paper.store_key("mmlu")  # names unchanged
    content_t = GradientConfig(target_tokens="content")
    assert fingerprint(content_t.store_key("pool")) == fingerprint(paper.store_key("pool"))
    assert fingerprint(content_t.store_key("mmlu")) != fingerprint(paper.store_key("mmlu"))
    both = GradientConfig(target_tokens="content", pool_tokens="content")
    assert fingerprint(both.store_key("pool")) != fingerprint(paper.store_key("pool"))
