"""LoRA training with per-epoch checkpoints that keep what LESS needs: the adapter, the Adam
moments keyed by LoRA weight name, the step count, betas/eps and the epoch's mean learning
rate. Used for the warmup (§4.1) and for fine-tuning on a selection.

A checkpoint directory holds ``adapter/`` (PEFT format), ``optimizer.safetensors``
(``<name>.exp_avg`` / ``<name>.exp_avg_sq``) and ``state.json``, written last: an epoch
directory without ``state.json`` is incomplete and is redone on resume.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from less_lab.config import TrainConfig, record_settings, to_dict
from less_lab.core.gradients import AdamState
from less_lab.data.batching import collate, token_budget_batches
from less_lab.model.lora import canonical_name, completion_token_losses

STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    """One warmup checkpoint (the model after epoch ``epoch``) and its optimizer state."""

    path: Path
    epoch: int
    step: int
    lr: float
    """Mean learning rate over the epoch's steps: the weight η̄_i of Eq. 2."""
    betas: tuple[float, float]
    eps: float
    train_loss: float = float("nan")

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def adam_state(self) -> AdamState:
        """The saved moments as an ``AdamState`` keyed by canonical LoRA weight name."""
        tensors = load_file(self.path / "optimizer.safetensors")
        avg = {k[: -len(".exp_avg")]: v for k, v in tensors.items() if k.endswith(".exp_avg")}
        sq = {k[: -len(".exp_avg_sq")]: v for k, v in tensors.items() if k.endswith(".exp_avg_sq")}
        return AdamState(avg, sq, self.step, self.betas, self.eps)

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """LoRA weights keyed by canonical name."""
        weights = load_file(self.adapter_dir / "adapter_model.safetensors")
        return {canonical_name(k): v for k, v in weights.items()}

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by ``train_lora`` (or converted from the HF Trainer)."""
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"{state_file}: missing; the checkpoint is incomplete")
        s = json.loads(state_file.read_text())
        return cls(
            path,
            s["epoch"],
            s["step"],
            s["lr"],
            tuple(s["betas"]),
            s["eps"],
            s.get("train_loss", float("nan")),
        )


def load_adapter(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's LoRA weights into a PEFT model (same LoRA shape required)."""
    weights = checkpoint.adapter_weights()
    params = {canonical_name(n): p for n, p in model.named_parameters() if "lora_" in n}
    missing = sorted(set(params) - set(weights))
    if missing:
        raise KeyError(
            f"{checkpoint.adapter_dir}: no weight for {missing[0]} "
            f"({len(missing)} missing); was it trained with the same LoRA settings?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != weights[name].shape:
                raise ValueError(
                    f"{checkpoint.adapter_dir}: {name} has shape "
                    f"{tuple(weights[name].shape)}, model expects {tuple(p.shape)}"
                )
            p.copy_(weights[name])


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then decay."""
    warm = math.ceil(cfg.warmup_ratio * total)
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.lr_scheduler == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.learning_rate * max(0.0, 1 - progress)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; a pure function of (seed, epoch) so a
    resumed run sees exactly the data order an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _optimizer_step(model, optimizer, rows, data: pl.DataFrame, cfg: TrainConfig, pad_id) -> float:
    """One optimizer step over ``rows``; loss = mean over all completion tokens of the
    step (micro-batched by token budget, so memory does not grow with batch size)."""
    lengths = [data["n_tokens"][i] for i in rows]
    n_tok = sum(data["n_completion_tokens"][i] for i in rows)
    total = 0.0
    for micro in token_budget_batches(lengths, cfg.token_budget):
        idx = [rows[i] for i in micro]
        batch = collate(
            [data["input_ids"][i] for i in idx], [data["labels"][i] for i in idx], pad_id
        )
        losses, _ = completion_token_losses(model, batch)
        loss = losses.sum() / n_tok
        loss.backward()
        total += loss.item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _save_checkpoint(model, optimizer, path: Path, info: dict) -> Checkpoint:
    """Write adapter + moments + state (state last, via a temp dir renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # save_embedding_layers=False: PEFT would otherwise look the base model up on the hub
    model.save_pretrained(tmp / "adapter", save_embedding_layers=False)
    moments = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            st = optimizer.state[p]
            moments[f"{canonical_name(name)}.exp_avg"] = st["exp_avg"].contiguous()
            moments[f"{canonical_name(name)}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    save_file(moments, tmp / "optimizer.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer_full.pt")
    (tmp / STATE_FILE).write_text(json.dumps(info, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return Checkpoint.load(path)


def _resume(model, optimizer, out_dir: Path, epochs: int) -> list[Checkpoint]:
    """Load the last complete epoch checkpoint (if any) into model and optimizer."""
    done = []
    for epoch in range(1, epochs + 1):
        path = out_dir / f"epoch-{epoch}"
        if not (path / STATE_FILE).exists():
            break
        done.append(Checkpoint.load(path))
    if done:
        load_adapter(model, done[-1])
        state = torch.load(done[-1].path / "optimizer_full.pt", weights_only=True)
        optimizer.load_state_dict(state)
    return done


def train_lora(
    model: torch.nn.Module,
    data: pl.DataFrame,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    pad_id: int,
    settings: dict | None = None,
    on_epoch: Callable[[Checkpoint], None] | None = None,
    progress: bool = True,
) -> list[Checkpoint]:
    """Train the LoRA weights of a PEFT ``model`` on tokenized ``data`` for ``cfg.epochs``.

    Saves one checkpoint per epoch under ``out_dir/epoch-<i>`` and resumes from the last
    complete one if the run was interrupted (the data order and dropout seeds are functions
    of (seed, epoch), so a resumed run equals an uninterrupted one). ``settings`` (e.g.
    model and data fingerprints) are recorded with the config; resuming with any of them
    changed is refused. ``on_epoch`` is called
    with every new checkpoint (evaluation hooks use it).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_settings(out_dir / "train_config.json", {"config": to_dict(cfg), **(settings or {})})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    n = data.height
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    checkpoints = _resume(model, optimizer, out_dir, cfg.epochs)
    model.train()
    bar = tqdm(
        total=total,
        initial=len(checkpoints) * steps_per_epoch,
        desc="train",
        disable=not progress,
        unit="step",
    )
    for epoch in range(len(checkpoints) + 1, cfg.epochs + 1):
        lrs, losses = _train_epoch(model, optimizer, data, cfg, pad_id, epoch, bar)
        info = _epoch_state(cfg, epoch, epoch * steps_per_epoch, n, lrs, losses)
        ckpt = _save_checkpoint(model, optimizer, out_dir / f"epoch-{epoch}", info)
        checkpoints.append(ckpt)
        if on_epoch is not None:
            on_epoch(ckpt)
    bar.close()
    model.eval()
    return checkpoints


def _train_epoch(
    model, optimizer, data: pl.DataFrame, cfg: TrainConfig, pad_id: int, epoch: int, bar: tqdm
) -> tuple[list[float], list[float]]:
    """The optimizer steps of one epoch (1-based); returns each step's learning rate and
    loss. The dropout stream and data order are functions of (seed, epoch) alone."""
    n = data.height
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout stream of this epoch
    order = _epoch_order(n, cfg.seed, epoch)
    lrs, losses = [], []
    for s in range(steps_per_epoch):
        step = (epoch - 1) * steps_per_epoch + s
        lr = lr_at(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        losses.append(_optimizer_step(model, optimizer, rows, data, cfg, pad_id))
        lrs.append(lr)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
    return lrs, losses


def _epoch_state(
    cfg: TrainConfig, epoch: int, step: int, n: int, lrs: list[float], losses: list[float]
) -> dict:
    """The ``state.json`` of an epoch checkpoint: ``lr`` and ``train_loss`` are the means
    over the epoch's steps."""
    return {
        "epoch": epoch,
        "step": step,
        "lr": sum(lrs) / len(lrs),
        "betas": list(cfg.betas),
        "eps": cfg.eps,
        "train_loss": sum(losses) / len(losses),
        "n_examples": n,
        "config": to_dict(cfg),
    }


def import_hf_checkpoint(
    src: str | Path, model: torch.nn.Module, dest: str | Path, *, lr: float | None = None
) -> Checkpoint:
    """Convert a Hugging Face ``Trainer`` checkpoint (``adapter_model.safetensors``,
    ``optimizer.pt``, ``trainer_state.json``) of a PEFT ``model`` into our format.

    The Trainer keys optimizer state by integer position (its parameter groups list the
    trainable parameters in ``named_parameters`` order) or, under FSDP, by name; both are
    mapped to canonical LoRA names and every shape is checked. The epoch's mean learning
    rate is read from the logged history unless ``lr`` is given.
    """
    src, dest = Path(src), Path(dest)
    opt_file = src / "optimizer.pt"
    if not opt_file.exists():
        raise FileNotFoundError(f"{opt_file}: not found; LESS needs the optimizer state")
    opt = torch.load(opt_file, map_location="cpu", weights_only=True)
    trainer = json.loads((src / "trainer_state.json").read_text())
    moments, step = _hf_moments(opt, model, opt_file)
    group = opt["param_groups"][0]
    epoch = max(1, round(float(trainer.get("epoch", 1))))
    if lr is None:
        lr = _hf_epoch_lr(trainer, epoch, src)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        src,
        dest / "adapter",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("optimizer.pt", "*.pth", "rng_state*"),
    )
    save_file(moments, dest / "optimizer.safetensors")
    info = {
        "epoch": epoch,
        "step": step or int(trainer.get("global_step", 0)),
        "lr": lr,
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "imported_from": str(src),
    }
    (dest / STATE_FILE).write_text(json.dumps(info, indent=1))
    return Checkpoint.load(dest)


def _hf_moments(
    opt: dict, model: torch.nn.Module, opt_file: Path
) -> tuple[dict[str, torch.Tensor], int]:
    """The Trainer's Adam moments keyed ``<canonical name>.exp_avg`` / ``.exp_avg_sq``
    (fp32, shapes checked against the model) and the step count of the last entry."""
    params = [(canonical_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    order = [i for g in opt["param_groups"] for i in g["params"]]
    moments, step = {}, 0
    for pos, key in enumerate(order):
        if isinstance(key, str):
            name = canonical_name(key)
            shape = dict(params)[name].shape if name in dict(params) else None
        else:
            if pos >= len(params):
                raise ValueError(
                    f"{opt_file}: {len(order)} optimizer entries, model has "
                    f"{len(params)} trainable tensors"
                )
            name, shape = params[pos][0], params[pos][1].shape
        st = opt["state"][key]
        if shape is None or st["exp_avg"].shape != shape:
            raise ValueError(f"{opt_file}: entry {key} does not match {name} {shape}")
        moments[f"{name}.exp_avg"] = st["exp_avg"].float().contiguous()
        moments[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].float().contiguous()
        step = int(st["step"])
    return moments, step


def _hf_epoch_lr(trainer: dict, epoch: int, src: Path) -> float:
    """The mean of the learning rates the Trainer logged during ``epoch``."""
    logged = [
        h["learning_rate"]
        for h in trainer.get("log_history", [])
        if "learning_rate" in h and epoch - 1 < h.get("epoch", 0) <= epoch
    ]
    if not logged:
        raise ValueError(
            f"{src / 'trainer_state.json'}: no learning rates logged for "
            f"epoch {epoch}; pass lr= explicitly"
        )
    return sum(logged) / len(logged)
