"""Where everything of a run lives: one object owns every path under a run directory.

    <run>/lab.json                       what the run is (model, data, warmup settings)
    <run>/data/                          files the run wrote for itself (the demo's pool)
    <run>/warmup/epoch-<i>/              LoRA checkpoints with Adam moments
    <run>/stores/<split>/epoch-<i>/<tag> gradient datastores (tag: feature, projection, ...)
    <run>/scores/<target>.parquet        scores written by ``less-lab score``
    <run>/selections/<name>/             selections (jsonl in the pool's format + parquet)
    <run>/compare/<target>/              method comparisons (Table 3)
    <run>/seeds/warmup-seed-<s>/         the same run with another warmup subset seed

Names that become path parts (targets, variants) must be plain names, so nothing can
land outside its folder. Base layer: imports nothing from less_lab but ``errors``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from less_lab.errors import ConfigError

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,127}")


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is a plain name (letters, digits, ``_ . + = -``, not starting with a
    dot or dash, at most 128 characters), else ConfigError: it becomes a folder name."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{what} {name!r}: expected a plain name (letters, digits, _ . + = -; "
            "not starting with . or -)",
            key=what,
        )
    return name


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created until a writer asks)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def lab_json(self) -> Path:
        return self.root / "lab.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def warmup_dir(self) -> Path:
        return self.root / "warmup"

    def checkpoint_dirs(self) -> list[Path]:
        """Finished warmup checkpoints (those whose ``state.json`` exists), by epoch."""
        found = self.warmup_dir.glob("epoch-*/state.json")
        return sorted((p.parent for p in found), key=lambda d: int(d.name[len("epoch-") :]))

    def store_dir(self, split: str, checkpoint: str, tag: str) -> Path:
        return self.root / "stores" / split / checkpoint / tag

    def store_dirs(self, split: str) -> list[Path]:
        """Every store directory of ``split`` that exists on disk."""
        return sorted(p for p in (self.root / "stores" / split).glob("*/*") if p.is_dir())

    def selection_dir(self, name: str) -> Path:
        return self.root / "selections" / check_name(name, "selection")

    def scores_file(self, target: str) -> Path:
        return self.root / "scores" / f"{check_name(target, 'target')}.parquet"

    def loss_drop_dir(self, target: str) -> Path:
        """The conditional adapter and cached losses of ``scoring.method=loss_drop``."""
        return self.root / "loss_drop" / check_name(target, "target")

    def compare_dir(self, target: str) -> Path:
        return self.root / "compare" / check_name(target, "target")

    def seed_run(self, seed: int) -> RunLayout:
        """The run with warmup subset seed ``seed`` (compare's per-seed LESS)."""
        return RunLayout(self.root / "seeds" / f"warmup-seed-{int(seed)}")
