"""One device and dtype policy for every stage, and the one way to read a result back.

Why: at the paper's scale the model lives on a GPU (one per torchrun rank) in bf16, while
every stage's code builds batches, index tensors and Adam moments of its own. A tensor
built on the CPU next to model tensors fails on a GPU (or, worse, is copied silently every
step), and ``.item()`` / ``.numpy()`` sprinkled through the stages hide where the host
waits for the device. So:

* :func:`resolve_device` / :func:`resolve_dtype` turn a setting (``"auto"``, ``"cuda:1"``,
  ``"bfloat16"`` ...) into a torch object, refusing what this machine cannot do;
* every stage asks :func:`model_device` where the model is and builds its tensors there;
* every read of a model-derived tensor goes through :func:`to_host` (a detached, CPU,
  float32 tensor) or :func:`host_float` (a Python float), so there is one place where the
  host reads the device, and tests can stub it.

Gradient features, Adam transforms and scores are fp32 whatever the model's dtype
(``core.gradients`` casts each per-example gradient to fp32).
"""

from __future__ import annotations

import os

import torch

from less_lab.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The model dtypes a setting may name (``--dtype``, ``Lab(dtype=...)``)."""


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(
            f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} is not an integer", key="device"
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (``cuda:$LOCAL_RANK`` when CUDA is available, else ``cpu``), ``"cpu"``,
    ``"cuda"`` (this rank's GPU: ``cuda:$LOCAL_RANK``, or ``cuda:0``), ``"cuda:i"`` or a
    ``torch.device``. A CUDA device on a machine without it is refused (``ConfigError``)."""
    if isinstance(device, torch.device):
        dev = device
    elif device in ("auto", "cuda"):
        if device == "auto" and not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device("cuda", _local_rank())
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"device {device!r}: expected auto, cpu, cuda or cuda:<index>", key="device"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available here", key="device")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index % torch.cuda.device_count())
    elif dev.type not in ("cpu", "meta"):
        raise ConfigError(f"device {device!r}: expected auto, cpu or cuda[:i]", key="device")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "float32") -> torch.dtype:
    """``"float32"``, ``"bfloat16"``, ``"float16"`` or one of those ``torch.dtype``s."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ConfigError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}", key="dtype")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for settings and messages)."""
    return str(dtype).removeprefix("torch.")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer): where a stage must put the
    batches and tensors it combines with the model's. CPU for a model without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (fp32 if it has none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy of a model-derived tensor, float32 where it is a narrower float
    (bf16/fp16 results are read in fp32; fp64 stays fp64). The one place where stages read
    device tensors back; follow it with ``.numpy()`` or ``.tolist()``."""
    out = tensor.detach()
    if out.is_floating_point() and out.dtype != torch.float64:
        out = out.float()
    return out.cpu()


def host_float(tensor: torch.Tensor) -> float:
    """One element of a model-derived tensor as a Python float (through :func:`to_host`)."""
    return float(to_host(tensor).item())
