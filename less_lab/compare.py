"""LESS against its baselines, the paper's Table 3: select, fine-tune, evaluate, per seed.

For every (method, seed): select ``fraction`` of the pool (LESS through a ``Lab``; the
baselines through :mod:`less_lab.baselines`), fine-tune a fresh LoRA on it
(:func:`less_lab.finetune.finetune`, best epoch by ``val_metric`` on the target's
few-shot examples, appendix B: by default ``val_score``, the task metric, else e.g.
``val_loss``), then run the test evaluations on the best epoch. Every
stage is cached under ``out_dir/<method>/seed-<s>/`` (``selection.parquet``, the
training checkpoints with their per-epoch metrics, ``test.json``), so a killed
comparison resumes where it stopped. Test metrics are cached by evaluation *name*: an
evaluation added later runs on the cached best checkpoints; after changing what a name
evaluates, use a new name (or delete the ``test.json`` files).

Seeds (appendix A.2): for LESS a seed is the warmup-subset seed (each seed gets its own
warmup, datastore and selection in ``lab.run_dir/seeds/warmup-seed-<s>``; the lab's own
seed reuses the lab's run); for random and DSIR it drives the draw (DSIR resamples by
importance weight, as the paper did). BM25, RDS (base model's states) and the full pool
are deterministic and run once. The optimisation seed (``train_cfg.seed``) is the same
for every run, as in the paper.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from less_lab._io import write_json, write_parquet
from less_lab.config import SelectConfig, TrainConfig, fingerprint, record_settings, to_dict
from less_lab.core import baselines
from less_lab.core.paired import SHAPE, beats_random_table, paired_differences
from less_lab.core.scoring import aggregate
from less_lab.core.selection import select_top, selection_size
from less_lab.errors import ConfigError
from less_lab.evaluate.evaluators import EvalFn
from less_lab.evaluate.finetune import (
    clean_copy,
    finetune,
    frame_metrics,
    resolve_model,
    validation_fn,
)
from less_lab.model.device import model_device, model_dtype
from less_lab.overrides import remedy_settings

METHODS = ("less", "random", "bm25", "dsir", "rds")
DETERMINISTIC = frozenset({"bm25", "rds", "full"})
SETTINGS_FILE = "compare.json"


def base_model_copy(lab) -> Any:
    """A clean copy of the lab's selection model (LoRA removed), loaded if needed."""
    return clean_copy(lab.loaded_model())


def check_method(method: str) -> str:
    """A method name ``compare`` knows: a baseline, ``full``, ``less`` or ``less+<remedy>``
    (remedies of ``overrides.REMEDIES``, several joined with ``+``)."""
    head, *remedies = method.split("+")
    if head == "less":
        remedy_settings(remedies)  # refuses an unknown remedy, naming the known ones
    elif remedies or method not in (*METHODS, "full"):
        known = ", ".join([*METHODS, "full", "less+<remedy>"])
        raise ConfigError(f"method {method!r}: expected one of {known}", key="method")
    return method


def is_less(method: str) -> bool:
    """LESS or a LESS variant (one warmup per seed)."""
    return method.split("+")[0] == "less"


def select(
    lab, target: str, method: str, k: int, seed: int, *, dsir_resample: bool = True
) -> pl.DataFrame:
    """``rank, example_id, score, subtask`` of the ``k`` examples ``method`` picks."""
    cfg = SelectConfig(k=k)
    if is_less(method):
        variant = lab.with_remedies(*method.split("+")[1:])
        cfg = replace(variant.select_cfg, k=k)  # keeps the remedy's quotas / de-duplication
        top = variant.for_warmup_seed(seed).select(target, cfg).frame
    elif method == "full":
        top = (
            lab.pool.select("example_id")
            .with_columns(pl.lit(0.0).alias("score"), pl.lit("").alias("subtask"))
            .with_row_index("rank", 1)
        )
    else:
        pool, targets = lab.pool, lab.targets[target]
        if method == "dsir" and dsir_resample:
            top = baselines.dsir_resample(pool, targets, cfg, seed=seed)
        else:
            model = base_model_copy(lab) if method == "rds" else None
            tok = lab.tokenizer if method == "rds" else None
            long = baselines.baseline_scores(
                method, pool, targets, model=model, tokenizer=tok, data_cfg=lab.data_cfg, seed=seed
            )
            top = select_top(aggregate(long, lab.score_cfg.aggregate), cfg)
    return top.select(
        pl.col("rank").cast(pl.Int64),
        "example_id",
        pl.col("score").cast(pl.Float64),
        pl.col("subtask").cast(pl.String),
    )


def _selection_stats(lab, sel: pl.DataFrame) -> dict:
    """Length-bias and diversity diagnostics of a selection (DESIGN §2: check them)."""
    tok = lab.tokenized("pool").select("example_id", "n_completion_tokens")
    rows = sel.join(lab.pool.select("example_id", "source"), on="example_id", how="left")
    rows = rows.join(tok, on="example_id", how="left")
    top = rows["source"].value_counts(sort=True)
    return {
        "n_selected": sel.height,
        "sel_completion_tokens": float(rows["n_completion_tokens"].mean() or 0.0),
        "sel_top_source_share": float(top["count"][0] / sel.height) if sel.height else 0.0,
        "sel_n_subtasks": int(sel["subtask"].n_unique()),
    }


@dataclass(frozen=True)
class _Plan:
    """What every cell of one comparison shares (see ``compare``'s arguments)."""

    train_cfg: TrainConfig
    evals: Mapping[str, EvalFn]
    val_evals: Mapping[str, EvalFn]
    val_metric: str
    target_model: Any
    target_tokenizer: Any
    dsir_resample: bool
    token_budget: int
    val_score: bool = True


def _cached_selection(lab, target: str, method: str, seed: int, k: int, run_dir: Path, plan):
    sel_file = run_dir / "selection.parquet"
    if not sel_file.exists():
        sel = select(lab, target, method, k, seed, dsir_resample=plan.dsir_resample)
        write_parquet(sel_file, sel)
    return pl.read_parquet(sel_file)


def _test_metrics(result, tok, run_dir: Path, evals: Mapping[str, EvalFn]) -> dict:
    """Test metrics of the best checkpoint, cached by evaluation name in ``test.json``."""
    test_file = run_dir / "test.json"
    cached = json.loads(test_file.read_text()) if test_file.exists() else {}
    if cached.get("best_epoch") != result.best_epoch:
        cached = {"best_epoch": result.best_epoch, "metrics": {}}
    for name, fn in evals.items():
        if name not in cached["metrics"]:
            frame = fn(result.model, tok)
            write_parquet(run_dir / f"test_{name}.parquet", frame)
            cached["metrics"][name] = frame_metrics(frame, f"{name}_")
            write_json(test_file, cached)
    return {k: v for name in evals for k, v in cached["metrics"][name].items()}


def _run(lab, target: str, method: str, seed: int, k: int, run_dir: Path, plan: _Plan) -> dict:
    """One (method, seed) cell, every stage cached in ``run_dir``."""
    sel = _cached_selection(lab, target, method, seed, k, run_dir, plan)
    train = lab.pool.filter(pl.col("example_id").is_in(sel["example_id"].implode()))
    if plan.target_model is None:
        fresh, tok = base_model_copy(lab), lab.tokenizer
    else:
        here = lab.loaded_model()  # LESS-T: the target model goes where the selection model is
        fresh, tok = resolve_model(
            plan.target_model,
            plan.target_tokenizer,
            device=model_device(here),
            dtype=model_dtype(here),
        )
    val = validation_fn(
        tok,
        lab.targets[target],
        data_cfg=lab.data_cfg,
        token_budget=plan.token_budget,
        extra=plan.val_evals,
        performance=plan.val_score,
    )
    result = finetune(
        lambda: fresh,
        tok,
        train,
        val,
        plan.train_cfg,
        run_dir / "train",
        lab.data_cfg,
        metric=plan.val_metric,
        eval_key=",".join(["val_loss", *(["val_score"] * plan.val_score), *plan.val_evals]),
        progress=lab.progress,
    )
    best = result.history.filter(pl.col("epoch") == result.best_epoch).row(0, named=True)
    return {
        "method": method,
        "seed": seed,
        "best_epoch": result.best_epoch,
        **_selection_stats(lab, sel),
        **{k: v for k, v in best.items() if k.startswith("val_") or k == "train_loss"},
        **_test_metrics(result, tok, run_dir, plan.evals),
    }


def _cells(methods, seeds, include_full: bool, per_seed_warmup: bool, lab_seed: int):
    """``(method, seed)`` of every run: deterministic methods once, LESS once per warmup
    seed (or once, on the lab's own warmup, without ``per_seed_warmup``)."""
    for method in [*methods, *(["full"] if include_full else [])]:
        if is_less(method) and not per_seed_warmup:
            yield method, lab_seed
            continue
        for seed in seeds[:1] if method in DETERMINISTIC else seeds:
            yield method, seed


def _record(lab, target: str, n: int, out_dir: Path, plan: _Plan, per_seed_warmup: bool):
    tm = plan.target_model
    record_settings(
        out_dir / SETTINGS_FILE,
        {
            "target": target,
            "k": n,
            "train": to_dict(plan.train_cfg),
            "lab": fingerprint(lab.settings()),
            "pool": fingerprint(sorted(lab.pool["example_id"].to_list())),
            "targets": fingerprint(sorted(lab.targets[target]["example_id"].to_list())),
            "val_metric": plan.val_metric,
            **({} if plan.val_score else {"val_score": False}),
            "per_seed_warmup": per_seed_warmup,
            "dsir_resample": plan.dsir_resample,
            "target_model": None if tm is None else str(tm if isinstance(tm, str) else type(tm)),
        },
        refused="this comparison was run with other settings",
    )


def compare(
    lab,
    target: str,
    *,
    methods: Sequence[str] = METHODS,
    fraction: float = 0.05,
    k: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    train_cfg: TrainConfig | None = None,
    evals: Mapping[str, EvalFn] | None = None,
    val_evals: Mapping[str, EvalFn] | None = None,
    val_metric: str = "val_score",
    include_full: bool = False,
    out_dir: str | Path | None = None,
    target_model: Any = None,
    target_tokenizer: Any = None,
    per_seed_warmup: bool = True,
    dsir_resample: bool = True,
    token_budget: int = 4096,
    val_score: bool = True,
) -> pl.DataFrame:
    """Table 3: one row per method with ``<metric>_mean`` / ``<metric>_std`` over seeds.

    ``evals``: test evaluations ``{name: (model, tokenizer) -> frame}`` run on each best
    checkpoint (see ``evaluators.make_eval``); their ``average`` rows become columns
    ``<name>_<metric>``. ``train_cfg`` defaults to the lab's warmup training config.
    ``val_metric`` picks each run's best epoch: ``val_score`` (the task metric on the
    target's few-shot validation set, the default), ``val_loss``, or a
    ``val_<name>_<metric>`` of ``val_evals``. ``target_model`` (a name, model or factory,
    with ``target_tokenizer``) fine-tunes another model than the selection model (LESS-T).
    ``per_seed_warmup=False`` uses the lab's single warmup for every seed (LESS then runs
    once). ``val_score=False`` skips the per-epoch task metric on the target's examples
    (generation: the dominant cost for BBH on a CPU; then pick epochs by ``val_loss``).
    The long per-seed frame is ``out_dir/runs.parquet`` (:func:`load_runs`).
    """
    if lab.pool is None or target not in lab.targets:
        raise KeyError(f"the lab needs a pool and target {target!r} (have {list(lab.targets)})")
    methods = [check_method(m) for m in methods]
    if val_metric == "val_score" and not val_score:
        raise ConfigError("val_metric='val_score' needs val_score=True", key="val_metric")
    plan = _Plan(
        train_cfg or lab.warmup_cfg.train,
        dict(evals or {}),
        dict(val_evals or {}),
        val_metric,
        target_model,
        target_tokenizer,
        dsir_resample,
        token_budget,
        val_score,
    )
    out_dir = Path(out_dir) if out_dir is not None else lab.layout.compare_dir(target)
    n = selection_size(lab.pool.height, SelectConfig(fraction=fraction, k=k))
    _record(lab, target, n, out_dir, plan, per_seed_warmup)
    rows = []
    for method, seed in _cells(methods, seeds, include_full, per_seed_warmup, lab.warmup_cfg.seed):
        rows.append(_run(lab, target, method, seed, n, out_dir / method / f"seed-{seed}", plan))
        write_parquet(out_dir / "runs.parquet", pl.DataFrame(rows))
    return summary_table(pl.DataFrame(rows))


NOT_METRICS = frozenset({"seed", "best_epoch", "n_selected", "train_loss", *SHAPE})


def beats_random(
    runs: pl.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    baseline: str = "random",
    confidence: float = 0.95,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(table, diffs)``: does each method beat ``baseline``? Paired by seed (a LESS
    seed is a warmup-subset seed, paired with the random draw of the same seed), the mean
    difference with a Student-t interval (``core.paired``), on every metric (default:
    every numeric column of ``runs`` but the selection-shape and bookkeeping ones), with
    the selection's shape (completion length, top source share, subtasks) beside each
    row. ``views.paired.paired_figure(diffs)`` draws ``diffs``."""
    metrics = list(metrics or metric_columns(runs))
    table = beats_random_table(runs, metrics, baseline=baseline, confidence=confidence)
    diffs = paired_differences(runs, metrics, baseline=baseline, confidence=confidence)
    return table, diffs


def metric_columns(runs: pl.DataFrame) -> list[str]:
    """The outcome columns of a runs frame: held-out losses and task metrics."""
    return [c for c, t in runs.schema.items() if t.is_numeric() and c not in NOT_METRICS]


def load_runs(out_dir: str | Path) -> pl.DataFrame:
    """The long per-(method, seed) frame a comparison wrote."""
    return pl.read_parquet(Path(out_dir) / "runs.parquet")


def summary_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Mean and sample std over seeds of every numeric column, one row per method (in
    the order first seen); the std of a single run is null."""
    skip = {"method", "seed"}
    metrics = [c for c, t in runs.schema.items() if c not in skip and t.is_numeric()]
    aggs = [pl.len().alias("n_runs")]
    for c in metrics:
        aggs += [pl.col(c).mean().alias(f"{c}_mean"), pl.col(c).std().alias(f"{c}_std")]
    return runs.group_by("method", maintain_order=True).agg(aggs)


def paper_table(table: pl.DataFrame, metrics: Sequence[str], digits: int = 2) -> pl.DataFrame:
    """Table 3's layout: one row per metric, one column per method, "mean (std)"."""
    out: dict[str, list[str]] = {"metric": list(metrics)}
    for row in table.iter_rows(named=True):
        cells = []
        for m in metrics:
            mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
            cell = "-" if mean is None else f"{mean:.{digits}f}"
            cells.append(cell if std is None else f"{cell} ({std:.{digits}f})")
        out[row["method"]] = cells
    return pl.DataFrame(out)
