"""The Lab facade end to end on the tiny model and the demo data (seconds, no download)."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest

from less_lab import (
    ScoreConfig,
    SelectConfig,
)
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.errors import ConfigError, DataError, SettingsMismatchError
from less_lab.lab import Lab
from less_lab.overrides import build_configs


def _lab(tmp_path, make_tiny_lab) -> Lab:
    lab = make_tiny_lab(tmp_path / "run")
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    return lab


def test_lab_select_diagnostics_and_repr(tmp_path, make_tiny_lab):
    lab = _lab(tmp_path, make_tiny_lab)
    sel = lab.select("demo")
    top = sel.frame
    assert top.height == 5 and top["score"].is_sorted(descending=True)
    assert sel.paths["selected"] == lab.selection_dir("demo") / "selected.jsonl"
    assert sel.paths["selected"].read_text().count("\n") == 5
    assert len(lab.checkpoints()) == 2
    assert "warmup: 2/2 checkpoints" in repr(lab)
    diag = lab.diagnostics("demo", sel)
    assert diag is not None and diag.text()
    assert diag.reliability is sel.reliability  # select's split-half, not a second one
    assert lab.select_balanced("demo", SelectConfig(k=6)).frame["subtask"].n_unique() == 3
    long = lab.subtask_scores("demo")
    assert long.height == 30 * demo_targets()["subtask"].n_unique()
    assert set(long.columns) == {"example_id", "source", "subtask", "score"}
    assert isinstance(lab.scores("demo"), pl.DataFrame)


def test_scoring_variants_write_their_own_selection(tmp_path, make_tiny_lab):
    lab = _lab(tmp_path, make_tiny_lab)
    cosine = lab.select("demo").frame
    here = lab.selection_dir("demo")
    written = (here / "selection.parquet").read_bytes()
    dot = lab.with_config(scoring=ScoreConfig(method="dot"))
    assert dot.selection_dir("demo").name.startswith("demo-dot-")
    assert dot.selection_dir("demo").parent == here.parent
    dot.select("demo")
    assert (dot.selection_dir("demo") / "selected.jsonl").exists()
    assert (here / "selection.parquet").read_bytes() == written
    again = pl.read_parquet(here / "selection.parquet")
    assert again["example_id"].to_list() == cosine["example_id"].to_list()
    sgd = lab.with_config(gradients=replace(lab.grad_cfg, pool_feature="sgd"))
    assert sgd.selection_dir("demo", balanced=True).name.startswith("demo-sgd-balanced-")
    # another projection dimension is another selection, never an overwrite
    small = lab.with_config(gradients=replace(lab.grad_cfg, proj_dim=128))
    assert small.selection_dir("demo") != here


def test_cli_set_overrides_nested_fields():
    c = build_configs(
        [
            "warmup.train.lora.r=8",
            "data.max_length=64",
            "select.k=3",
            "warmup.train.betas=[0.9, 0.95]",
        ]
    )
    assert c["warmup"].train.lora.r == 8 and c["data"].max_length == 64
    assert c["select"].k == 3 and c["warmup"].train.betas == (0.9, 0.95)


# ------------------------------------------------------------ refusals, before any work


def test_run_settings_are_recorded_once_and_a_changed_warmup_is_refused(tmp_path, make_tiny_lab):
    lab = _lab(tmp_path, make_tiny_lab)
    assert not lab.layout.lab_json.exists()  # nothing ran yet: nothing recorded
    lab.warmup()
    recorded = lab.layout.lab_json.read_text()
    assert '"learning_rate": 0.001' in recorded
    faster = replace(lab.warmup_cfg, train=replace(lab.warmup_cfg.train, learning_rate=2e-3))
    with pytest.raises(SettingsMismatchError) as err:
        Lab(lab.run_dir, data=lab.data_cfg, warmup=faster, progress=False)
    assert "warmup.train.learning_rate: on disk 0.001, now 0.002" in str(err.value)
    with pytest.raises(SettingsMismatchError, match="warmup.fraction"):
        lab.with_config(warmup=replace(lab.warmup_cfg, fraction=0.5))
    assert lab.layout.lab_json.read_text() == recorded  # a refused Lab wrote nothing
    # variants are free: another projection is another store and another selection
    lab.with_config(gradients=replace(lab.grad_cfg, proj_dim=128))


def test_empty_and_oversized_inputs_are_refused_before_any_work(tmp_path):
    lab = Lab(tmp_path / "run", select=SelectConfig(k=50), progress=False)
    with pytest.raises(DataError, match="pool is empty"):
        lab.set_pool(demo_pool().head(0))
    with pytest.raises(ConfigError, match=r"select.k=50: expected at most the pool size \(30\)"):
        lab.set_pool(demo_pool().head(30))
    with pytest.raises(DataError, match="no examples"):
        lab.add_target("t", demo_targets().head(0))
    assert not any(lab.run_dir.rglob("*"))  # the run directory stays clean and usable


@pytest.mark.parametrize("name", ["..", "", "a/b", "../x", ".hidden", "-x", "pool", "a\\b"])
def test_target_names_must_be_plain(tmp_path, name):
    lab = Lab(tmp_path / "run", progress=False)
    with pytest.raises(ConfigError):
        lab.add_target(name, demo_targets())
