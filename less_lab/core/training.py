"""LoRA training with per-epoch checkpoints that keep what LESS needs: the adapter, the Adam
moments keyed by LoRA weight name, the step count, betas/eps and the epoch's mean learning
rate. Used for the warmup (§4.1) and for fine-tuning on a selection.

A checkpoint directory holds ``adapter/`` (PEFT format), ``optimizer.safetensors``
(``<name>.exp_avg`` / ``<name>.exp_avg_sq``) and ``state.json``, written last: an epoch
directory without ``state.json`` is incomplete and is redone on resume. ``state.json`` also
records the size and CRC32 of every other file, checked whenever one is read (a damaged
file raises ``StoreCorruptError`` naming it), and ``adapter_config.json`` is rewritten
canonically (sorted keys and ``target_modules``), so identical training gives identical
bytes and the same fingerprint whatever the process's hash seed.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import load as safetensors_from_bytes
from safetensors.torch import save_file
from tqdm.auto import tqdm

from less_lab._io import write_json
from less_lab.config import TrainConfig, record_settings, to_dict
from less_lab.core.gradients import AdamState
from less_lab.core.store_files import file_records, naming_errors
from less_lab.data.batching import collate, token_budget_batches
from less_lab.errors import StoreCorruptError
from less_lab.model.device import host_float, model_device, to_host
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
    files: dict = field(default_factory=dict)
    """``relative path -> [size, crc32]`` of the files written with the checkpoint."""

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def read(self, rel: str) -> bytes:
        """The bytes of a checkpoint file, checked against the size and CRC32 recorded in
        ``state.json`` (when recorded); ``StoreCorruptError`` naming the file otherwise."""
        fpath = self.path / rel
        try:
            data = fpath.read_bytes()
        except OSError as err:
            raise StoreCorruptError(f"{fpath}: unreadable ({err.strerror})") from None
        want = self.files.get(rel)
        if want is not None and [len(data), zlib.crc32(data)] != list(want):
            raise StoreCorruptError(
                f"{fpath}: size or checksum differs from {self.path / STATE_FILE} "
                f"({len(data)} bytes, expected {want[0]}); the checkpoint is corrupted"
            )
        return data

    def tensors(self, rel: str) -> dict[str, torch.Tensor]:
        """A checked safetensors file of the checkpoint."""
        data = self.read(rel)
        try:
            return safetensors_from_bytes(data)  # tensors only: never unpickles
        except Exception as err:  # safetensors raises its own error types
            raise StoreCorruptError(f"{self.path / rel}: unreadable ({err})") from None

    def adam_state(self) -> AdamState:
        """The saved moments as an ``AdamState`` keyed by canonical LoRA weight name."""
        tensors = self.tensors("optimizer.safetensors")
        avg = {k[: -len(".exp_avg")]: v for k, v in tensors.items() if k.endswith(".exp_avg")}
        sq = {k[: -len(".exp_avg_sq")]: v for k, v in tensors.items() if k.endswith(".exp_avg_sq")}
        return AdamState(avg, sq, self.step, self.betas, self.eps)

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """LoRA weights keyed by canonical name."""
        weights = self.tensors("adapter/adapter_model.safetensors")
        return {canonical_name(k): v for k, v in weights.items()}

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by ``train_lora`` (or converted from the HF Trainer)."""
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"{state_file}: missing; the checkpoint is incomplete")
        try:
            s = json.loads(state_file.read_text())
            args = (s["epoch"], s["step"], s["lr"], tuple(s["betas"]), s["eps"])
        except (ValueError, KeyError, TypeError) as err:
            raise StoreCorruptError(f"{state_file}: unreadable ({err!r})") from None
        return cls(path, *args, s.get("train_loss", float("nan")), s.get("files", {}))


def load_optimizer_state(checkpoint: Checkpoint) -> dict:
    """The full torch optimizer state saved with a checkpoint (checked)."""
    data = checkpoint.read("optimizer_full.pt")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        fpath = checkpoint.path / "optimizer_full.pt"
        raise StoreCorruptError(f"{fpath}: unreadable ({err})") from None


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


def warmup_steps(total: int, cfg: TrainConfig) -> int:
    """Warmup steps of a run of ``total`` optimizer steps: ``ceil(warmup_ratio x total)``,
    as the HF Trainer's ``get_warmup_steps`` (the reference's ``--warmup_ratio``)."""
    return math.ceil(cfg.warmup_ratio * total)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``: exactly what
    transformers' ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``
    (one half-cycle) give the step's ``optimizer.step()``, the HF Trainer stepping the
    scheduler after every optimizer step. Warmup rises from 0 (step 0 updates the Adam
    moments with a zero learning rate) and the decay ends one step short of 0."""
    warm = warmup_steps(total, cfg)
    if step < warm:
        return cfg.learning_rate * step / max(1, warm)
    if cfg.lr_scheduler == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return cfg.learning_rate * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return cfg.learning_rate * max(0.0, (total - step) / max(1, total - warm))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; a pure function of (seed, epoch) so a
    resumed run sees exactly the data order an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return to_host(torch.randperm(n, generator=gen)).tolist()  # a CPU draw, device-free


def _optimizer_step(model, optimizer, rows, data: pl.DataFrame, cfg: TrainConfig, pad_id) -> float:
    """One optimizer step over ``rows`` (micro-batched by token budget, so memory does not
    grow with batch size). Loss (``cfg.loss_average``): ``example``, each example's mean
    completion-token loss averaged over the step's examples (the reference's HF Trainer
    with one example per device and gradient accumulation); ``token``, the mean over all
    completion tokens of the step. Examples without completion tokens count for nothing."""
    lengths, device = [data["n_tokens"][i] for i in rows], model_device(model)
    n_comp = [data["n_completion_tokens"][i] for i in rows]
    n_ex, n_tok = max(1, sum(c > 0 for c in n_comp)), max(1, sum(n_comp))
    total = torch.zeros((), dtype=torch.float32, device=device)  # one host read per step
    for micro in token_budget_batches(lengths, cfg.token_budget):
        idx = [rows[i] for i in micro]
        batch = collate(
            [data["input_ids"][i] for i in idx], [data["labels"][i] for i in idx], pad_id
        )
        losses, row = completion_token_losses(model, {k: v.to(device) for k, v in batch.items()})
        if cfg.loss_average == "example":  # token weight 1 / (n_examples x own tokens)
            counts = torch.bincount(row, minlength=len(idx)).clamp_min(1).to(losses.dtype)
            loss = (losses / counts[row]).sum() / n_ex
        else:
            loss = losses.sum() / n_tok
        loss.backward()
        total += loss.detach().float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return host_float(total)


def _save_checkpoint(model, optimizer, path: Path, info: dict) -> Checkpoint:
    """Write adapter + moments + state (state last, via a temp dir renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    moments = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            st = optimizer.state[p]
            moments[f"{canonical_name(name)}.exp_avg"] = st["exp_avg"].contiguous()
            moments[f"{canonical_name(name)}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    need = sum(t.nbytes for t in moments.values())
    with naming_errors(tmp / "adapter", need // 2):
        # save_embedding_layers=False: PEFT would otherwise look the base model up on the hub
        model.save_pretrained(tmp / "adapter", save_embedding_layers=False)
    with naming_errors(tmp / "optimizer.safetensors", need):
        save_file(moments, tmp / "optimizer.safetensors")
    with naming_errors(tmp / "optimizer_full.pt", need):
        torch.save(optimizer.state_dict(), tmp / "optimizer_full.pt")
    seal_checkpoint(tmp, info)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return Checkpoint.load(path)


def seal_checkpoint(path: Path, info: dict) -> None:
    """Rewrite ``adapter_config.json`` canonically (PEFT lists ``target_modules`` in set
    order, which varies with the hash seed), then write ``state.json`` recording every
    file's size and CRC32."""
    config = path / "adapter" / "adapter_config.json"
    if config.exists():
        data = json.loads(config.read_text())
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = sorted(data["target_modules"])
        write_json(config, data)
    files = file_records(path, skip=STATE_FILE)
    write_json(path / STATE_FILE, {**info, "files": files})


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
        optimizer.load_state_dict(load_optimizer_state(done[-1]))
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
    changed is refused. ``on_epoch`` is called with every new checkpoint (evaluation hooks).
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
    done_steps = len(checkpoints) * steps_per_epoch
    bar = tqdm(total=total, initial=done_steps, desc="train", disable=not progress, unit="step")
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
