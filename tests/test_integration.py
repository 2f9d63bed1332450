"""End to end on real data with the real SmolLM2: 200 pool examples (40 per source), BBH."""

from __future__ import annotations

import json
import resource
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from less_lab import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.core.datastore import open_store
from less_lab.data.pool import read_pool
from less_lab.data.targets import read_targets
from less_lab.errors import SettingsMismatchError
from less_lab.lab import Lab

pytestmark = pytest.mark.slow
BBH_TASKS = ["boolean_expressions", "navigate", "word_sorting"]


@pytest.fixture(scope="module")
def lab(shared_data, smollm2, tmp_path_factory):
    pool = read_pool(shared_data / "pool")
    pool = pl.concat(
        [
            g.sample(min(40, g.height), seed=0)
            for _, g in pool.group_by("source", maintain_order=True)
        ]
    )
    targets = read_targets(shared_data / "eval" / "bbh")
    targets = targets.filter(pl.col("subtask").is_in(BBH_TASKS))
    lab = Lab(
        tmp_path_factory.mktemp("run"),
        data=DataConfig(max_length=128),
        warmup=WarmupConfig(
            fraction=0.1,
            train=TrainConfig(
                epochs=2, batch_size=8, learning_rate=1e-4, lora=LoraSettings(r=8, alpha=32)
            ),
        ),
        gradients=GradientConfig(proj_dim=2048),
        select=SelectConfig(k=20),
        progress=False,
    )
    model, tokenizer = smollm2
    import copy

    lab.use_model(copy.deepcopy(model), tokenizer)
    lab.set_pool(pool)
    lab.add_target("bbh", targets)
    return lab


def test_end_to_end_selection(lab):
    sel = lab.select("bbh")
    top = sel.frame
    assert top.height == 20 and top["rank"].to_list() == list(range(1, 21))
    assert top["score"].is_sorted(descending=True)
    assert set(top["subtask"]) <= set(BBH_TASKS)
    # written back verbatim in the pool's own format, best first
    lines = sel.paths["selected"].read_text().splitlines()
    raw = dict(zip(lab.pool["example_id"], lab.pool["raw"], strict=True))
    assert lines == [raw[i] for i in top["example_id"]]
    assert all(json.loads(line)["messages"] for line in lines)
    long = pl.read_parquet(sel.paths["scores"])
    n_pool = lab.tokenized("pool").height
    assert long.height == n_pool * len(BBH_TASKS)
    assert long["score"].is_finite().all()
    # cosines are cosines
    assert long["score"].abs().max() <= 1.0


def test_stores_and_checkpoints(lab):
    ckpts = lab.checkpoints()
    assert [c.epoch for c in ckpts] == [1, 2] and all(c.lr > 0 for c in ckpts)
    stores = lab.datastore("pool")
    assert len(stores) == 2
    for store in stores:
        feats = np.asarray(store.features)
        assert feats.shape == (lab.tokenized("pool").height, 2048)
        assert np.isfinite(feats).all() and (np.linalg.norm(feats, axis=1) > 0).all()
        assert store.meta["feature"] == "adam" and store.meta["nonfinite_ids"] == []
    # the two checkpoints give different features (the warmup moved the adapter)
    assert not np.allclose(np.asarray(stores[0].features), np.asarray(stores[1].features))


def test_reuse_is_cached_and_other_settings_are_refused(lab):
    store = lab.datastore("bbh")[0]
    mtime = (store.path / "meta.json").stat().st_mtime
    assert (lab.datastore("bbh")[0].path / "meta.json").stat().st_mtime == mtime
    other = dict(store.meta, projection={**store.meta["projection"], "seed": 1})
    with pytest.raises(SettingsMismatchError, match="projection"):
        open_store(store.path, {"projection": other["projection"]})
    lab2 = lab.with_config(gradients=replace(lab.grad_cfg, proj_seed=1))
    assert lab2.store_dirs("bbh")[0] != store.path


def test_peak_memory_under_12_gib(lab):
    lab.select("bbh")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak < 12, f"peak RSS {peak:.1f} GiB"
