"""Warmup checkpoints made elsewhere, converted into less_lab's checkpoint format.

A Hugging Face ``Trainer`` run (the reference LESS code trains its warmup this way)
leaves ``adapter_model.safetensors``, ``optimizer.pt`` and ``trainer_state.json`` per
checkpoint; :func:`import_hf_checkpoint` maps its Adam moments onto the PEFT model's
canonical LoRA names (checking every shape), reads the epoch's mean learning rate from
the logged history and seals the result like a checkpoint of our own trainer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from less_lab.core.store_files import naming_errors
from less_lab.core.training import Checkpoint, seal_checkpoint
from less_lab.model.lora import canonical_name


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
    with naming_errors(dest / "optimizer.safetensors", sum(t.nbytes for t in moments.values())):
        save_file(moments, dest / "optimizer.safetensors")
    info = {
        "epoch": epoch,
        "step": step or int(trainer.get("global_step", 0)),
        "lr": lr,
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "imported_from": str(src),
    }
    seal_checkpoint(dest, info)
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
