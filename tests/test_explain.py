"""``less_lab.explain`` on a tiny Lab: token contributions of target examples, and the
score decomposition against the run's own exact (unprojected) scores and stores."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from less_lab import explain
from less_lab.core.contributions import module_summary
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.model.lora import lora_modules

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def exact_lab(tmp_path, make_tiny_lab):
    """A tiny run on 30 demo pool rows and the demo targets, unprojected features."""
    lab = make_tiny_lab(tmp_path / "run")
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    return lab.exact()


def test_token_contributions_of_a_multiple_choice_target(exact_lab):
    lab = exact_lab
    ids = lab.tokenized("demo").filter(pl.col("subtask") == "capitals_mc")["example_id"]
    contrib = explain.token_contributions(lab, "demo", [ids[1], ids[0]], checkpoint=0)
    assert contrib["example_id"].unique(maintain_order=True).to_list() == [ids[1], ids[0]]
    assert set(contrib["checkpoint"]) == {lab.checkpoints()[0].epoch}
    for ex in (ids[0], ids[1]):
        rows = contrib.filter(pl.col("example_id") == ex)
        labels = lab.tokenized("demo").filter(pl.col("example_id") == ex)["labels"][0]
        assert rows.height == int((labels.to_numpy()[1:] != -100).sum())
        assert rows["projection_share"].sum() == pytest.approx(1.0, abs=1e-4)
        assert rows["kind"][-1] == "eos" and rows["token"][-1] == lab.tokenizer.eos_token
    last = explain.token_contributions(lab, "demo", ids[0])  # a single id, last checkpoint
    assert set(last["checkpoint"]) == {lab.checkpoints()[-1].epoch}
    assert not np.allclose(
        last["projection_share"].to_numpy(),
        contrib.filter(pl.col("example_id") == ids[0])["projection_share"].to_numpy(),
    )  # another adapter, other gradients


def test_token_contributions_refusals(exact_lab):
    with pytest.raises(ValueError, match="name the pool examples"):
        explain.token_contributions(exact_lab, "pool")
    with pytest.raises(KeyError, match="no-such-id"):
        explain.token_contributions(exact_lab, "demo", ["no-such-id"])
    with pytest.raises(IndexError, match="2 checkpoints"):
        explain.token_contributions(exact_lab, "demo", "capitals_mc_1", checkpoint=5)


def _store_cosines(lab, example_id: str, subtask: str) -> list[float]:
    """Per checkpoint: cos(mean target feature of the subtask, pool feature), read from
    the run's own unprojected stores (what the scorer multiplies)."""
    subtask_ids = set(lab.targets["demo"].filter(pl.col("subtask") == subtask)["example_id"])
    out = []
    for pool, target in zip(lab.datastore("pool"), lab.datastore("demo"), strict=True):
        x = np.asarray(pool.features[pool.ids.index(example_id)], dtype=np.float64)
        rows = [i for i, e in enumerate(target.ids) if e in subtask_ids]
        g = np.asarray(target.features[rows], dtype=np.float64).mean(0)
        out.append(float(x @ g / np.linalg.norm(x) / np.linalg.norm(g)))
    return out


def test_score_decomposition_adds_up_to_the_exact_score(exact_lab):
    lab = exact_lab
    scores = lab.subtask_scores("demo")
    example_id = scores["example_id"][7]
    mine = scores.filter(pl.col("example_id") == example_id).sort("score", descending=True)
    decomp = explain.score_decomposition(lab, "demo", example_id)
    assert set(decomp["subtask"]) == {mine["subtask"][0]}  # the best subtask by default
    exact = mine["score"][0]
    assert decomp["projected_score"].to_list() == [exact] * decomp.height
    assert decomp["term"].sum() == pytest.approx(exact, rel=1e-4, abs=1e-7)
    per_ckpt = decomp.group_by("checkpoint", maintain_order=True).agg(
        pl.col("cosine_term").sum(), pl.col("weight").first(), pl.len()
    )
    assert per_ckpt["checkpoint"].to_list() == [c.epoch for c in lab.checkpoints()]
    n_modules = len(lora_modules(lab.model))  # tiny Llama: 2 layers x q, k, v, o
    assert per_ckpt["len"].to_list() == [n_modules] * 2 and n_modules == 8
    assert per_ckpt["weight"].sum() == pytest.approx(1.0)
    cosines = _store_cosines(lab, example_id, mine["subtask"][0])
    assert per_ckpt["cosine_term"].to_list() == pytest.approx(cosines, rel=1e-4, abs=1e-7)
    summary = module_summary(decomp)
    assert summary["share"].sum() == pytest.approx(1.0)
    assert summary["term"].sum() == pytest.approx(decomp["term"].sum())


def test_score_decomposition_of_a_named_subtask(exact_lab):
    lab = exact_lab
    scores = lab.subtask_scores("demo")
    example_id = scores["example_id"][0]
    worst = scores.filter(pl.col("example_id") == example_id).sort("score")[0]
    decomp = explain.score_decomposition(lab, "demo", example_id, subtask=worst["subtask"][0])
    assert decomp["term"].sum() == pytest.approx(worst["score"][0], rel=1e-4, abs=1e-7)
    with pytest.raises(KeyError, match="no subtask"):
        explain.score_decomposition(lab, "demo", example_id, subtask="nope")
