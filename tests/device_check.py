"""A CPU-only stand-in for a GPU: every tensor is tagged host or device, and an op that
meets a host-built tensor with a device (model) tensor fails, as it would on CUDA.

Why not the ``meta`` device: a meta model has no values, so nothing data-dependent runs
(``nonzero`` for the completion positions, generation, optimizer steps, safetensors saves),
and many meta kernels accept CPU operands anyway (``embedding`` with CPU ids, ``matmul``,
``gather``): a batch left on the CPU goes unnoticed. Here the model really runs on the CPU,
with its values, and a ``TorchFunctionMode`` tracks where each tensor *would* be:

* host: built by a factory without a ``device=`` argument (``torch.tensor``, ``as_tensor``,
  ``full``, ``zeros`` ...; ``collate``'s batches), read by ``.cpu()``, loaded from a
  checkpoint file, or computed from host tensors only;
* device: everything else: the model's parameters and buffers, tensors moved with
  ``.to(device)`` / ``.cuda()`` or built with ``device=``, and whatever is computed from them.

An op mixing a non-scalar host tensor with a device tensor raises :class:`DeviceMismatch`
(CUDA allows CPU *scalars* next to CUDA tensors, and so does this check; ``copy_`` and item
assignment copy across devices, as on CUDA; tensor hooks, which autograd runs outside any
mode, are run inside it). Stricter than CUDA in one place: indexing a
device tensor with a host index tensor is refused (CUDA copies it over silently). And a
host read (``item``, ``tolist``, ``numpy``, ``float()``, ``int()``) of a device tensor from
less_lab code outside ``less_lab.model.device`` also raises: stages read results through
``to_host``. Blind spot: a tensor built with an explicit ``device="cpu"`` counts as on the
device (on this machine it cannot be told from ``device=model_device(model)``).
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch.overrides import TorchFunctionMode

HOST = "_device_check_host"
_MOVES = {torch.Tensor.to, torch.Tensor.cuda}
_COPIES = {torch.Tensor.copy_, torch.Tensor.__setitem__}
_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
}
"""Host reads that must go through ``to_host`` in less_lab code. Not ``__bool__``: a branch
on a device value (``if not x.isfinite().all()``) is legal on CUDA, a sync but no error."""


class DeviceMismatch(RuntimeError):
    """A host tensor met a device tensor (or a device tensor was read outside to_host)."""


def is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, HOST, False))


def mark_host(obj):
    """Mark every tensor in ``obj`` (a tensor, or a dict / list of them) as on the host."""
    for t in _tensors(obj):
        setattr(t, HOST, True)
    return obj


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _caller_module() -> str:
    """The module of the first frame outside torch and this file; ``torch.optim`` when an
    optimizer reads its own step counters (on a GPU they stay on the host unless the
    optimizer is ``capturable``, so those reads are not a stage's)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("torch.optim"):
            return name
        if not (name.startswith("torch") or name == __name__):
            return name
        frame = frame.f_back
    return ""


def _move_target(args, kwargs):
    """For ``Tensor.to``: ``"device"`` when a device is named, the other tensor when one is
    given, else None (a dtype-only conversion)."""
    if kwargs.get("device") is not None:
        return "device"
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            return "device"
        if isinstance(a, torch.Tensor):
            return a
    return None


class DeviceCheck(TorchFunctionMode):
    """Host/device tagging of every tensor made while active (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.suspended = 0
        self.reads: list[str] = []

    @contextlib.contextmanager
    def suspend(self):
        """Run a block unchecked (code that cannot pass yet, e.g. training)."""
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.suspended:
            return func(*args, **kwargs)
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        host = [t for t in inputs if is_host(t)]
        dev = [t for t in inputs if not is_host(t)]
        if func in _READS and dev:
            module = _caller_module()
            if module.startswith("less_lab") and module != "less_lab.model.device":
                raise DeviceMismatch(
                    f"{module}: {func.__name__} reads a device tensor; use model.device.to_host"
                )
        if func is torch.Tensor.register_hook:  # backward hooks run outside this mode
            return func(args[0], self._inside(args[1]))
        if func is torch.Tensor.cpu:
            out = func(*args, **kwargs)
            out = out.clone() if out is args[0] else out
            return mark_host(out)
        if func in _MOVES:
            return self._move(func, args, kwargs)
        if func not in _COPIES and dev and any(t.dim() > 0 for t in host):
            shapes = [tuple(t.shape) for t in host if t.dim() > 0]
            raise DeviceMismatch(
                f"{getattr(func, '__name__', func)}: host tensor(s) {shapes} meet "
                f"{len(dev)} device tensor(s) (a tensor built on the CPU next to model tensors)"
            )
        out = func(*args, **kwargs)
        on_host = not dev and kwargs.get("device") is None and (bool(host) or not inputs)
        if func in _COPIES:
            return out
        for t in _tensors(out):
            with contextlib.suppress(AttributeError, RuntimeError):
                setattr(t, HOST, on_host)
        return out

    def _inside(self, hook):
        """``hook`` run with this check on (autograd runs tensor hooks without it)."""

        def checked(*args, **kwargs):
            with self:
                return hook(*args, **kwargs)

        return checked

    def _move(self, func, args, kwargs):
        target = _move_target(args, kwargs) if func is torch.Tensor.to else "device"
        out = func(*args, **kwargs)
        if target is None:  # dtype only: stays where it was
            return mark_host(out) if is_host(args[0]) else out
        if out is args[0]:  # a no-op move on this CPU-only machine: a copy on a real GPU
            out = out.clone()
        to_host = isinstance(target, torch.Tensor) and is_host(target)
        setattr(out, HOST, to_host)
        return out


@contextlib.contextmanager
def device_check(monkeypatch=None):
    """Enter a :class:`DeviceCheck` (with ``monkeypatch``: checkpoint files and numpy
    arrays turned into tensors count as host tensors)."""
    if monkeypatch is not None:
        from less_lab.core.training import Checkpoint

        tensors = Checkpoint.tensors
        monkeypatch.setattr(Checkpoint, "tensors", lambda self, rel: mark_host(tensors(self, rel)))
        from_numpy = torch.from_numpy
        monkeypatch.setattr(torch, "from_numpy", lambda a: mark_host(from_numpy(a)))
    mode = DeviceCheck()
    with mode:
        yield mode
