"""The remedies through the Lab on the tiny model: each is a variant with its own folder,
the target-only token remedy reuses the pool stores, the shaped selections obey their
rules, and CoLoR-Filter's loss drop scores without a gradient store."""

from __future__ import annotations

import numpy as np
import pytest

from less_lab.config import ScoreConfig, SelectConfig
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.lab import Lab


@pytest.fixture
def lab(tmp_path, make_tiny_lab) -> Lab:
    lab = make_tiny_lab(tmp_path / "run")
    lab.set_pool(demo_pool().head(40))
    lab.add_target("demo", demo_targets())
    return lab


def test_each_remedy_is_a_named_variant(lab):
    paper = lab.select("demo")
    names = {
        "zscore": "demo-zscore-",
        "round_robin": "demo-round_robin-",
        "content_targets": "demo-tokens-content-all-",
        "length_matched": "demo-len5-",
        "dedup": "demo-dedup0.9-",
    }
    for remedy, prefix in names.items():
        variant = lab.with_remedies(remedy)
        sel = variant.select("demo")
        assert sel.directory.name.startswith(prefix), (remedy, sel.directory.name)
        assert sel.directory != paper.directory and len(sel) == 5
    assert lab.selection_dir("demo") == paper.directory  # the paper's folder is unchanged


def test_round_robin_spreads_over_subtasks(lab):
    sel = lab.with_remedies("round_robin").select("demo")
    assert sel.frame["subtask"].head(3).n_unique() == 3
    assert sel.frame["score"].is_sorted(descending=True)


def test_content_targets_rebuilds_only_target_stores(lab):
    lab.select("demo")
    pool_dirs, target_dirs = lab.store_dirs("pool"), lab.store_dirs("demo")
    variant = lab.with_remedies("content_targets")
    assert variant.store_dirs("pool") == pool_dirs  # reused: no pool re-extraction
    assert variant.store_dirs("demo") != target_dirs
    before = np.asarray(lab.datastore("demo")[-1].features)
    after = np.asarray(variant.datastore("demo")[-1].features)
    assert not np.allclose(before, after)  # the EOS left the target gradients
    both = lab.with_remedies("content_tokens")
    assert both.store_dirs("pool") != pool_dirs


def test_length_matched_selection_keeps_the_pool_mix(lab):
    variant = lab.with_remedies("length_matched")
    assert variant.select_cfg.length_bins == 5
    sel = variant.with_config(select=SelectConfig(k=10, length_bins=2)).select("demo")
    tok = lab.tokenized("pool").select("example_id", "n_completion_tokens")
    median = tok["n_completion_tokens"].median()
    chosen = sel.frame.join(tok, on="example_id")
    short = int((chosen["n_completion_tokens"] <= median).sum())
    pool_short = float((tok["n_completion_tokens"] <= median).mean())
    assert short == round(pool_short * 10)


def test_dedup_selection_has_no_near_copies(lab):
    variant = lab.with_remedies("dedup")
    sel = variant.select("demo")
    stores = lab.datastore("pool")
    index = {e: i for i, e in enumerate(stores[0].ids)}
    rows = [index[e] for e in sel.frame["example_id"]]
    w = np.array([c.lr for c in lab.checkpoints()])
    w = w / w.sum()
    sim = 0
    for s, wi in zip(stores, w, strict=True):
        x = np.asarray(s.features)[rows]
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = sim + wi * (x @ x.T)
    assert (sim[np.triu_indices(len(rows), 1)] <= 0.9 + 1e-6).all()


def test_loss_drop_scores_through_the_lab(lab):
    variant = lab.with_remedies("loss_drop")
    long = variant.subtask_scores("demo")
    assert long["subtask"].unique().to_list() == ["all"]
    assert long.height == 40 and long["score"].is_finite().all()
    sel = variant.select("demo")
    assert sel.directory.name.startswith("demo-loss_drop-") and sel.reliability is None
    assert (lab.run_dir / "loss_drop" / "demo" / "e3-lr0.0001" / "loss_drop.json").exists()


def test_subspace_scores_through_the_lab(lab):
    """``--remedy subspace``: the cone scorer on the lab's stores, its own selection
    folder, split-half reliability measured with the same scorer. The cone holds every
    shot, so its cosine is at least the best shot's and hence the mean of shots', and at
    most 1."""
    variant = lab.with_remedies("subspace")
    assert variant.score_cfg.method == "subspace"
    cone = variant.subtask_scores("demo").sort("example_id", "subtask")
    shots = lab.with_config(scoring=ScoreConfig(method="mean_of_shots"))
    mean = shots.subtask_scores("demo").sort("example_id", "subtask")
    assert cone["example_id"].to_list() == mean["example_id"].to_list()
    assert (cone["score"] >= mean["score"] - 1e-9).all() and (cone["score"] <= 1 + 1e-9).all()
    sel = variant.select("demo")
    assert sel.directory.name.startswith("demo-subspace-") and sel.reliability is not None
