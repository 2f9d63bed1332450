"""Warmup checkpoints made elsewhere, converted into less_lab's checkpoint format.

A Hugging Face ``Trainer`` run (the reference LESS code trains its warmup this way)
leaves, per ``checkpoint-<step>/``, the adapter (``adapter_model.safetensors`` or
``.bin``), the optimizer state and ``trainer_state.json``. The optimizer state is
``optimizer.pt`` keyed by integer position (plain Trainer) or ``optimizer.bin`` keyed by
parameter name (the reference's FSDP runs, read by its ``get_info.py`` as
``torch.load(...)["state"][name]``). :func:`import_hf_checkpoint` maps the Adam moments onto
the PEFT model's canonical LoRA names (every name and shape checked, any mismatch
refused), reads the epoch's mean learning rate from the logged history
(:func:`epoch_lr`, robust to coarse logging) unless given, and seals the result like a
checkpoint of our own trainer. Every file is loaded with ``weights_only=True``: tensors
and plain containers only, never unpickled objects.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from less_lab.core.store_files import naming_errors
from less_lab.core.training import Checkpoint, seal_checkpoint
from less_lab.errors import DataError, StoreCorruptError
from less_lab.model.lora import canonical_name

OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
REFERENCE_ADAM = ((0.9, 0.999), 1e-8)
"""Betas and eps the reference's ``obtain_gradients_with_adam`` hard-codes (used when an
optimizer file records no parameter groups)."""
_SKIP = ("*.pt", "*.bin", "*.pth", "rng_state*", "global_step*")


def load_tensors(path: Path) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only. Anything
    that needs unpickling arbitrary objects is refused, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise StoreCorruptError(
            f"{path}: not loadable as plain tensors ({type(err).__name__}: {err}); "
            "less_lab reads torch files with weights_only=True and never unpickles objects"
        ) from None


def import_hf_checkpoint(
    src: str | Path,
    model: torch.nn.Module,
    dest: str | Path,
    *,
    lr: float | None = None,
    epoch: int | None = None,
) -> Checkpoint:
    """Convert a Hugging Face ``Trainer`` (or FSDP) checkpoint of a PEFT ``model`` into
    our format under ``dest``.

    The optimizer state (``optimizer.pt`` by position or ``optimizer.bin`` by name) is
    mapped to canonical LoRA names; a count, name or shape that does not match the model's
    trainable tensors is refused. ``lr`` (the epoch's mean learning rate, the checkpoint's
    weight in Eq. 2) and ``epoch`` default to what ``trainer_state.json`` records.
    """
    src, dest = Path(src), Path(dest)
    opt_file = next((src / f for f in OPTIMIZER_FILES if (src / f).exists()), None)
    if opt_file is None:
        raise FileNotFoundError(
            f"{src}: no {' or '.join(OPTIMIZER_FILES)}; LESS needs the optimizer state"
        )
    opt = load_tensors(opt_file)
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
        raise DataError("no 'state' mapping", path=opt_file, expected="a torch optimizer state")
    trainer = _trainer_state(src, required=lr is None or epoch is None)
    moments, step = _hf_moments(opt, model, opt_file)
    groups = opt.get("param_groups") or [{}]
    betas = tuple(groups[0].get("betas", REFERENCE_ADAM[0]))
    eps = groups[0].get("eps", REFERENCE_ADAM[1])
    epoch = epoch if epoch is not None else max(1, round(float(trainer.get("epoch", 1))))
    lr = lr if lr is not None else epoch_lr(trainer, epoch, src / "trainer_state.json")
    dest.mkdir(parents=True, exist_ok=True)
    _copy_adapter(src, dest / "adapter")
    with naming_errors(dest / "optimizer.safetensors", sum(t.nbytes for t in moments.values())):
        save_file(moments, dest / "optimizer.safetensors")
    info = {
        "epoch": int(epoch),
        "step": step or int(trainer.get("global_step", 0)),
        "lr": float(lr),
        "betas": [float(b) for b in betas],
        "eps": float(eps),
        "imported_from": str(src),
        "optimizer_file": opt_file.name,
    }
    seal_checkpoint(dest, info)
    return Checkpoint.load(dest)


def _trainer_state(src: Path, required: bool) -> dict:
    path = src / "trainer_state.json"
    if not path.exists():
        if required:
            raise FileNotFoundError(
                f"{path}: not found; pass lr= and epoch= (the epoch's mean learning rate)"
            )
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"unreadable ({err})", path=path, expected="JSON") from None


def _copy_adapter(src: Path, dest: Path) -> None:
    """The adapter files (no optimizer, scheduler or RNG state); a pickled
    ``adapter_model.bin`` becomes ``adapter_model.safetensors`` (loaded tensors-only)."""
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_SKIP))
    if (dest / "adapter_model.safetensors").exists():
        return
    legacy = src / "adapter_model.bin"
    if not legacy.exists():
        raise FileNotFoundError(f"{src}: no adapter_model.safetensors or adapter_model.bin")
    weights = load_tensors(legacy)
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise DataError("not a mapping of tensors", path=legacy, expected="a LoRA state dict")
    save_file({k: v.contiguous() for k, v in weights.items()}, dest / "adapter_model.safetensors")


def _fsdp_name(key: str) -> str:
    """A parameter name as FSDP/DDP may record it, without their wrapper segments."""
    return canonical_name(re.sub(r"(^|\.)(_fsdp_wrapped_module|module)\.", r"\1", key))


def _hf_moments(
    opt: dict, model: torch.nn.Module, opt_file: Path
) -> tuple[dict[str, torch.Tensor], int]:
    """The moments keyed ``<canonical name>.exp_avg`` / ``.exp_avg_sq`` (fp32) and the step
    count. Integer keys follow the trainable parameters' order; names are matched by name.
    Every trainable tensor must be covered exactly once, with its own shape."""
    params = {canonical_name(n): p.shape for n, p in model.named_parameters() if p.requires_grad}
    order = [i for g in opt.get("param_groups", []) for i in g.get("params", [])]
    order = order or list(opt["state"])
    by_position = [k for k in order if not isinstance(k, str)]
    if by_position and len(order) != len(params):
        raise DataError(
            f"{len(order)} optimizer entries for {len(params)} trainable tensors of the model",
            path=opt_file,
            expected="the state of exactly the model's LoRA parameters, in order",
        )
    names = list(params)
    moments, step = {}, 0
    for pos, key in enumerate(order):
        name = _fsdp_name(key) if isinstance(key, str) else names[pos]
        st = opt["state"].get(key)
        if name not in params or st is None or "exp_avg" not in st:
            raise DataError(
                f"entry {key!r} ({name}) has no Adam state or no trainable tensor of that name",
                path=opt_file,
                expected=f"one of {len(params)} LoRA tensors, e.g. {names[0]}",
            )
        if st["exp_avg"].shape != params[name] or st["exp_avg_sq"].shape != params[name]:
            raise DataError(
                f"entry {key!r}: moments of shape {tuple(st['exp_avg'].shape)} for {name}",
                path=opt_file,
                expected=f"shape {tuple(params[name])}",
            )
        moments[f"{name}.exp_avg"] = st["exp_avg"].float().contiguous()
        moments[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].float().contiguous()
        step = int(st.get("step", 0))
    missing = [n for n in names if f"{n}.exp_avg" not in moments]
    if missing:
        raise DataError(
            f"no optimizer state for {len(missing)} trainable tensors, e.g. {missing[0]}",
            path=opt_file,
            expected="the state of every LoRA parameter of the model",
        )
    return moments, step


def epoch_lr(trainer: dict, epoch: int, source: Path | str = "trainer_state.json") -> float:
    """The mean learning rate of ``epoch`` (1-based) from a ``trainer_state.json`` dict.

    Logged every step (the reference logs with ``--logging_steps 1``), it is the mean of
    the values logged in the epoch. Logged coarsely (fewer values than the epoch has
    steps, or none at all in it), the schedule is interpolated linearly between every
    logged value (held flat beyond the first and last) at each of the epoch's steps: exact
    for a linear decay, close for cosine. No learning rate logged at all: refused."""
    log = [h for h in trainer.get("log_history", []) if "learning_rate" in h and "epoch" in h]
    if not log:
        raise DataError(
            "no learning rate logged", path=source, expected="log_history entries or lr="
        )
    in_epoch = [h["learning_rate"] for h in log if epoch - 1 < h["epoch"] <= epoch + 1e-9]
    steps = _steps_per_epoch(trainer, log)
    if in_epoch and (steps is None or len(in_epoch) >= steps):
        return float(np.mean(in_epoch))
    xs = np.array([h["step"] / steps if steps and h.get("step") else h["epoch"] for h in log])
    ys = np.array([h["learning_rate"] for h in log], dtype=np.float64)
    order = np.argsort(xs, kind="stable")
    k = steps or 1000
    return float(_interpolate(epoch - 1 + np.arange(1, k + 1) / k, xs[order], ys[order]).mean())


def _interpolate(at: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear through the logged points, extended linearly past both ends
    (a coarse log misses the first and last steps), never below 0."""
    out = np.interp(at, xs, ys)
    if len(xs) >= 2 and xs[1] > xs[0] and xs[-1] > xs[-2]:
        lo, hi = at < xs[0], at > xs[-1]
        out[lo] = ys[0] + (at[lo] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
        out[hi] = ys[-1] + (at[hi] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return np.clip(out, 0.0, None)


def _steps_per_epoch(trainer: dict, log: list[dict]) -> int | None:
    """Optimizer steps per epoch: ``global_step / epoch`` of the state, else of the last
    logged entry that records its step; None when neither is known."""
    pairs = [(trainer.get("global_step"), trainer.get("epoch"))]
    pairs += [(h.get("step"), h["epoch"]) for h in reversed(log)]
    for step, ep in pairs:
        if step and ep and float(ep) >= 1:
            return max(1, round(float(step) / float(ep)))
    return None


def checkpoint_lrs(checkpoints_dir: str | Path, steps: list[int]) -> dict[int, float]:
    """Each reference checkpoint's weight: the mean learning rate of the epoch that ends
    at ``checkpoint-<step>``, read from the ``trainer_state.json`` files under
    ``checkpoints_dir`` (the one with the longest history serves every checkpoint; the
    epoch of each comes from its own state, else its step / steps per epoch)."""
    root = Path(checkpoints_dir)
    states = {p: json.loads(p.read_text()) for p in sorted(root.glob("**/trainer_state.json"))}
    if not states:
        raise FileNotFoundError(f"{root}: no trainer_state.json; pass the learning rates")
    richest, trainer = max(states.items(), key=lambda kv: len(kv[1].get("log_history", [])))
    log = [h for h in trainer.get("log_history", []) if "epoch" in h]
    per_epoch = _steps_per_epoch(trainer, log)
    out = {}
    for step in steps:
        own = states.get(root / f"checkpoint-{step}" / "trainer_state.json")
        if own is not None and own.get("epoch"):
            epoch = round(float(own["epoch"]))
        elif per_epoch:
            epoch = round(step / per_epoch)
        else:
            raise DataError(
                f"cannot tell which epoch checkpoint {step} ends", path=richest, expected="lrs="
            )
        out[step] = epoch_lr(trainer, max(1, epoch), richest)
    return out
