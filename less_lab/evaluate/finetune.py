"""Fine-tune a fresh LoRA on a selection and keep the best epoch (paper §5, appendix B).

Appendix B: the model is evaluated on the target's validation set (the same few-shot
examples LESS selected with) after every epoch, and the best checkpoint goes on to the
test set. "Best" is by validation *performance* by default (``val_score``: the task's
metric on the validation set, ``evaluators.task_eval``), as the reference evaluated its
checkpoints; validation loss (``metric="val_loss"``) is the option. Appendix I shows the
two often disagree. ``finetune`` does that with ``training.train_lora`` (one checkpoint per epoch,
resumable) and caches each epoch's metrics as ``metrics.json`` inside the epoch's
checkpoint directory, so a resumed or repeated call neither retrains nor re-evaluates.
The per-epoch history (train loss, validation loss, any other validation metric) is the
loss-versus-accuracy view of appendix I.

The base model may differ from the selection model (LESS-T): pass any model name that
``models.load_model`` accepts, an in-memory model, or a factory. An in-memory model is
deep-copied (a PEFT-wrapped one is copied and unwrapped), so the caller's model is never
changed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from peft import PeftModel

from less_lab.config import DataConfig, TrainConfig, to_dict
from less_lab.core.pipeline import data_fingerprint
from less_lab.core.training import Checkpoint, load_adapter, train_lora
from less_lab.data.formatting import tokenize
from less_lab.evaluate.evaluators import EvalFn, loss_eval, task_eval
from less_lab.evaluate.inference import inference
from less_lab.model.loading import model_fingerprint
from less_lab.model.lora import add_lora

METRICS_FILE = "metrics.json"
DEFAULT_DATA = DataConfig()
DEFAULT_TRAIN = TrainConfig()


@dataclass
class FinetuneResult:
    """A finished fine-tuning run: per-epoch history and the best epoch's model."""

    history: pl.DataFrame
    """One row per epoch: ``epoch, step, lr, train_loss`` and every validation metric."""
    best_epoch: int
    metric: str
    """The validation metric that chose ``best_epoch``."""
    checkpoints: list[Checkpoint]
    model: PeftModel
    """The fine-tuned model with the best epoch's adapter loaded, in eval mode."""
    tokenizer: Any
    out_dir: Path

    @property
    def best(self) -> Checkpoint:
        return self.checkpoints[self.best_epoch - 1]


def clean_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` without LoRA layers (a PEFT model is copied, then
    unwrapped: same base weights, the caller's model untouched)."""
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).unload()
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "model has LoRA layers injected but is not the PeftModel wrapping "
            "them; pass the PeftModel (e.g. Lab.model) or a model name"
        )
    return copy.deepcopy(model)


def resolve_model(
    base_model: Any, tokenizer: Any = None, *, device: Any = "auto", dtype: Any = "float32"
) -> tuple[torch.nn.Module, Any]:
    """``(fresh model, tokenizer)`` from a name (loaded onto ``device`` in ``dtype``), an
    in-memory model (copied, on its own device) or a factory returning a model or
    ``(model, tokenizer)``."""
    if isinstance(base_model, (str, Path)):
        from less_lab.model.loading import load_model

        model, loaded_tok = load_model(str(base_model), device=device, dtype=dtype)
        return model, tokenizer or loaded_tok
    if isinstance(base_model, torch.nn.Module):
        model = clean_copy(base_model)
    elif callable(base_model):
        model = base_model()
        if isinstance(model, tuple):
            model, tokenizer = model[0], tokenizer or model[1]
    else:
        raise TypeError(f"base_model must be a name, a model or a factory, not {type(base_model)}")
    if tokenizer is None:
        raise ValueError("an in-memory base model needs its tokenizer")
    return model, tokenizer


def frame_metrics(frame: pl.DataFrame, prefix: str = "") -> dict[str, float]:
    """The ``average`` row of an evaluation frame as ``{prefix + column: value}``."""
    row = frame.filter(pl.col("subtask") == "average").row(0, named=True)
    return {f"{prefix}{k}": float(v) for k, v in row.items() if k not in ("subtask", "n")}


def validation_fn(
    tokenizer: Any,
    val_targets: pl.DataFrame,
    *,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    extra: Mapping[str, EvalFn] | None = None,
    performance: bool = True,
) -> Callable[[Any], dict]:
    """The per-epoch evaluation of appendix B: ``val_loss`` (mean completion loss over
    the target's validation subtasks), ``val_score`` (the task metric on them, percent;
    left out with ``performance=False``) plus ``val_<name>_<metric>`` for ``extra``."""
    loss = loss_eval(val_targets, data_cfg=data_cfg, token_budget=token_budget)
    task = task_eval(val_targets, data_cfg=data_cfg, token_budget=token_budget)

    def run(model) -> dict[str, float]:
        out = {"val_loss": frame_metrics(loss(model, tokenizer))["loss"]}
        if performance:
            out["val_score"] = frame_metrics(task(model, tokenizer))["score"]
        for name, fn in (extra or {}).items():
            out |= frame_metrics(fn(model, tokenizer), f"val_{name}_")
        return out

    return run


def _read_metrics(ckpt: Checkpoint, eval_key: str) -> dict | None:
    path = ckpt.path / METRICS_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["metrics"] if saved.get("eval_key") == eval_key else None


def _evaluate(model, ckpt: Checkpoint, eval_fn: Callable[[Any], dict], eval_key: str) -> dict:
    """Run ``eval_fn`` in eval mode without gradients and cache its result next to the
    checkpoint (written via a temp file, so a crash never leaves half a JSON)."""
    with inference(model):
        metrics = {k: float(v) for k, v in eval_fn(model).items()}
    tmp = ckpt.path / (METRICS_FILE + ".tmp")
    tmp.write_text(
        json.dumps({"eval_key": eval_key, "epoch": ckpt.epoch, "metrics": metrics}, indent=1)
    )
    tmp.replace(ckpt.path / METRICS_FILE)
    return metrics


def best_epoch(history: pl.DataFrame, metric: str, maximize: bool | None = None) -> int:
    """Epoch with the best ``metric`` (lower for losses unless told otherwise); the
    earliest wins a tie, a NaN never wins."""
    if metric not in history.columns:
        raise KeyError(f"no validation metric {metric!r}; have {history.columns}")
    maximize = "loss" not in metric if maximize is None else maximize
    values = [
        (v if maximize else -v, -e)
        for e, v in zip(history["epoch"], history[metric], strict=True)
        if not math.isnan(v)
    ]
    if not values:
        raise ValueError(f"metric {metric!r} is NaN at every epoch")
    return -max(values)[1]


def finetune(
    base_model: Any,
    tokenizer: Any,
    train_frame: pl.DataFrame,
    eval_fn: Callable[[Any], dict],
    cfg: TrainConfig = DEFAULT_TRAIN,
    out_dir: str | Path = "finetune",
    data_cfg: DataConfig = DEFAULT_DATA,
    *,
    metric: str = "val_score",
    maximize: bool | None = None,
    eval_key: str = "",
    progress: bool = True,
) -> FinetuneResult:
    """Train a fresh LoRA (``cfg.lora``; paper: r=128, alpha=512, 4 epochs, lr 2e-5,
    linear warmup then decay) on ``train_frame`` (pool rows: ``example_id`` and
    ``messages``), call ``eval_fn(model) -> {metric: value}`` after every epoch, and load
    the best epoch by ``metric`` (default ``val_score``, the validation performance that
    ``validation_fn`` reports; ``val_loss`` is the option; ties go to the earliest
    epoch). ``eval_key`` names the evaluation: cached metrics made
    under another key are recomputed (the checkpoints are kept)."""
    model, tokenizer, tokenized = _model_and_data(base_model, tokenizer, train_frame, data_cfg)
    settings = {
        "data": data_fingerprint(tokenized),
        "model": model_fingerprint(model),
        "data_cfg": to_dict(data_cfg),
    }
    model = add_lora(model, cfg.lora, seed=cfg.seed)
    out_dir = Path(out_dir)
    done: dict[int, dict] = {}

    def on_epoch(ckpt: Checkpoint) -> None:
        done[ckpt.epoch] = _read_metrics(ckpt, eval_key) or _evaluate(
            model, ckpt, eval_fn, eval_key
        )

    ckpts = train_lora(
        model,
        tokenized,
        cfg,
        out_dir,
        pad_id=tokenizer.pad_token_id,
        settings=settings,
        on_epoch=on_epoch,
        progress=progress,
    )
    history = _history(model, ckpts, done, eval_fn, eval_key)
    best = best_epoch(history, metric, maximize)
    load_adapter(model, ckpts[best - 1])
    model.eval()
    return FinetuneResult(history, best, metric, ckpts, model, tokenizer, out_dir)


def _model_and_data(
    base_model: Any, tokenizer: Any, train_frame: pl.DataFrame, data_cfg: DataConfig
) -> tuple[torch.nn.Module, Any, pl.DataFrame]:
    """``(fresh model, tokenizer, tokenized train_frame)``; with a tokenizer given, the
    frame is tokenized before the model is loaded, so bad data fails fast."""
    tokenized, dropped = tokenize(train_frame, tokenizer, data_cfg) if tokenizer else (None, None)
    model, tokenizer = resolve_model(base_model, tokenizer)
    if tokenized is None:
        tokenized, dropped = tokenize(train_frame, tokenizer, data_cfg)
    if tokenized.height == 0:
        raise ValueError(f"nothing to train on: all {train_frame.height} examples were dropped")
    return model, tokenizer, tokenized


def _history(
    model,
    ckpts: list[Checkpoint],
    done: dict[int, dict],
    eval_fn: Callable[[Any], dict],
    eval_key: str,
) -> pl.DataFrame:
    """One row per epoch: ``epoch, step, lr, train_loss`` and the validation metrics
    (``done``, else cached, else computed now for an epoch trained before an interruption
    and never evaluated)."""
    rows = []
    for ckpt in ckpts:
        metrics = done.get(ckpt.epoch) or _read_metrics(ckpt, eval_key)
        if metrics is None:  # trained before an interruption, never evaluated
            load_adapter(model, ckpt)
            metrics = _evaluate(model, ckpt, eval_fn, eval_key)
        rows.append(
            {
                "epoch": ckpt.epoch,
                "step": ckpt.step,
                "lr": ckpt.lr,
                "train_loss": ckpt.train_loss,
                **metrics,
            }
        )
    return pl.DataFrame(rows)
