"""Several processes building one datastore: ``torchrun --nproc_per_node=K -m less_lab ...``.

Why so little: gradient extraction is embarrassingly parallel (every example's features
depend on that example alone), so processes only need to agree on *who computes which
batch* and on *when the store is finished*. The rules:

* rank and world size come from torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``); without them everything runs as a single process, no
  ``torch.distributed`` involved;
* with ``WORLD_SIZE > 1`` a process group is opened once (``nccl`` when CUDA is available,
  else ``gloo``, so the same command works on a CPU box), used only for barriers;
* the work list (the deterministic token-budget batches of the whole split, minus those
  already done) is dealt round-robin: batch ``i`` goes to rank ``i % world``. The batches
  are sorted longest first, so every rank gets a similar mix of long and short ones;
* each rank writes its rows into its own shard files, and rank 0 merges them and writes
  ``meta.json`` after every rank has finished (see :mod:`less_lab.datastore`). The result
  is one store, identical to a single-process build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

from less_lab.model.device import resolve_device

T = TypeVar("T")
TIMEOUT_ENV = "LESS_LAB_DIST_TIMEOUT_S"
"""Seconds a rank may wait at a barrier (default one day: rank 0 may train the warmup
while the others wait; a crashed rank is noticed by torchrun, not by this timeout)."""


@dataclass(frozen=True)
class DistContext:
    """Who this process is among the processes sharing the work."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that creates, merges and finalises shared files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank arrives here (a no-op for a single process)."""
        if self.world > 1:
            torch.distributed.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th one, starting at ``rank``."""
        return list(items[self.rank :: self.world])


def env_context() -> DistContext:
    """Rank, world size and local rank from the environment torchrun sets (defaults 0/1/0)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistContext(rank, world, local)


def context(backend: str | None = None) -> DistContext:
    """This process's :class:`DistContext`; opens the process group on first use when
    ``WORLD_SIZE > 1``. ``backend``: ``nccl`` (default with CUDA) or ``gloo`` (CPU)."""
    ctx = env_context()
    if ctx.world > 1 and not torch.distributed.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 24 * 3600)))
        torch.distributed.init_process_group(backend, timeout=timeout)
        if torch.distributed.get_world_size() != ctx.world:
            raise RuntimeError("WORLD_SIZE differs from the process group's size")
    return ctx


def device() -> torch.device:
    """The device this rank should compute on: ``cuda:LOCAL_RANK`` if CUDA is there, else CPU
    (``device.resolve_device("auto")``, the policy every stage follows)."""
    return resolve_device("auto")


@contextmanager
def main_first(ctx: DistContext | None = None) -> Iterator[DistContext]:
    """Run the body on rank 0 first, then on the other ranks.

    For a stage whose result is cached on disk (warmup checkpoints, a tokenizer cache):
    rank 0 computes it while the others wait, then they run the same code and find it
    done. If rank 0 fails, the others are released and fail the same way, not hang.
    """
    ctx = ctx or context()
    if not ctx.is_main:
        ctx.barrier()
    try:
        yield ctx
    finally:
        if ctx.is_main:
            ctx.barrier()


def shutdown() -> None:
    """Close the process group if one was opened (end of a torchrun command)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
