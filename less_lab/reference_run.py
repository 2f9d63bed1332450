"""Already ran LESS? A run of the reference code (princeton-nlp/LESS), explored here.

``ReferenceRun`` imports the reference's gradient tree (``core.reference``) next to the
user's pool and target files and then behaves like a ``Lab`` that has finished its
stores: ``scores`` (all three methods), ``select``, ``reliability``, ``explore`` and the
reference's own selection (``reference_selection``) side by side. :func:`export_reference`
writes any run's stores (a ``Lab`` or a ``ReferenceRun``) back in the reference layout,
with the arguments its ``matching.py`` needs.

What an import cannot give: the warmup checkpoints and the model (no Adam health, no
truncation report, no new stores) and per-example losses or gradient norms (the
reference does not save them); split-half reliability works, since the reference's
Rademacher projection has independent columns.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from less_lab import inspection
from less_lab.config import DataConfig, ScoreConfig, SelectConfig
from less_lab.core import pipeline
from less_lab.core.datastore import Store
from less_lab.core.hf_import import checkpoint_lrs
from less_lab.core.reference import (
    export_store,
    import_store,
    pool_name,
    read_reference_selection,
)
from less_lab.core.reference_files import ReferenceDir, scan_reference
from less_lab.core.selection import Selection, select_top, write_selection
from less_lab.data.formatting import tokenize
from less_lab.data.pool import read_pool
from less_lab.data.targets import read_targets
from less_lab.errors import DataError
from less_lab.layout import check_name
from less_lab.views.frames import prompt_completion
from less_lab.views.widgets import explore as explore_views


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """A reference warmup checkpoint: ``checkpoint-<step>`` and its epoch's mean lr."""

    step: int
    lr: float


class ReferenceRun:
    """A reference LESS run's gradients matched to the user's data files.

    ``grads``: the reference's gradient output (``<name>-ckpt<N>-<adam|sgd>/dim<d>/``);
    ``pool_files``: the training files in the order the reference read them (a mapping
    reference name -> file, or files whose names give it: ``flan_v2_data.jsonl`` ->
    ``flan_v2``); ``targets``: target name (the folder prefix, e.g. ``mmlu``) -> data
    (any layout ``read_targets`` reads, or a frame). Learning rates: ``lrs`` (one per
    checkpoint, or checkpoint -> lr) or the ``trainer_state.json`` files under
    ``checkpoints_dir``. Stores are written under ``out_dir`` (reused on a second call).
    """

    def __init__(
        self,
        grads: str | Path,
        out_dir: str | Path,
        *,
        pool_files: Sequence[str | Path] | Mapping[str, str | Path],
        targets: Mapping[str, Any],
        lrs: Sequence[float] | Mapping[int, float] | None = None,
        checkpoints_dir: str | Path | None = None,
        checkpoints: Sequence[int] | None = None,
        dim: int | None = None,
        pool_gradient: str = "adam",
        target_gradient: str = "sgd",
        prefer: str = "unnormalized",
        score_cfg: ScoreConfig = ScoreConfig(),
        select_cfg: SelectConfig = SelectConfig(),
        progress: bool = False,
    ):
        self.grads, self.out_dir = Path(grads), Path(out_dir)
        self.score_cfg, self.select_cfg = score_cfg, select_cfg
        named = (
            pool_files if isinstance(pool_files, Mapping) else {pool_name(f): f for f in pool_files}
        )
        self.names = {check_name(k, "pool file name"): str(v) for k, v in named.items()}
        self.pool = read_pool(list(self.names.values()), on_error="raise")
        self.targets = {
            check_name(t, "target"): v if isinstance(v, pl.DataFrame) else read_targets(v)
            for t, v in targets.items()
        }
        refs = scan_reference(self.grads)
        pool_refs = {n: [r for r in refs if r.name == n and r.gradient_type == pool_gradient]
                     for n in self.names}  # fmt: skip
        steps = sorted(checkpoints or {r.checkpoint for r in next(iter(pool_refs.values()))})
        if not steps:
            raise FileNotFoundError(
                f"{self.grads}: no {next(iter(self.names))}-ckpt<N>-{pool_gradient} folder"
            )
        self.dim = dim or _one_dim(pool_refs, steps, self.grads)
        lr_of = _lrs(lrs, checkpoints_dir, steps)
        self._checkpoints = [ReferenceCheckpoint(s, lr_of[s]) for s in steps]
        self._stores = {"pool": [self._import_pool(pool_refs, s, prefer, progress) for s in steps]}
        for t in self.targets:
            t_refs = [r for r in refs if r.name == t and r.gradient_type == target_gradient]
            self._stores[t] = [self._import_target(t, t_refs, s, prefer, progress) for s in steps]

    def _import_pool(self, pool_refs: dict, step: int, prefer: str, progress: bool) -> Store:
        counts = dict(self.pool.group_by("file", maintain_order=True).len().iter_rows())
        sources = [(_pick(pool_refs[n], step, self.dim, n, self.grads), counts.get(str(f), 0))
                   for n, f in self.names.items()]  # fmt: skip
        ids = [
            i
            for f in self.names.values()
            for i in self.pool.filter(pl.col("file") == str(f))["example_id"]
        ]
        dest = (
            self.out_dir
            / "stores"
            / "pool"
            / f"ckpt{step}"
            / f"{sources[0][0].gradient_type}-dim{self.dim}"
        )
        return import_store(sources, ids, dest, split="pool", prefer=prefer, progress=progress)

    def _import_target(self, target, refs, step, prefer, progress) -> Store:
        ref = _pick(refs, step, self.dim, target, self.grads)
        frame = self.targets[target]
        dest = (
            self.out_dir / "stores" / target / f"ckpt{step}" / f"{ref.gradient_type}-dim{self.dim}"
        )
        return import_store([(ref, frame.height)], frame["example_id"].to_list(), dest,
                            split=target, prefer=prefer, progress=progress)  # fmt: skip

    # ------------------------------------------------------------------ Lab-like API
    def checkpoints(self) -> list[ReferenceCheckpoint]:
        return list(self._checkpoints)

    def datastore(self, split: str = "pool") -> list[Store]:
        if split not in self._stores:
            raise KeyError(f"no split {split!r} (have {sorted(self._stores)})")
        return self._stores[split]

    def subtask_scores(self, target: str, method: str | None = None) -> pl.DataFrame:
        """Long frame ``example_id, source, subtask, score`` (one row per subtask)."""
        return self._score(target, method)[0]

    def scores(self, target: str, method: str | None = None) -> pl.DataFrame:
        """One row per pool example (max over subtasks); ``method``: paper,
        mean_of_shots (the reference's matching.py), dot."""
        return self._score(target, method)[1]

    def _score(self, target: str, method: str | None):
        cfg = (
            self.score_cfg if method is None else dataclasses.replace(self.score_cfg, method=method)
        )
        lrs = [c.lr for c in self._checkpoints]
        return pipeline.score(
            self.datastore("pool"),
            self.datastore(target),
            self.targets[target],
            lrs,
            cfg,
            self.pool,
        )

    def select(
        self, target: str, cfg: SelectConfig | None = None, method: str | None = None
    ) -> Selection:
        """less_lab's top examples for ``target``, written under ``out_dir/selections``."""
        long, agg = self._score(target, method)
        top = select_top(agg, cfg or self.select_cfg)
        out = (
            self.out_dir / "selections" / check_name(f"{target}-{method or self.score_cfg.method}")
        )
        paths = write_selection(top, self.pool, out, long)
        return Selection(target, top, paths, self.reliability(target), long)

    def reliability(self, target: str):
        """Split-half reliability (None, with a warning saying why, when unavailable)."""
        return inspection.reliability(self, target)

    def reference_selection(self, path: str | Path) -> pl.DataFrame:
        """The reference's ``top_p<p>.jsonl`` or ``sorted.csv``: ``example_id, score,
        rank, file``."""
        return read_reference_selection(path, self.pool, self.names)

    def lengths(self, tokenizer: Any = None) -> pl.DataFrame:
        """``example_id, n_tokens, n_completion_tokens`` of the pool: tokens with the
        run's ``tokenizer``, else whitespace-separated words (no model needed)."""
        if tokenizer is not None:
            return tokenize(self.pool, tokenizer, DataConfig())[0]
        pairs = [prompt_completion(m) for m in self.pool["messages"].to_list()]
        prompt = [len(p.split()) for p, _ in pairs]
        comp = [len(c.split()) for _, c in pairs]
        return pl.DataFrame({"example_id": self.pool["example_id"],
                             "n_tokens": [a + b for a, b in zip(prompt, comp, strict=True)],
                             "n_completion_tokens": comp})  # fmt: skip

    def explore(self, target: str, selections: Mapping[str, pl.DataFrame] | None = None,
                tokenizer: Any = None, method: str | None = None):  # fmt: skip
        """Top/negative examples, similarity curves, subset shares and lengths of less_lab's
        selection, with ``selections`` (e.g. the reference's own) side by side."""
        sel = self.select(target, method=method)
        return explore_views(sel.scores, sel.frame, self.pool, targets=self.targets[target],
                             selections=selections, tokenized=self.lengths(tokenizer))  # fmt: skip

    def __repr__(self) -> str:
        steps = [c.step for c in self._checkpoints]
        return (f"ReferenceRun({self.grads}: {len(self.pool)} pool examples, targets "
                f"{sorted(self.targets)}, checkpoints {steps}, dim {self.dim})")  # fmt: skip


def _one_dim(pool_refs: dict[str, list[ReferenceDir]], steps: list[int], root: Path) -> int:
    dims = {r.dim for refs in pool_refs.values() for r in refs if r.checkpoint in steps}
    if len(dims) != 1:
        raise DataError(
            f"projection dims {sorted(dims)} found", path=root, expected="dim=<one of them>"
        )
    return dims.pop()


def _pick(refs: list[ReferenceDir], step: int, dim: int, name: str, root: Path) -> ReferenceDir:
    """The folder of ``name`` at checkpoint ``step`` with dim ``dim``; refused naming what
    exists (a dim that differs between pool and target names both)."""
    at = [r for r in refs if r.checkpoint == step]
    match = [r for r in at if r.dim == dim]
    if match:
        return match[0]
    if at:
        raise DataError(
            f"{name!r} at checkpoint {step} has dims {sorted(r.dim for r in at)}, "
            f"the pool has dim {dim}",
            path=root,
            expected="pool and target gradients of the same projection dim",
        )
    have = sorted({r.checkpoint for r in refs})
    raise DataError(f"no folder for {name!r} at checkpoint {step} (it has {have})", path=root,
                    expected=f"{name}-ckpt{step}-<type>/dim{dim}")  # fmt: skip


def _lrs(lrs, checkpoints_dir, steps: list[int]) -> dict[int, float]:
    """Each checkpoint's weight: given (list or mapping) or read from trainer states."""
    if lrs is None:
        if checkpoints_dir is None:
            raise ValueError(
                "pass lrs= (each checkpoint's mean learning rate, as matching.py's "
                "--checkpoint_weights) or checkpoints_dir= (holding trainer_state.json)"
            )
        return checkpoint_lrs(checkpoints_dir, steps)
    if isinstance(lrs, Mapping):
        missing = [s for s in steps if s not in lrs]
        if missing:
            raise ValueError(f"lrs has no value for checkpoints {missing}")
        return {s: float(lrs[s]) for s in steps}
    if len(lrs) != len(steps):
        raise ValueError(f"{len(lrs)} learning rates for {len(steps)} checkpoints {steps}")
    return dict(zip(steps, map(float, lrs), strict=True))


def export_reference(run: Any, root: str | Path, targets: Sequence[str] = ()) -> dict:
    """Write a run's stores (a ``Lab`` or ``ReferenceRun``) in the reference layout under
    ``root``: the pool as one folder per pool file (``pool_name`` of each), each target
    as one folder. Returns what ``matching.py`` needs: ``train_file_names``, ``ckpts``,
    ``checkpoint_weights``, ``target_task_names`` and the path templates."""
    ckpts = run.checkpoints()
    steps = [int(getattr(c, "step", i + 1)) for i, c in enumerate(ckpts)]
    pool = run.pool.with_row_index("_row")
    files = pool.group_by("file", maintain_order=True).agg("_row").iter_rows()
    by_name = {pool_name(f): rows for f, rows in files}
    feature = None
    for step, store in zip(steps, run.datastore("pool"), strict=True):
        feature = store.meta["feature"]
        for name, rows in by_name.items():
            export_store(store, root, name, step, rows=rows)
    for t in targets:
        _warn_if_not_contiguous(run.targets[t], run.datastore(t)[0], t)
        for step, store in zip(steps, run.datastore(t), strict=True):
            export_store(store, root, t, step)
    dim = run.datastore("pool")[0].dim
    return {
        "train_file_names": list(by_name),
        "ckpts": steps,
        "checkpoint_weights": [float(c.lr) for c in ckpts],
        "target_task_names": list(targets),
        "gradient_path": f"{Path(root)}/{{}}-ckpt{{}}-{feature}/dim{dim}/all_orig.pt",
        "validation_gradient_path": f"{Path(root)}/{{}}-ckpt{{}}-sgd/dim{dim}/all_orig.pt",
    }


def _warn_if_not_contiguous(targets: pl.DataFrame, store: Store, name: str) -> None:
    """matching.py reshapes target rows as (subtasks, shots): they must come subtask by
    subtask with equal shot counts, else its mean mixes subtasks."""
    sub = dict(zip(targets["example_id"], targets["subtask"], strict=True))
    runs = [
        k for i, k in enumerate(sub[e] for e in store.ids) if i == 0 or k != sub[store.ids[i - 1]]
    ]
    sizes = pl.Series([sub[e] for e in store.ids]).value_counts()["count"].unique()
    if len(runs) != len(set(runs)) or len(sizes) > 1:
        warnings.warn(
            f"{name}: target rows are not grouped subtask by subtask with equal shots; "
            "the reference's matching.py (reshape to subtasks x shots) would mix subtasks",
            stacklevel=3,
        )
