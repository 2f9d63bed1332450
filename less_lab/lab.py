"""``Lab``: a run directory that caches every stage, for notebooks and the CLI.

    lab = Lab("runs/mmlu", model="smollm2-135m")
    lab.load_pool("data/pool")                   # open-instruct or prompt/completion JSONL
    lab.add_target("mmlu", "data/eval/mmlu")     # LESS layouts or JSONL with `subtask`
    lab.warmup()                                 # LoRA checkpoints + Adam moments
    scores = lab.scores("mmlu")                  # one row per pool example
    top = lab.select("mmlu")                     # writes selections/mmlu/selected.jsonl

Every stage writes under the run directory and is reused when asked again with the same
settings; a stage made with other settings is refused with both values named.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import polars as pl

from . import pipeline
from .config import (
    DataConfig,
    GradientConfig,
    ScoreConfig,
    SelectConfig,
    WarmupConfig,
    fingerprint,
    to_dict,
)
from .datastore import Store
from .selection import select_top, write_selection
from .training import Checkpoint


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
    ):
        self.run_dir = Path(run_dir)
        self.model_name = model
        self.data_cfg, self.warmup_cfg, self.grad_cfg = data, warmup, gradients
        self.score_cfg, self.select_cfg = scoring, select
        self.progress = progress
        self.pool: pl.DataFrame | None = None
        self.targets: dict[str, pl.DataFrame] = {}
        self.dropped: dict[str, pl.DataFrame] = {}
        self._tokenized: dict[str, pl.DataFrame] = {}
        self._model = self._tokenizer = self._peft = None
        self._model_fp = ""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "lab.json").write_text(json.dumps(self.settings(), indent=1))

    # ----------------------------------------------------------------- configuration
    def settings(self) -> dict:
        """All configs as one JSON-ready dict (recorded in ``lab.json``)."""
        return {
            "model": self.model_name,
            "data": to_dict(self.data_cfg),
            "warmup": to_dict(self.warmup_cfg),
            "gradients": to_dict(self.grad_cfg),
            "scoring": to_dict(self.score_cfg),
            "select": to_dict(self.select_cfg),
        }

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
        from .data import read_pool

        return self.set_pool(read_pool(paths, on_error=on_error))

    def set_pool(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Use an already-read pool frame (e.g. ``demo_data.demo_pool()``)."""
        self.pool = frame
        self._tokenized.pop("pool", None)
        return frame

    def add_target(self, name: str, source) -> pl.DataFrame:
        """Register a target: a path in a LESS layout / JSONL, or a frame with ``subtask``."""
        from .targets import read_targets

        if name == "pool" or "/" in name:
            raise ValueError(f"target name {name!r} is reserved or not a plain name")
        frame = source if isinstance(source, pl.DataFrame) else read_targets(source)
        self.targets[name] = frame
        self._tokenized.pop(name, None)
        return frame

    def tokenized(self, split: str) -> pl.DataFrame:
        """Tokenized pool (``"pool"``) or target; dropped examples land in ``self.dropped``."""
        if split not in self._tokenized:
            from .formatting import tokenize

            frame = self.pool if split == "pool" else self.targets.get(split)
            if frame is None:
                raise KeyError(f"no {split!r} data: call load_pool/add_target first")
            tok, dropped = tokenize(frame, self.tokenizer, self.data_cfg)
            self._tokenized[split], self.dropped[split] = tok, dropped
        return self._tokenized[split]

    # ------------------------------------------------------------------------- model
    @property
    def tokenizer(self):
        self._load_model()
        return self._tokenizer

    @property
    def model(self):
        """The selection model with its LoRA adapter (PEFT), loaded on first use."""
        self._load_model()
        if self._peft is None:
            from .lora import add_lora

            train = self.warmup_cfg.train
            self._peft = add_lora(self._model, train.lora, seed=train.seed)
        return self._peft

    def loaded_model(self):
        """The selection model as it is now (LoRA-wrapped once ``model`` was used), loaded on
        first use: what a clean copy for fine-tuning or RDS states starts from."""
        self._load_model()
        return self._peft if self._peft is not None else self._model

    def cached_tokenized(self, split: str) -> pl.DataFrame | None:
        """``split`` tokenized if that already happened in this session, else None (never
        tokenizes: views use it to stay cheap)."""
        return self._tokenized.get(split)

    def _load_model(self) -> None:
        if self._model is None:
            from .models import load_model, model_fingerprint

            self._model, self._tokenizer = load_model(self.model_name)
            self._model_fp = model_fingerprint(self._model)

    def use_model(self, model, tokenizer) -> None:
        """Use an in-memory model (e.g. ``less_lab.tiny``) instead of loading by name."""
        from .models import model_fingerprint

        self._model, self._tokenizer, self._peft = model, tokenizer, None
        self._model_fp = model_fingerprint(model)
        self._tokenized.clear()

    # ------------------------------------------------------------------------ stages
    def warmup(self) -> list[Checkpoint]:
        """Warmup LoRA training (cached per epoch; resumes after an interruption)."""
        return pipeline.warmup(
            self.model,
            self.tokenized("pool"),
            self.warmup_cfg,
            self.run_dir / "warmup",
            pad_id=self.tokenizer.pad_token_id,
            model_fingerprint=self._model_fp,
            progress=self.progress,
        )

    def checkpoints(self) -> list[Checkpoint]:
        """Finished warmup checkpoints on disk (empty before ``warmup``)."""
        root = self.run_dir / "warmup"
        found = sorted(root.glob("epoch-*/state.json"), key=lambda p: int(p.parent.name[6:]))
        return [Checkpoint.load(p.parent) for p in found]

    def store_dirs(self, split: str, feature: str | None = None) -> list[Path]:
        """Where ``split``'s gradient stores live, one per warmup checkpoint (built or not);
        the name carries the feature kind, projection and a fingerprint of its settings."""
        g = self.grad_cfg
        feature = feature or ("adam" if split == "pool" else "sgd")
        tag = f"{feature}-{g.projection}-d{g.proj_dim}-s{g.proj_seed}-{fingerprint(g)[:6]}"
        return [self.run_dir / "stores" / split / c.path.name / tag for c in self.checkpoints()]

    def datastore(self, split: str = "pool", feature: str | None = None) -> list[Store]:
        """Gradient features of ``split`` at every checkpoint (pool: ``adam``; targets:
        ``sgd``, as in the paper). Built once, resumed if interrupted, then reused."""
        ckpts = self.checkpoints() or self.warmup()
        feature = feature or ("adam" if split == "pool" else "sgd")
        stores = []
        for ckpt, path in zip(ckpts, self.store_dirs(split, feature), strict=True):
            stores.append(
                pipeline.extract_store(
                    self.model,
                    self.tokenized(split),
                    path,
                    split=split,
                    feature=feature,
                    cfg=self.grad_cfg,
                    checkpoint=ckpt,
                    pad_id=self.tokenizer.pad_token_id,
                    model_fingerprint=self._model_fp,
                    progress=self.progress,
                )
            )
        return stores

    def subtask_scores(self, target: str, feature: str | None = None) -> pl.DataFrame:
        """Long frame ``example_id, source, subtask, score`` (one row per subtask)."""
        return self._score(target, feature)[0]

    def scores(self, target: str, feature: str | None = None) -> pl.DataFrame:
        """One row per pool example: best subtask and its score (paper: max over subtasks)."""
        return self._score(target, feature)[1]

    def _score(self, target: str, feature: str | None):
        pool_stores = self.datastore("pool", feature)
        target_stores = self.datastore(target)
        lrs = [c.lr for c in self.checkpoints()]
        return pipeline.score(
            pool_stores, target_stores, self.targets[target], lrs, self.score_cfg, self.pool
        )

    def select(
        self, target: str, cfg: SelectConfig | None = None, *, feature: str | None = None
    ) -> pl.DataFrame:
        """Top examples for ``target``; writes ``selection_dir(target)`` (jsonl + parquet)."""
        cfg = cfg or self.select_cfg
        long, agg = self._score(target, feature)
        top = select_top(agg, cfg)
        rel = self.reliability(target, feature)  # split-half check with every LESS selection
        self.last_reliability = rel
        if rel is not None and rel.r_full < 0.8:
            warnings.warn(f"{target}: {rel.text()}", stacklevel=2)
        top = top.join(
            self.pool.select("example_id", *self._extra_pool_columns()), on="example_id", how="left"
        )
        self.last_paths = write_selection(
            top, self.pool, self.selection_dir(target, feature), scores=long
        )
        return top

    def selection_dir(
        self, target: str, feature: str | None = None, balanced: bool = False
    ) -> Path:
        """Where ``select`` writes: ``selections/<target>`` for the paper's scoring, with the
        scoring method, aggregation and pool feature appended when they differ from the
        defaults (``selections/bbh-dot``), so variants never overwrite each other."""
        parts = [target]
        if self.score_cfg.method != "paper":
            parts.append(self.score_cfg.method)
        if self.score_cfg.aggregate != "max":
            parts.append(self.score_cfg.aggregate)
        if feature not in (None, "adam"):
            parts.append(feature)
        if balanced:
            parts.append("balanced")
        return self.run_dir / "selections" / "-".join(parts)

    def compare(self, target: str, **kwargs) -> pl.DataFrame:
        """The paper's Table 3 for ``target``: select with LESS and the baselines, fine-tune,
        evaluate, mean and std over seeds (``compare.compare``; resumable)."""
        from .compare import compare

        return compare(self, target, **kwargs)

    def reliability(self, target: str, feature: str | None = None):
        """Split-half projection reliability of ``target``'s scores (None for exact features)."""
        from .reliability import split_half

        pool_stores = self.datastore("pool", feature)
        if pool_stores[0].meta["projection"]["kind"] == "none":
            return None
        return split_half(
            pool_stores,
            self.datastore(target),
            self.targets[target],
            [c.lr for c in self.checkpoints()],
            self.score_cfg,
            self.select_cfg,
        )

    def select_balanced(
        self,
        target: str,
        cfg: SelectConfig | None = None,
        *,
        mode: str = "round_robin",
        cap: int | None = None,
        feature: str | None = None,
    ) -> pl.DataFrame:
        """Like ``select`` but spread over subtasks; writes ``selections/<target>-balanced/``
        (see ``selection_dir``)."""
        from .selection import select_balanced

        cfg = cfg or self.select_cfg
        long, _ = self._score(target, feature)
        top = select_balanced(long, cfg, mode=mode, cap=cap)
        self.last_paths = write_selection(
            top, self.pool, self.selection_dir(target, feature, balanced=True), scores=long
        )
        return top

    def diagnostics(
        self,
        target: str,
        selection: pl.DataFrame | None = None,
        *,
        feature: str | None = None,
        adam_sample: int = 8,
    ):
        """Can this selection be trusted? Reliability, Adam health, selection shape,
        truncation (``diagnostics.summary``; ``print`` it or use ``.frames()``)."""
        from .adam_health import adam_health
        from .diagnostics import summary
        from .selection import selection_report

        if selection is None:
            selection = self.select(target, feature=feature)
            rel = self.last_reliability  # made by select: the same stores and configs
        else:
            rel = self.reliability(target, feature)
        tok = self.tokenized("pool")
        report = selection_report(
            selection, self.pool, tok, subtasks=sorted(self.targets[target]["subtask"].unique())
        )
        adam = None
        if (feature or "adam") == "adam":
            adam = adam_health(
                self.checkpoints(),
                self.grad_cfg,
                model=self.model,
                tokenized=tok,
                pad_id=self.tokenizer.pad_token_id,
                sample=adam_sample,
            )
        return summary(
            self.datastore("pool", feature),
            self.datastore(target),
            self.targets[target],
            [c.lr for c in self.checkpoints()],
            score_cfg=self.score_cfg,
            select_cfg=self.select_cfg,
            selection=report,
            adam=adam,
            tokenized_pool=tok,
            dropped=self.dropped.get("pool"),
            pool=self.pool,
            reliability=rel,
        )

    def exact(self) -> Lab:
        """This run with unprojected features (projection='none'): exact cosines to compare."""
        return self.with_config(gradients=replace(self.grad_cfg, projection="none"))

    def explore(self, target: str, **views):
        """Interactive views of a finished selection (``widgets.explore``): top/negative
        examples, similarity curves, subset distribution, lengths, neighbours."""
        from .widgets import explore

        return explore(self, target, **views)

    def _extra_pool_columns(self) -> list[str]:
        return [c for c in ("skill", "form") if self.pool is not None and c in self.pool.columns]

    def with_config(self, **changes) -> Lab:
        """A Lab on the same run dir and data with some configs replaced, e.g.
        ``lab.with_config(scoring=replace(lab.score_cfg, method="dot"))``."""
        kwargs = {
            "data": self.data_cfg,
            "warmup": self.warmup_cfg,
            "gradients": self.grad_cfg,
            "scoring": self.score_cfg,
            "select": self.select_cfg,
            **changes,
        }
        lab = Lab(self.run_dir, model=self.model_name, progress=self.progress, **kwargs)
        lab.pool, lab.targets = self.pool, dict(self.targets)
        lab._model, lab._tokenizer, lab._model_fp = self._model, self._tokenizer, self._model_fp
        lab._peft = self._peft
        if "warmup" in changes:  # another LoRA shape needs a fresh, un-wrapped base model
            lab._model = lab._tokenizer = lab._peft = None
        lab._tokenized = dict(self._tokenized) if "data" not in changes else {}
        return lab


__all__ = ["Lab", "replace"]
