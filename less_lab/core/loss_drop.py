"""CoLoR-Filter scores: conditional loss reduction, an alternative to LESS's gradient cosine.

Source: Brandfonbrener, Zhang, Kirsch, Schwarz, Kakade, "CoLoR-Filter: Conditional Loss
Reduction Filtering for Targeted Language Model Pre-training" (NeurIPS 2024). From a
Bayesian view of selection, the pool examples worth training on for a target are those
whose likelihood rises most once the target is known, so each pool example x gets

    score(x) = loss(x | prior model) - loss(x | conditional model)

where the *prior* model was trained on prior (untargeted) data and the *conditional* model
is the prior further trained on the target's examples. A high score means the target data
makes x more likely; the top scores are selected (as every scorer here, higher = better).

How this package instantiates it:

* the prior model is the last LESS warmup checkpoint: its LoRA adapter was trained on a
  random share of the pool (``WarmupConfig.fraction``, 5% in §4.1), which is exactly a
  model trained on prior data;
* the conditional model is that adapter trained further on the target's examples
  (``ScoreConfig.loss_drop_epochs`` at peak ``ScoreConfig.loss_drop_lr``, the warmup's
  schedule without its warmup steps, a fresh optimizer), through the package's own
  ``train_lora``;
* one conditional model serves the whole target set (CoLoR-Filter conditions on all of
  the downstream data at once), so the long frame has one subtask;
* an example's loss is its mean completion-token loss (``model.lora.example_losses``, the
  loss LESS trains with), where CoLoR-Filter uses the summed sequence loss: a mean keeps
  long and short examples on one scale, as the rest of this package does.

No gradient store is built: two forward passes over the pool and a short training run on
the targets, each cached under the work directory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from less_lab._io import write_parquet
from less_lab.config import ScoreConfig, TrainConfig, record_settings
from less_lab.config import to_dict as config_dict
from less_lab.core.pipeline import data_fingerprint
from less_lab.core.scoring import long_frame
from less_lab.core.training import Checkpoint, load_adapter, train_lora
from less_lab.data.batching import collate, token_budget_batches
from less_lab.errors import StoreCorruptError
from less_lab.model.device import model_device, to_host
from less_lab.model.loading import file_fingerprint
from less_lab.model.lora import example_losses

SETTINGS_FILE = "loss_drop.json"
PRIOR_LOSSES = "prior_losses.parquet"
CONDITIONAL_LOSSES = "conditional_losses.parquet"
CONDITIONAL_DIR = "conditional"
REFUSED = "loss-drop scores were made with other settings"


def example_losses_of(
    model: torch.nn.Module,
    tokenized: pl.DataFrame,
    *,
    pad_id: int,
    token_budget: int = 4096,
    max_batch_examples: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Each example's mean completion-token loss under ``model`` as it is now, in row order.

    Batches follow the token budget (bounded memory whatever the lengths); the model runs
    in eval mode (no dropout: a score must not depend on a dropout draw) without gradients,
    on its own device. Right padding and the attention mask make a batched loss equal the
    example's own ``forward(labels=...)`` loss."""
    lengths = tokenized["n_tokens"].to_list()
    plan = token_budget_batches(lengths, token_budget, max_batch_examples)
    ids_col, labels_col = tokenized["input_ids"], tokenized["labels"]
    device = model_device(model)
    out = np.full(tokenized.height, np.nan, dtype=np.float64)
    model.eval()
    with torch.no_grad():
        for idx in tqdm(plan, desc="losses", disable=not progress, unit="batch"):
            batch = collate([ids_col[i] for i in idx], [labels_col[i] for i in idx], pad_id)
            losses = example_losses(model, {k: v.to(device) for k, v in batch.items()})
            out[idx] = to_host(losses).numpy()
    return out


def conditional_train_config(
    train_cfg: TrainConfig, n_targets: int, *, epochs: int, lr: float
) -> TrainConfig:
    """The warmup's training settings (LoRA shape, optimizer, loss, seed) turned into the
    conditional run's: ``epochs`` at peak ``lr`` with no warmup steps (the adapter is
    already trained), and a batch no larger than the target set: a step cannot average
    over more examples than there are, and the recorded config then says what ran."""
    if n_targets < 1:
        raise ValueError("loss_drop needs at least one target example to condition on")
    return replace(
        train_cfg,
        epochs=epochs,
        learning_rate=lr,
        batch_size=min(train_cfg.batch_size, n_targets),
        warmup_ratio=0.0,
    )


def prior_key(prior: Checkpoint) -> dict:
    """What identifies the prior model: its epoch and a hash of its files (adapter and
    optimizer state), as gradient stores record their checkpoint."""
    return {"epoch": prior.epoch, "fingerprint": file_fingerprint(prior.path)}


def train_conditional(
    model: torch.nn.Module,
    prior: Checkpoint,
    tokenized_target: pl.DataFrame,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    epochs: int,
    lr: float,
    pad_id: int,
    model_fingerprint: str = "",
    progress: bool = True,
) -> Checkpoint:
    """CoLoR-Filter's conditional model: the prior adapter trained on the target examples.

    ``train_lora`` trains whatever LoRA weights the model holds and builds a fresh
    optimizer, so loading the prior's adapter first is all it takes to start from it (the
    prior's Adam moments are not carried over: the conditional run is a new fine-tuning
    on new data). Checkpoints go to ``out_dir/epoch-<i>``: an interrupted run resumes from
    its last finished epoch, a finished one is reused without training, and a directory
    recorded with another prior, target set, model or config is refused
    (``SettingsMismatchError``). ``train_cfg`` is the warmup's; see
    :func:`conditional_train_config`. Leaves the conditional adapter in ``model``."""
    cfg = conditional_train_config(train_cfg, tokenized_target.height, epochs=epochs, lr=lr)
    settings = {
        "prior": prior_key(prior),
        "data": data_fingerprint(tokenized_target),
        "model": model_fingerprint,
    }
    load_adapter(model, prior)
    checkpoints = train_lora(
        model, tokenized_target, cfg, out_dir, pad_id=pad_id, settings=settings, progress=progress
    )
    load_adapter(model, checkpoints[-1])
    return checkpoints[-1]


def loss_drop_settings(
    prior: Checkpoint,
    tokenized_pool: pl.DataFrame,
    tokenized_target: pl.DataFrame,
    cfg: ScoreConfig,
    train_cfg: TrainConfig,
    model_fingerprint: str = "",
) -> dict:
    """Everything that determines the two loss vectors; cached losses made with anything
    else are refused. Only the ``loss_drop`` fields of ``cfg`` are recorded: aggregation
    and chunking act after the losses, so changing them reuses the cache."""
    n = tokenized_target.height
    run = conditional_train_config(train_cfg, n, epochs=cfg.loss_drop_epochs, lr=cfg.loss_drop_lr)
    return {
        "method": "loss_drop",
        "prior": prior_key(prior),
        "model": model_fingerprint,
        "pool": data_fingerprint(tokenized_pool),
        "target": {
            "data": data_fingerprint(tokenized_target),
            "ids": tokenized_target["example_id"].to_list(),
        },
        "scoring": {"loss_drop_epochs": cfg.loss_drop_epochs, "loss_drop_lr": cfg.loss_drop_lr},
        "train": config_dict(run),
    }


def read_losses(path: Path, ids: list[str]) -> np.ndarray:
    """A cached loss vector, checked to cover exactly ``ids`` in order (the recorded
    settings fix the pool, so a mismatch means the file was damaged or replaced)."""
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for a damaged file
        raise StoreCorruptError(f"{path}: unreadable ({err})") from None
    if frame.columns != ["example_id", "loss"] or frame["example_id"].to_list() != ids:
        raise StoreCorruptError(
            f"{path}: its example ids or columns differ from the pool it was recorded for; "
            "delete it to recompute"
        )
    return frame["loss"].to_numpy().astype(np.float64)


def write_losses(path: Path, ids: list[str], losses: np.ndarray) -> None:
    """One loss vector as parquet ``example_id, loss`` (atomic: all or nothing)."""
    frame = pl.DataFrame(
        {"example_id": ids, "loss": losses}, schema={"example_id": pl.String, "loss": pl.Float64}
    )
    write_parquet(path, frame)


def loss_drop_scores(
    model: torch.nn.Module,
    prior: Checkpoint,
    tokenized_pool: pl.DataFrame,
    tokenized_target: pl.DataFrame,
    cfg: ScoreConfig,
    train_cfg: TrainConfig,
    work_dir: str | Path,
    *,
    pad_id: int,
    sources: dict[str, str] | None = None,
    progress: bool = True,
    subtask_name: str = "all",
    model_fingerprint: str = "",
    token_budget: int = 4096,
    max_batch_examples: int = 16,
) -> pl.DataFrame:
    """CoLoR-Filter scores of the pool for one target set (Brandfonbrener et al. 2024):
    ``loss(x | prior) - loss(x | conditional)``, as the shared long frame
    ``example_id, source, subtask, score`` with the one subtask ``subtask_name``.

    The prior model is ``prior``, the last LESS warmup checkpoint (an adapter trained on
    a random share of the pool: CoLoR-Filter's model of the prior data); the conditional
    model is that adapter trained on all of ``tokenized_target`` (:func:`train_conditional`,
    ``cfg.loss_drop_epochs`` at ``cfg.loss_drop_lr``, from ``train_cfg``, the warmup's
    training settings): one conditional model for all subtasks, as in the paper. Losses
    are mean completion-token losses, where CoLoR-Filter sums over the sequence.

    Cached under ``work_dir``: ``loss_drop.json`` (the recorded settings, checked first:
    other settings are refused with ``SettingsMismatchError`` before any work),
    ``prior_losses.parquet`` and ``conditional_losses.parquet`` (``example_id, loss``)
    and ``conditional/`` (the conditional run's checkpoints): a finished call is reused
    with no training or forward pass. ``sources``: id -> source (default: the pool's
    ``source`` column). ``token_budget`` / ``max_batch_examples`` shape the loss batches
    only (not recorded). When it computes, it leaves the prior adapter in the model."""
    work_dir = Path(work_dir)
    settings = loss_drop_settings(
        prior, tokenized_pool, tokenized_target, cfg, train_cfg, model_fingerprint
    )
    record_settings(work_dir / SETTINGS_FILE, settings, REFUSED)
    fill_cache(
        model,
        prior,
        tokenized_pool,
        tokenized_target,
        cfg,
        train_cfg,
        work_dir,
        pad_id=pad_id,
        progress=progress,
        model_fingerprint=model_fingerprint,
        token_budget=token_budget,
        max_batch_examples=max_batch_examples,
    )
    ids = tokenized_pool["example_id"].to_list()
    prior_losses = read_losses(work_dir / PRIOR_LOSSES, ids)
    drop = prior_losses - read_losses(work_dir / CONDITIONAL_LOSSES, ids)
    return long_frame(drop[:, None], [subtask_name], ids, _sources(tokenized_pool, sources))


def fill_cache(
    model: torch.nn.Module,
    prior: Checkpoint,
    tokenized_pool: pl.DataFrame,
    tokenized_target: pl.DataFrame,
    cfg: ScoreConfig,
    train_cfg: TrainConfig,
    work_dir: Path,
    *,
    pad_id: int,
    progress: bool,
    model_fingerprint: str,
    token_budget: int,
    max_batch_examples: int,
) -> None:
    """Compute whichever of the two loss vectors ``work_dir`` lacks (the caller has
    checked the recorded settings): the prior's with the prior adapter loaded, then the
    conditional's after the conditional training (a finished run in ``conditional/`` is
    reused, an interrupted one resumed); the model gets the prior adapter back. Each
    vector is written once known: an interruption loses at most the one being computed."""
    ids = tokenized_pool["example_id"].to_list()
    batching = {"token_budget": token_budget, "max_batch_examples": max_batch_examples}
    prior_path, cond_path = work_dir / PRIOR_LOSSES, work_dir / CONDITIONAL_LOSSES
    if not prior_path.exists():
        load_adapter(model, prior)
        losses = example_losses_of(
            model, tokenized_pool, pad_id=pad_id, progress=progress, **batching
        )
        write_losses(prior_path, ids, losses)
    if cond_path.exists():
        return
    train_conditional(
        model,
        prior,
        tokenized_target,
        train_cfg,
        work_dir / CONDITIONAL_DIR,
        epochs=cfg.loss_drop_epochs,
        lr=cfg.loss_drop_lr,
        pad_id=pad_id,
        model_fingerprint=model_fingerprint,
        progress=progress,
    )
    losses = example_losses_of(model, tokenized_pool, pad_id=pad_id, progress=progress, **batching)
    write_losses(cond_path, ids, losses)
    load_adapter(model, prior)


def _sources(tokenized_pool: pl.DataFrame, sources: dict[str, str] | None) -> dict[str, str]:
    """The given id -> source map, else the pool's own ``source`` column (else none)."""
    if sources is not None:
        return sources
    if "source" not in tokenized_pool.columns:
        return {}
    return dict(zip(tokenized_pool["example_id"], tokenized_pool["source"], strict=True))
