"""Settings as text: ``section.field=value`` overrides (the CLI's ``--set``, a notebook's
list) applied on top of the paper defaults or of a named preset.

Next to ``config`` (base layer) so that every layer and the facade parse settings the
same way, and every bad key or value raises :class:`~less_lab.errors.ConfigError` naming
the whole dotted key, the value and what is allowed. Imports only ``config`` and
``errors``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from less_lab.config import (
    DataConfig,
    GradientConfig,
    ScoreConfig,
    SelectConfig,
    WarmupConfig,
)
from less_lab.errors import ConfigError

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "warmup": WarmupConfig,
    "gradients": GradientConfig,
    "scoring": ScoreConfig,
    "select": SelectConfig,
}
"""The config sections a run has, by the name ``--set`` uses."""

PRESETS: dict[str, list[str]] = {
    "paper": [],
    "cpu-demo": [
        "data.max_length=128",
        "warmup.fraction=0.2",
        "warmup.train.batch_size=8",
        "warmup.train.learning_rate=0.0001",
        "warmup.train.lora.r=8",
        "warmup.train.lora.alpha=32",
        "select.fraction=0.1",
    ],
}
"""Named starting points: ``paper`` (the defaults) and ``cpu-demo`` (what ``less-lab demo``
runs with on 2 CPU cores: short sequences, LoRA r=8, a larger warmup share with small
batches and a higher learning rate so a short warmup moves the adapter, and a 10%
selection so shares are readable)."""


REMEDIES: dict[str, list[str]] = {
    "zscore": ["scoring.aggregate=zscore"],
    "rank": ["scoring.aggregate=rank"],
    "round_robin": ["scoring.aggregate=round_robin"],
    "content_targets": ["gradients.target_tokens=content"],
    "content_tokens": ["gradients.target_tokens=content", "gradients.pool_tokens=content"],
    "length_matched": ["select.length_bins=5"],
    "dedup": ["select.max_similarity=0.9"],
    "subspace": ["scoring.method=subspace"],
    "loss_drop": ["scoring.method=loss_drop"],
}
"""Named remedies for selections that pick noise (``less_lab.selection_config``), each a
list of settings applied on top of a preset (``--remedy NAME``, ``less+NAME`` in
``compare``; combine with ``+``): scale-free aggregation across subtasks (``zscore``,
``rank``, ``round_robin``), EOS and template tokens left out of the target losses
(``content_targets``, cheap: the pool stores are reused) or of both losses
(``content_tokens``), length-matched quotas over 5 completion-length bins, near-duplicate
suppression above a 0.9 gradient cosine, target-subspace (cone) scoring, and
CoLoR-Filter's conditional loss drop."""


def remedy_settings(names: list[str] | tuple[str, ...]) -> list[str]:
    """The ``section.field=value`` settings of the named remedies, in order."""
    out = []
    for name in names:
        if name not in REMEDIES:
            raise ConfigError(
                f"remedy {name!r}: expected one of {', '.join(REMEDIES)}", key="remedy"
            )
        out += REMEDIES[name]
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, lists, true/false/null), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def replace_path(cfg: Any, path: list[str], value: Any, prefix: str = "") -> Any:
    """``dataclasses.replace`` along a dotted path; unknown fields and bad values raise
    ConfigError naming the whole key."""
    names = sorted(f.name for f in dataclasses.fields(cfg))
    key = prefix + path[0]
    if path[0] not in names:
        raise ConfigError(
            f"{key}: {type(cfg).__name__} has no field {path[0]!r} (fields: {', '.join(names)})",
            key=key,
        )
    if len(path) > 1:
        sub = getattr(cfg, path[0])
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(f"{key} is a value, not a section", key=key)
        value = replace_path(sub, path[1:], value, key + ".")
    try:
        return dataclasses.replace(cfg, **{path[0]: value})
    except ConfigError as err:
        raise err.under(prefix) from None


def build_configs(
    sets: list[str] | tuple[str, ...] = (),
    preset: str = "paper",
    remedies: list[str] | tuple[str, ...] = (),
) -> dict:
    """The configs of every section: ``preset``'s settings, then the ``remedies``'
    settings, then ``sets`` on top, each ``section.field=value`` (nested fields with
    dots: ``warmup.train.lora.r=8``)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}", key="preset")
    configs = {name: cls() for name, cls in SECTIONS.items()}
    return apply_settings(configs, [*PRESETS[preset], *remedy_settings(remedies), *sets])


def apply_settings(configs: dict, sets: list[str] | tuple[str, ...]) -> dict:
    """``configs`` (section name -> config) with each ``section.field=value`` applied."""
    configs = dict(configs)
    for item in sets:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or parts[0] not in SECTIONS or len(parts) < 2:
            raise ConfigError(
                f"{item!r}: expected section.field=value with section one of {', '.join(SECTIONS)}",
                key=key,
            )
        configs[parts[0]] = replace_path(
            configs[parts[0]], parts[1:], parse_value(raw.strip()), parts[0] + "."
        )
    return configs
