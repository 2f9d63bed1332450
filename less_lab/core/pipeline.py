"""The LESS pipeline as plain functions: warmup → gradient datastore → scores → selection.

Each function takes frames / paths and returns frames / paths, caches nothing itself
beyond what it writes to the directory it is given, and is what both the ``Lab`` facade
and the CLI call. Data flows one way::

    pool, targets ─tokenize→ warmup checkpoints ─extract→ stores ─score→ scores ─select→ jsonl
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch

from less_lab._version import __version__
from less_lab.config import GradientConfig, ScoreConfig, WarmupConfig, to_dict
from less_lab.core.datastore import Store, build_store
from less_lab.core.gradients import BatchFeatures, iter_features
from less_lab.core.projection import make_projector
from less_lab.core.scoring import aggregate, long_frame, subtask_scores
from less_lab.core.training import Checkpoint, load_adapter, train_lora
from less_lab.data.batching import collate, token_budget_batches
from less_lab.model.device import model_device, to_host
from less_lab.model.loading import file_fingerprint
from less_lab.model.lora import block_names, block_shapes, lora_modules


def data_fingerprint(tokenized: pl.DataFrame) -> str:
    """Hash of the example ids, token ids and labels: what a store's rows were made from."""
    h = hashlib.sha256()
    for col in ("example_id", "input_ids", "labels"):
        h.update(
            tokenized[col]
            .cast(pl.String if col == "example_id" else tokenized[col].dtype)
            .hash(seed=0)
            .to_numpy()
            .tobytes()
        )
    return h.hexdigest()[:16]


def warmup_subset(tokenized_pool: pl.DataFrame, cfg: WarmupConfig) -> pl.DataFrame:
    """The seeded random fraction of the pool used for warmup training."""
    n = max(1, round(cfg.fraction * tokenized_pool.height))
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = sorted(torch.randperm(tokenized_pool.height, generator=gen)[:n].tolist())
    return tokenized_pool[rows]


def warmup(
    model: torch.nn.Module,
    tokenized_pool: pl.DataFrame,
    cfg: WarmupConfig,
    out_dir: str | Path,
    *,
    pad_id: int,
    model_fingerprint: str = "",
    progress: bool = True,
) -> list[Checkpoint]:
    """LoRA-train ``model`` (a PEFT model) on the warmup subset; one checkpoint per epoch.

    Resumes from the last finished epoch; refuses a directory made with other settings.
    """
    subset = warmup_subset(tokenized_pool, cfg)
    settings = {
        "warmup": to_dict(cfg),
        "data": data_fingerprint(subset),
        "model": model_fingerprint,
    }
    return train_lora(
        model, subset, cfg.train, out_dir, pad_id=pad_id, settings=settings, progress=progress
    )


def _plan(tokenized: pl.DataFrame, cfg: GradientConfig) -> list[list[int]]:
    """The split's batches, fixed by lengths and config alone: a resumed or multi-process
    build computes exactly these batches, so its features are bit-identical."""
    lengths = tokenized["n_tokens"].to_list()
    return token_budget_batches(lengths, cfg.token_budget, cfg.max_batch_examples)


def _batches(
    tokenized: pl.DataFrame,
    rows: list[int],
    plan: list[list[int]],
    pad_id: int,
    device: torch.device,
):
    """``(rows, batch)`` for each batch of ``plan`` holding any of ``rows``, on ``device``."""
    wanted = set(rows)
    ids_col, labels_col = tokenized["input_ids"], tokenized["labels"]
    for idx in plan:
        if wanted.intersection(idx):
            batch = collate([ids_col[i] for i in idx], [labels_col[i] for i in idx], pad_id)
            yield idx, {k: v.to(device) for k, v in batch.items()}


def _projector(cfg: GradientConfig, modules, device: torch.device):
    """The store's projector for these LoRA blocks, on the model's device."""
    sizes = [a * b for a, b in block_shapes(modules)]
    dim = sum(sizes) if cfg.projection == "none" else cfg.proj_dim
    return make_projector(
        cfg.projection,
        sizes,
        dim,
        cfg.proj_seed,
        sparse_nnz=cfg.sparse_nnz,
        device=device,
        cache_mb=cfg.sketch_cache_mb,
    )


def _adam_on(checkpoint: Checkpoint, device: torch.device):
    """The checkpoint's Adam moments in fp32 on ``device``, next to the gradients (the
    Adam transform is fp32 whatever the model dtype)."""
    adam = checkpoint.adam_state()
    adam.exp_avg = {k: v.to(device, torch.float32) for k, v in adam.exp_avg.items()}
    adam.exp_avg_sq = {k: v.to(device, torch.float32) for k, v in adam.exp_avg_sq.items()}
    return adam


def _on_host(features):
    """Each batch's features and statistics read back to the host (fp32) for the store."""
    for f in features:
        yield BatchFeatures(
            f.rows,
            to_host(f.features),
            to_host(f.loss),
            to_host(f.grad_norm),
            to_host(f.feature_norm),
        )


def store_settings(
    split: str,
    feature: str,
    cfg: GradientConfig,
    projector,
    *,
    model_fp: str,
    checkpoint: Checkpoint | None,
    data_fp: str,
) -> dict:
    """Everything that determines a store's values; a mismatch on reuse is refused."""
    ckpt = None
    if checkpoint is not None:
        ckpt = {"epoch": checkpoint.epoch, "fingerprint": file_fingerprint(checkpoint.path)}
    return {
        "split": split,
        "feature": feature,
        "dim": projector.proj_dim,
        "projection": projector.describe(),
        "model": model_fp,
        "checkpoint": ckpt,
        "data": data_fp,
        "dtype": cfg.store_dtype,
        "package_version": __version__,
        "adam": {
            "bias_correction": cfg.adam_bias_correction,
            "eps_inside_sqrt": cfg.adam_eps_inside_sqrt,
        }
        if feature == "adam"
        else None,
    }


def extract_store(
    model: torch.nn.Module,
    tokenized: pl.DataFrame,
    out_dir: str | Path,
    *,
    split: str,
    feature: str,
    cfg: GradientConfig,
    checkpoint: Checkpoint | None,
    pad_id: int,
    model_fingerprint: str = "",
    progress: bool = True,
    on_write: Callable[..., None] | None = None,
) -> Store:
    """Build (or resume, or reopen) the store of one split at one checkpoint.

    The checkpoint's adapter is loaded into ``model`` first; for ``adam`` features its
    optimizer moments are used. Features are computed in token-budget batches on the
    model's device. Under torchrun the batches are shared among the ranks (see
    ``less_lab.distributed``); ``on_write(rows)`` is called before rows are written.
    """
    if checkpoint is not None:
        load_adapter(model, checkpoint)
    model.eval()
    device = model_device(model)
    modules = lora_modules(model)
    names = block_names(modules)
    projector = _projector(cfg, modules, device)
    settings = store_settings(
        split,
        feature,
        cfg,
        projector,
        model_fp=model_fingerprint,
        checkpoint=checkpoint,
        data_fp=data_fingerprint(tokenized),
    )
    adam = _adam_on(checkpoint, device) if feature == "adam" and checkpoint is not None else None
    plan = _plan(tokenized, cfg)

    def compute(rows: list[int]):
        batches = _batches(tokenized, rows, plan, pad_id, device)
        return _on_host(
            iter_features(model, modules, names, batches, projector, feature, cfg, adam)
        )

    return build_store(
        out_dir,
        settings,
        tokenized["example_id"].to_list(),
        compute,
        units=plan,
        progress=progress,
        on_write=on_write,
    )


def score(
    pool_stores: list[Store],
    target_stores: list[Store],
    targets: pl.DataFrame,
    lrs: list[float],
    cfg: ScoreConfig = ScoreConfig(),
    pool: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(long per-subtask scores, aggregated one-per-example scores) for one target set."""
    matrix, subtasks = subtask_scores(pool_stores, target_stores, targets, lrs, cfg)
    sources = (
        dict(zip(pool["example_id"], pool["source"], strict=True)) if pool is not None else None
    )
    long = long_frame(matrix, subtasks, pool_stores[0].ids, sources)
    return long, aggregate(long, cfg.aggregate)
