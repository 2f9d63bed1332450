"""Config validates itself when built, and ``--set`` text names the whole key on error.

Each case is a setting that main before the layered rewrite accepted silently or crashed
on with a raw TypeError / ZeroDivisionError far into a run (issue "every promise the
README makes holds"): here it is a :class:`ConfigError` naming the key, the value and
what is allowed, before any work.
"""

from __future__ import annotations

import pytest

from less_lab.config import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
    check_settings,
    fingerprint,
    record_settings,
    to_dict,
)
from less_lab.errors import ConfigError, LessLabError, SettingsMismatchError
from less_lab.overrides import PRESETS, build_configs


@pytest.mark.parametrize(
    "setting, key, allowed",
    [
        ("gradients.store_dtype=int8", "gradients.store_dtype", "'float32', 'float16'"),
        ("data.max_length=abc", "data.max_length", "whole number"),
        ("select.k=2.5", "select.k", "whole number"),
        ("select.k=0", "select.k", "at least 1"),
        ("scoring.chunk_rows=0", "scoring.chunk_rows", "at least 1"),
        ("warmup.train.learning_rate=fast", "warmup.train.learning_rate", "a number"),
        ("select.fraction=2", "select.fraction", "(0, 1]"),
        ("gradients.proj_dim=0", "gradients.proj_dim", "positive"),
        ("warmup.fraction=0", "warmup.fraction", "(0, 1]"),
        ("warmup.fraction=5", "warmup.fraction", "(0, 1]"),
        ("warmup.train.epochs=0", "warmup.train.epochs", "at least 1"),
        ("warmup.train.lora.r=0", "warmup.train.lora.r", "rank"),
        ("warmup.train.betas=[0.9]", "warmup.train.betas", "2 values"),
        ("gradients.adam_bias_correction=1", "gradients.adam_bias_correction", "true or false"),
        ("gradients.pool_feature=adamw", "gradients.pool_feature", "'adam', 'sgd', 'sign'"),
        ("warmup.train.lora.rr=3", "warmup.train.lora.rr", "fields: alpha, dropout, r"),
        ("scoring.method=cosine", "scoring.method", "'paper', 'mean_of_shots', 'subspace', 'dot'"),
    ],
)
def test_bad_settings_name_key_value_and_what_is_allowed(setting, key, allowed):
    with pytest.raises(ConfigError) as err:
        build_configs([setting])
    assert err.value.key == key
    assert str(err.value).startswith(key) and allowed in str(err.value)
    assert isinstance(err.value, LessLabError) and isinstance(err.value, ValueError)


def test_bad_section_or_shape_is_refused():
    for item in ("foo.bar=1", "warmup=3", "nonsense"):
        with pytest.raises(ConfigError, match="section.field=value"):
            build_configs([item])
    with pytest.raises(ConfigError, match="preset"):
        build_configs([], preset="gpu-huge")


def test_dataclasses_validate_when_built_directly():
    with pytest.raises(ConfigError, match="fraction"):
        SelectConfig(fraction=None, k=None)
    with pytest.raises(ConfigError, match="dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ConfigError, match="max_length"):
        DataConfig(max_length=0)
    assert TrainConfig(learning_rate=1).learning_rate == 1.0  # ints become floats
    assert WarmupConfig(train={"epochs": 2}).train.epochs == 2  # nested dicts become configs


def test_select_size_refuses_k_over_the_pool():
    assert SelectConfig(k=5).size(10) == 5
    assert SelectConfig(fraction=0.05).size(10) == 1
    assert SelectConfig(fraction=0.05).size(30) == 2  # rounded up, as select_top does
    with pytest.raises(ConfigError, match=r"select.k=11: expected at most the pool size \(10\)"):
        SelectConfig(k=11).size(10)


def test_presets_and_overrides_compose():
    demo = build_configs(["select.k=3"], preset="cpu-demo")
    assert demo["warmup"].train.lora.r == 8 and demo["select"].k == 3
    assert build_configs()["warmup"] == WarmupConfig()
    assert set(PRESETS) >= {"paper", "cpu-demo"}
    for sets in PRESETS.values():
        build_configs(sets)  # every preset is itself valid


def test_defaults_keep_their_fingerprints_stable():
    # a fingerprint is part of every store's name: it must not change with field order
    g = GradientConfig()
    assert (
        fingerprint(g) == fingerprint(to_dict(g)) == fingerprint(dict(reversed(to_dict(g).items())))
    )


def test_record_settings_refuses_with_both_values_and_ignores_provenance(tmp_path):
    path = tmp_path / "run.json"
    record_settings(path, {"a": 1, "nested": {"b": 2}, "_version": "x"})
    assert check_settings(path, {"a": 1, "nested": {"b": 2}, "_version": "y"})
    with pytest.raises(SettingsMismatchError) as err:
        record_settings(path, {"a": 1, "nested": {"b": 3}})
    assert "nested.b: on disk 2, now 3" in str(err.value) and str(path) in str(err.value)
    assert not check_settings(tmp_path / "absent.json", {"a": 1})


def test_sketch_cache_mb_is_validated_and_never_recorded():
    assert GradientConfig().sketch_cache_mb is None
    assert GradientConfig(sketch_cache_mb=0).sketch_cache_mb == 0
    with pytest.raises(ConfigError, match=r"sketch_cache_mb=-1: expected None \(auto"):
        GradientConfig(sketch_cache_mb=-1)
    with pytest.raises(ConfigError, match="sketch_cache_mb"):
        GradientConfig(sketch_cache_mb=1.5)
    # speed and memory only: no store name or recorded setting changes with it
    assert "sketch_cache_mb" not in to_dict(GradientConfig())
    assert fingerprint(GradientConfig(sketch_cache_mb=64)) == fingerprint(GradientConfig())
    assert build_configs(["gradients.sketch_cache_mb=2048"])["gradients"].sketch_cache_mb == 2048
