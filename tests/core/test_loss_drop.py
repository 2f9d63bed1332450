"""CoLoR-Filter's loss-drop scorer (Brandfonbrener et al. 2024) on the tiny model: losses
equal the model's own, training on the targets lowers their loss, a copy of a target
scores high, and the cache is reused but never with other settings (seconds)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from less_lab import ScoreConfig
from less_lab.core import loss_drop
from less_lab.core.loss_drop import (
    CONDITIONAL_LOSSES,
    PRIOR_LOSSES,
    example_losses_of,
    loss_drop_scores,
    train_conditional,
)
from less_lab.core.scoring import SCORE_SCHEMA
from less_lab.core.training import load_adapter, load_optimizer_state, train_lora
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.errors import SettingsMismatchError
from less_lab.model.lora import canonical_name

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ScoreConfig(method="loss_drop", loss_drop_epochs=3, loss_drop_lr=1e-2)
"""A learning rate the tiny model moves with in a few steps."""

COLUMNS = ["example_id", "input_ids", "labels", "n_tokens", "n_completion_tokens", "source"]


@pytest.fixture
def lab(tmp_path, make_tiny_lab):
    """A tiny lab with 30 pool examples and the demo target, warmed up (2 checkpoints)."""
    lab = make_tiny_lab(tmp_path / "run", scoring=CFG)
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    lab.warmup()
    return lab


def _scores(lab, pool, work_dir, cfg=CFG, target=None):
    return loss_drop_scores(
        lab.model,
        lab.checkpoints()[-1],
        pool,
        lab.tokenized("demo") if target is None else target,
        cfg,
        lab.warmup_cfg.train,
        work_dir,
        pad_id=lab.tokenizer.pad_token_id,
        sources=None,
        progress=False,
    )


def _lora(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_example_losses_equal_the_models_own_loss_whatever_the_batching(lab):
    model, pool = lab.model, lab.tokenized("pool").head(10)
    load_adapter(model, lab.checkpoints()[-1])
    model.eval()
    want = []
    with torch.no_grad():
        for ids, labels in zip(pool["input_ids"], pool["labels"], strict=True):
            x, y = torch.tensor([ids.to_list()]), torch.tensor([labels.to_list()])
            want.append(model(input_ids=x, labels=y).loss.item())
    pad = lab.tokenizer.pad_token_id
    for budget, most in [(64, 1), (200, 3), (4096, 16)]:
        got = example_losses_of(
            model, pool, pad_id=pad, token_budget=budget, max_batch_examples=most
        )
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_training_on_the_targets_lowers_their_own_loss(lab, tmp_path, monkeypatch):
    model, prior, target = lab.model, lab.checkpoints()[-1], lab.tokenized("demo")
    pad = lab.tokenizer.pad_token_id
    load_adapter(model, prior)
    before = example_losses_of(model, target, pad_id=pad)
    started = []

    def recording(model, *args, **kwargs):  # what the training starts from
        started.append(_lora(model))
        return train_lora(model, *args, **kwargs)

    monkeypatch.setattr(loss_drop, "train_lora", recording)
    model.get_base_model().model.layers[0].self_attn.q_proj.lora_B.default.weight.data.zero_()
    out = tmp_path / "cond"
    run = {"epochs": 3, "lr": 1e-2, "pad_id": pad, "progress": False}
    cond = train_conditional(model, prior, target, lab.warmup_cfg.train, out, **run)
    after = example_losses_of(model, target, pad_id=pad)
    assert cond.epoch == 3 and cond.path == out / "epoch-3"
    assert (after < before).all(), (before, after)
    # it started from the prior's adapter (whatever the model held) with a fresh optimizer
    weights = prior.adapter_weights()
    for name, value in started[0].items():
        torch.testing.assert_close(value, weights[canonical_name(name)])
    assert cond.step == 3 * 3  # 12 targets, batch min(4, 12): 3 steps per epoch
    assert {s["step"].item() for s in load_optimizer_state(cond)["state"].values()} == {9.0}
    # scored as pool rows, the targets' loss drop is positive
    frame = _scores(lab, target.select(COLUMNS), tmp_path / "scores")
    assert (frame["score"].to_numpy() > 0).all()
    # a finished run is reused; another learning rate in its directory is refused
    stamp = (out / "epoch-3" / "state.json").stat().st_mtime_ns
    train_conditional(model, prior, target, lab.warmup_cfg.train, out, **run)
    assert (out / "epoch-3" / "state.json").stat().st_mtime_ns == stamp
    with pytest.raises(SettingsMismatchError, match="learning_rate"):
        train_conditional(model, prior, target, lab.warmup_cfg.train, out, **{**run, "lr": 1e-3})


def _pool_with_copy(lab) -> pl.DataFrame:
    """The tokenized pool plus an exact copy of the first target example."""
    copy = lab.tokenized("demo").head(1).select(COLUMNS)
    copy = copy.with_columns(pl.lit("copy_of_target").alias("example_id"))
    return pl.concat([lab.tokenized("pool").select(COLUMNS), copy])


def test_a_pool_copy_of_a_target_scores_above_the_median(lab, tmp_path):
    pool, prior = _pool_with_copy(lab), lab.checkpoints()[-1]
    frame = _scores(lab, pool, tmp_path / "scores")
    assert frame.schema == pl.Schema(SCORE_SCHEMA)
    assert frame["example_id"].to_list() == pool["example_id"].to_list()
    assert frame["subtask"].unique().to_list() == ["all"]
    assert frame["source"].to_list() == pool["source"].to_list()
    score = dict(zip(frame["example_id"], frame["score"], strict=True))
    assert score["copy_of_target"] > np.median(frame["score"].to_numpy())
    # score = prior loss - conditional loss, both cached with their example ids
    cached = [pl.read_parquet(tmp_path / "scores" / f) for f in (PRIOR_LOSSES, CONDITIONAL_LOSSES)]
    assert cached[0]["example_id"].to_list() == pool["example_id"].to_list()
    np.testing.assert_allclose(frame["score"], cached[0]["loss"] - cached[1]["loss"])
    # the prior's losses are the prior model's, and the model holds the prior adapter again
    load_adapter(lab.model, prior)
    held = _lora(lab.model)
    prior_losses = example_losses_of(lab.model, pool, pad_id=lab.tokenizer.pad_token_id)
    np.testing.assert_allclose(cached[0]["loss"], prior_losses, rtol=1e-5)
    for name, value in _lora(lab.model).items():
        torch.testing.assert_close(value, held[name])


def test_second_call_reuses_the_cache_and_other_settings_are_refused(lab, tmp_path, monkeypatch):
    pool, work = lab.tokenized("pool"), tmp_path / "scores"
    first = _scores(lab, pool, work)
    stamps = {p.name: p.stat().st_mtime_ns for p in work.iterdir() if p.is_file()}

    def refuse(*_args, **_kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(loss_drop, "train_lora", refuse)
    monkeypatch.setattr(loss_drop, "example_losses_of", refuse)
    again = _scores(lab, pool, work)
    assert again.equals(first)
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir() if p.is_file()} == stamps
    # aggregation acts after the losses: another one reuses them
    assert _scores(lab, pool, work, replace(CFG, aggregate="zscore")).equals(first)
    with pytest.raises(SettingsMismatchError, match="loss_drop_lr"):
        _scores(lab, pool, work, replace(CFG, loss_drop_lr=1e-3))
    with pytest.raises(SettingsMismatchError, match="target"):
        _scores(lab, pool, work, target=lab.tokenized("demo").head(6))
