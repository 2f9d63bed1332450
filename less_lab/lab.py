"""``Lab``: a run directory that caches every stage, for notebooks and the CLI.

    lab = Lab("runs/mmlu", model="smollm2-135m")
    lab.load_pool("data/pool")                   # open-instruct or prompt/completion JSONL
    lab.add_target("mmlu", "data/eval/mmlu")     # LESS layouts or JSONL with `subtask`
    lab.warmup()                                 # LoRA checkpoints + Adam moments
    scores = lab.scores("mmlu")                  # one row per pool example
    sel = lab.select("mmlu")                     # a Selection: .frame, .paths, .reliability

Every stage writes under the run directory (:class:`~less_lab.layout.RunLayout`) and is
reused when asked again with the same settings; a stage made with other settings is
refused with both values named. ``lab.json`` records what the run is (model, data and
warmup settings) once, when the warmup first runs; a ``Lab`` built on that directory
with other run settings is refused at once. Gradient, scoring and selection settings are
variants: each gets its own stores and selection folder.

Facade layer: imports every layer below; nothing below imports it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from less_lab import explain, inspection, selecting
from less_lab._version import __version__
from less_lab.checks.reliability import Reliability
from less_lab.compare import compare as run_compare
from less_lab.config import (
    DataConfig,
    GradientConfig,
    ScoreConfig,
    SelectConfig,
    WarmupConfig,
    check_settings,
    fingerprint,
    record_settings,
    to_dict,
)
from less_lab.core import pipeline
from less_lab.core.datastore import Store
from less_lab.core.selection import Selection
from less_lab.core.training import Checkpoint
from less_lab.data.formatting import check_kept, tokenize
from less_lab.data.pool import read_pool
from less_lab.data.targets import read_targets
from less_lab.errors import ConfigError, DataError
from less_lab.evaluate.finetune import clean_copy
from less_lab.layout import RunLayout, check_name
from less_lab.model.handle import ModelHandle
from less_lab.overrides import apply_settings, remedy_settings

RUN_REFUSED = (
    "this run directory was made with other run settings (gradient, scoring and selection "
    "settings may change freely: they are variants; data, warmup and model may not)"
)


class Lab:
    """A LESS run: configs, data, the selection model and cached stage outputs."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        model: str = "smollm2-135m",
        data: DataConfig = DataConfig(),
        warmup: WarmupConfig = WarmupConfig(),
        gradients: GradientConfig = GradientConfig(),
        scoring: ScoreConfig = ScoreConfig(),
        select: SelectConfig = SelectConfig(),
        progress: bool = True,
        device: Any = "auto",
        dtype: Any = "float32",
    ):
        self.layout = RunLayout(Path(run_dir))
        self.model_name = model
        self.data_cfg, self.warmup_cfg, self.grad_cfg = data, warmup, gradients
        self.score_cfg, self.select_cfg = scoring, select
        self.progress = progress
        self.pool: pl.DataFrame | None = None
        self.targets: dict[str, pl.DataFrame] = {}
        self.dropped: dict[str, pl.DataFrame] = {}
        self._tokenized: dict[str, pl.DataFrame] = {}
        self._handle = ModelHandle(model, device, dtype)  # where and how a named model loads
        self._check_recorded_run()

    # ----------------------------------------------------------------- configuration
    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def _configs(self) -> tuple:
        return self.data_cfg, self.warmup_cfg, self.grad_cfg, self.score_cfg, self.select_cfg

    def run_settings(self) -> dict:
        """What the run directory is: model, data and warmup settings (``lab.json``)."""
        return {
            "model": self.model_name,
            "data": to_dict(self.data_cfg),
            "warmup": to_dict(self.warmup_cfg),
        }

    def settings(self) -> dict:
        """All configs as one JSON-ready dict (the run's plus the variant's)."""
        return {
            **self.run_settings(),
            "gradients": to_dict(self.grad_cfg),
            "scoring": to_dict(self.score_cfg),
            "select": to_dict(self.select_cfg),
        }

    def _check_recorded_run(self) -> None:
        """Refuse at once a run directory recorded with other run settings."""
        check_settings(self.layout.lab_json, self.run_settings(), RUN_REFUSED)

    def _record_run(self) -> None:
        record_settings(
            self.layout.lab_json,
            {**self.run_settings(), "_package_version": __version__},
            RUN_REFUSED,
        )

    def __repr__(self) -> str:
        lines = [f"Lab({str(self.run_dir)!r}, model={self.model_name!r})"]
        pool = "not loaded" if self.pool is None else f"{self.pool.height} examples"
        lines.append(f"  pool: {pool}")
        for name, t in self.targets.items():
            lines.append(
                f"  target {name}: {t.height} examples, {t['subtask'].n_unique()} subtasks"
            )
        ckpts = self.checkpoints()
        lines.append(f"  warmup: {len(ckpts)}/{self.warmup_cfg.train.epochs} checkpoints")
        for name in ["pool", *self.targets]:
            done = sum((d / "meta.json").exists() for d in self.store_dirs(name))
            lines.append(f"  datastore {name}: {done}/{len(ckpts) or '?'} checkpoints complete")
        return "\n".join(lines)

    # -------------------------------------------------------------------------- data
    def load_pool(self, paths, *, on_error: str = "raise") -> pl.DataFrame:
        """Read the candidate pool (files or directories of JSONL)."""
        return self.set_pool(read_pool(paths, on_error=on_error))

    def set_pool(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Use an already-read pool frame (e.g. ``demo_pool()``); an empty pool and a
        ``select.k`` larger than the pool are refused here, before any work."""
        if frame.height == 0:
            raise DataError("the pool is empty (no example was read)", expected="examples")
        self.select_cfg.size(frame.height)
        self.pool = frame
        self._tokenized.pop("pool", None)
        return frame

    def add_target(self, name: str, source) -> pl.DataFrame:
        """Register a target: a path in a LESS layout / JSONL, or a frame with ``subtask``."""
        if name == "pool":
            raise ConfigError("target name 'pool' is reserved for the pool", key="target")
        check_name(name, "target")
        frame = source if isinstance(source, pl.DataFrame) else read_targets(source)
        if frame.height == 0:
            raise DataError(f"target {name!r} has no examples", expected="examples")
        self.targets[name] = frame
        self._tokenized.pop(name, None)
        return frame

    def tokenized(self, split: str) -> pl.DataFrame:
        """Tokenized pool (``"pool"``) or target; dropped examples land in ``self.dropped``.
        Refused (``DataError``): a split that loses every example, a target that loses
        every example of a subtask (its scores would silently lack that subtask)."""
        if split not in self._tokenized:
            frame = self.pool if split == "pool" else self.targets.get(split)
            if frame is None:
                raise KeyError(f"no {split!r} data: call load_pool/add_target first")
            tok, dropped = tokenize(frame, self.tokenizer, self.data_cfg)
            check_kept(split, frame, tok, self.data_cfg, by_subtask=split != "pool")
            self._tokenized[split], self.dropped[split] = tok, dropped
        return self._tokenized[split]

    def cached_tokenized(self, split: str) -> pl.DataFrame | None:
        """``split`` tokenized if that already happened in this session, else None (never
        tokenizes: views use it to stay cheap)."""
        return self._tokenized.get(split)

    # ------------------------------------------------------------------------- model
    @property
    def tokenizer(self):
        return self._handle.tokenizer

    @property
    def model(self):
        """The selection model with its LoRA adapter (PEFT), loaded on first use."""
        return self._handle.peft(self.warmup_cfg.train.lora, self.warmup_cfg.train.seed)

    @property
    def model_fingerprint(self) -> str:
        """What identifies the selection model in recorded settings."""
        return self._handle.fingerprint

    def loaded_model(self):
        """The selection model as it is now (LoRA-wrapped once ``model`` was used), loaded on
        first use: what a clean copy for fine-tuning or RDS states starts from."""
        return self._handle.loaded()

    def use_model(self, model, tokenizer) -> None:
        """Use an in-memory model (``tiny_llama()``), on its device and dtype, not ``model``."""
        self._handle.use(model, tokenizer)
        self._tokenized.clear()

    # ------------------------------------------------------------------------ stages
    def warmup(self) -> list[Checkpoint]:
        """Warmup LoRA training (cached per epoch; resumes after an interruption; refuses a
        warmup on disk made with other settings, data or model)."""
        tokenized = self.tokenized("pool")
        ckpts = pipeline.warmup(
            self.model,
            tokenized,
            self.warmup_cfg,
            self.layout.warmup_dir,
            pad_id=self.tokenizer.pad_token_id,
            model_fingerprint=self._handle.fingerprint,
            progress=self.progress,
        )
        self._record_run()
        return ckpts

    def checkpoints(self) -> list[Checkpoint]:
        """Finished warmup checkpoints on disk (empty before ``warmup``)."""
        return [Checkpoint.load(d) for d in self.layout.checkpoint_dirs()]

    def store_dirs(self, split: str) -> list[Path]:
        """Where ``split``'s gradient stores live, one per warmup checkpoint (built or not);
        the name carries the feature kind, projection and a fingerprint of its settings."""
        g = self.grad_cfg
        fp = fingerprint(g.store_key(split))[:6]
        tag = f"{g.feature(split)}-{g.projection}-d{g.proj_dim}-s{g.proj_seed}-{fp}"
        return [self.layout.store_dir(split, c.path.name, tag) for c in self.checkpoints()]

    def datastore(self, split: str = "pool") -> list[Store]:
        """Gradient features of ``split`` at every checkpoint (``gradients.pool_feature``
        for the pool, ``gradients.target_feature`` for targets: adam / sgd as in the
        paper). Built once, resumed if interrupted, then reused."""
        ckpts = self.warmup()
        stores = []
        for ckpt, path in zip(ckpts, self.store_dirs(split), strict=True):
            stores.append(
                pipeline.extract_store(
                    self.model,
                    selecting.loss_tokenized(self, split),
                    path,
                    split=split,
                    feature=self.grad_cfg.feature(split),
                    cfg=self.grad_cfg,
                    checkpoint=ckpt,
                    pad_id=self.tokenizer.pad_token_id,
                    model_fingerprint=self._handle.fingerprint,
                    progress=self.progress,
                )
            )
        return stores

    def subtask_scores(self, target: str) -> pl.DataFrame:
        """Long frame ``example_id, source, subtask, score`` (one row per subtask)."""
        return selecting.scores(self, target)[0]

    def scores(self, target: str) -> pl.DataFrame:
        """One row per pool example: best subtask and its score (paper: max over subtasks;
        ``scoring.aggregate`` names the scale-free remedies)."""
        return selecting.scores(self, target)[1]

    def _target(self, target: str) -> pl.DataFrame:
        if target not in self.targets:
            raise KeyError(f"no target {target!r} (have {sorted(self.targets)}): add_target first")
        return self.targets[target]

    def select(self, target: str, cfg: SelectConfig | None = None) -> Selection:
        """Top examples for ``target`` (``select.length_bins`` / ``select.max_similarity``
        shape the top), checked for split-half reliability (a warning below 0.8); written
        to ``selection_dir(target)`` (jsonl in the pool's format, parquet, scores)."""
        self._target(target)
        return selecting.select(self, target, cfg)

    def selection_dir(
        self, target: str, balanced: bool = False, cfg: SelectConfig | None = None
    ) -> Path:
        """Where ``select`` writes (``selecting.selection_dir``): ``selections/<target>
        [-variant][-balanced]-<fingerprint>``."""
        return selecting.selection_dir(self, target, balanced, cfg)

    def compare(self, target: str, **kwargs) -> pl.DataFrame:
        """The paper's Table 3 for ``target``: select with LESS and the baselines, fine-tune,
        evaluate, mean and std over seeds (``less_lab.compare.compare``; resumable)."""
        return run_compare(self, target, **kwargs)

    def for_warmup_seed(self, seed: int) -> Lab:
        """The same run with its warmup subset drawn with ``seed`` (its own run directory
        under ``seeds/``, the same pool, targets and a clean copy of the base model)."""
        if seed == self.warmup_cfg.seed:
            return self
        run_dir = self.layout.seed_run(seed).root
        seeded = self.with_config(run_dir, warmup=replace(self.warmup_cfg, seed=seed))
        seeded.use_model(clean_copy(self.loaded_model()), self.tokenizer)
        return seeded

    def select_balanced(
        self,
        target: str,
        cfg: SelectConfig | None = None,
        *,
        mode: str = "round_robin",
        cap: int | None = None,
    ) -> Selection:
        """Like ``select`` but spread over subtasks (``round_robin`` is also
        ``scoring.aggregate=round_robin``); writes its own folder."""
        self._target(target)
        return selecting.select_spread(self, target, cfg, mode, cap)

    def token_contributions(
        self, split: str, example_ids=None, checkpoint: int = -1
    ) -> pl.DataFrame:
        """Why a gradient points where it does: each completion token's share of one
        example's gradient at a checkpoint, EOS and template tokens marked
        (``explain.token_contributions``; draw with ``token_figure``)."""
        return explain.token_contributions(self, split, example_ids, checkpoint)

    def score_decomposition(
        self, target: str, example_id: str, subtask: str | None = None
    ) -> pl.DataFrame:
        """A pool example's score split by checkpoint and LoRA module, in the unprojected
        space (``explain.score_decomposition``)."""
        return explain.score_decomposition(self, target, example_id, subtask)

    def reliability(self, target: str) -> Reliability | None:
        """Split-half projection reliability of ``target``'s scores (None for exact
        features; ``inspection.reliability``)."""
        return inspection.reliability(self, target)

    def diagnostics(self, target: str, selection: Selection | None = None, *, adam_sample: int = 8):
        """Can this selection be trusted? Reliability, Adam health, selection shape,
        truncation (``inspection.diagnostics``; ``print`` it or use ``.frames()``)."""
        return inspection.diagnostics(self, target, selection, adam_sample=adam_sample)

    def explore(self, target: str, **views: Any):
        """Interactive views of a finished selection (``inspection.explore``)."""
        return inspection.explore(self, target, **views)

    def exact(self) -> Lab:
        """This run with unprojected features (projection='none'): exact cosines to compare."""
        return self.with_config(gradients=replace(self.grad_cfg, projection="none"))

    def with_remedies(self, *names: str) -> Lab:
        """This run with the named remedies applied (``overrides.REMEDIES``: ``zscore``,
        ``rank``, ``round_robin``, ``content_targets``, ``content_tokens``,
        ``length_matched``, ``dedup``, ``loss_drop``), on the same run directory: the
        warmup is shared; stores and selections are variants."""
        sections = ("data", "warmup", "gradients", "scoring", "select")
        now = dict(zip(sections, self._configs(), strict=True))
        new = apply_settings(now, remedy_settings(list(names)))
        return self.with_config(**{k: v for k, v in new.items() if v != now[k]})

    def with_config(self, run_dir: str | Path | None = None, **changes) -> Lab:
        """A Lab on the same data with some configs replaced, e.g.
        ``lab.with_config(scoring=replace(lab.score_cfg, method="dot"))``, on the same run
        dir unless ``run_dir`` is given. Changing the run's own settings (data, warmup) on
        a recorded run is refused."""
        cfgs = ("data", "warmup", "gradients", "scoring", "select")
        kwargs = dict(zip(cfgs, self._configs(), strict=True)) | self._handle.placement | changes
        run_dir = self.run_dir if run_dir is None else run_dir
        lab = Lab(run_dir, model=self.model_name, progress=self.progress, **kwargs)
        lab.pool, lab.targets = self.pool, dict(self.targets)
        if "warmup" not in changes:  # another LoRA shape needs a fresh, un-wrapped base model
            lab._handle = self._handle.copy_for()
        lab._tokenized = dict(self._tokenized) if "data" not in changes else {}
        return lab


__all__ = ["Lab", "Selection", "replace"]
