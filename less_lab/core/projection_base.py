"""What every projection kind shares: the ``Projector`` base class (input checks, fp32
handling, CPU threads, the JSON description) and the seeding of matrix pieces.

Why its own module: each kind lives in its own module (``projection_sparse``,
``projection_dense``) and ``projection`` picks one by name, so the base they all extend
sits below them. See ``projection`` for what the features guarantee.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

SCHEME_VERSION = 1
"""Bump when a change alters the matrix any kind draws for the same settings."""


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit generator seed for one piece of a matrix (block, row chunk, ...).

    Hashing (rather than ``seed + 1000 * block``) keeps the pieces independent: no two
    (seed, block) pairs can collide on the same stream."""
    text = ":".join(str(p) for p in ("less_lab", seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with ``count`` intra-op CPU threads (None: leave the setting alone)."""
    old = torch.get_num_threads()
    if count is None or count == old:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class Partial:
    """A batch being projected block by block: ``Projector.begin`` / ``add`` / ``finish``."""

    batch: int
    state: Any
    added: list[bool]


class Projector:
    """Base class: input checks, fp32 handling, CPU threads and the JSON description.

    On CPU, ``project`` runs on ``threads`` intra-op threads (default 1; None keeps torch's
    setting). The work is memory-bound and split into many small ops: measured on 2 shared
    cores, 2 threads were at best ~1.6x faster (sparse_sign, idle machine) and 4-100x
    slower whenever another process held a core (each op waits at an OpenMP barrier for the
    descheduled thread). Features do not depend on the thread count.

    Blocks can be given all at once (``project``) or one at a time as they are produced
    (``begin`` / ``add`` / ``finish``): each kind implements ``_begin``, ``_add`` and
    ``_finish`` and keeps only its ``(b, proj_dim)`` accumulator between blocks (except
    ``trak_basic``, the reference, which needs the concatenated vector).

    Every kind takes the same settings, declared once here; its own options (``nnz``,
    ``chunk_rows``, ...) are the keywords of its ``_configure``, which ``__init__`` calls
    with whatever keywords are left.
    """

    kind: str = "base"

    def __init__(
        self,
        block_sizes: Sequence[int],
        proj_dim: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        threads: int | None = 1,
        **options: Any,
    ) -> None:
        self.block_sizes = tuple(int(n) for n in block_sizes)
        if not self.block_sizes or min(self.block_sizes) < 1:
            raise ValueError(f"block_sizes must be non-empty and positive, got {block_sizes}")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.threads = threads
        self._configure(**options)

    def _configure(self) -> None:
        """Take and check the kind's own options (hook; the common settings are set)."""

    @property
    def input_dim(self) -> int:
        """P: the length of the concatenated gradient."""
        return sum(self.block_sizes)

    def project(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features ``(b, proj_dim)`` float32 of a batch given as one ``(b, n_i)`` per block.

        The same as ``begin``, one ``add`` per block, ``finish``."""
        batch = self._check(blocks)
        with self._threads():
            partial = self.begin(batch)
            for i, x in enumerate(blocks):
                self.add(partial, i, x)
            return self.finish(partial)

    def begin(self, batch: int) -> Partial:
        """Start a batch of ``batch`` rows whose blocks will come one at a time (``add``).

        The projection is linear and separable by blocks (``sum_i x_i @ R_i``), so a
        caller can hand each block over as soon as it exists and free it: memory is one
        block plus the ``(b, proj_dim)`` fp32 output, whatever P is."""
        state = self._begin(batch) if batch else None
        return Partial(int(batch), state, [False] * len(self.block_sizes))

    def add(self, partial: Partial, block: int, x: torch.Tensor) -> None:
        """Add block ``block`` (``(b, n_block)``, any float dtype, any order) to ``partial``."""
        self._check_block(block, x, partial.batch)
        if partial.added[block]:
            raise ValueError(f"block {block} was already added to this batch")
        partial.added[block] = True
        if partial.batch:
            with torch.no_grad(), self._threads():
                self._add(partial.state, block, x.to(self.device))

    def finish(self, partial: Partial) -> torch.Tensor:
        """The batch's ``(b, proj_dim)`` float32 features, once every block was added."""
        missing = [i for i, done in enumerate(partial.added) if not done]
        if missing:
            raise ValueError(f"blocks {missing[:5]} ({len(missing)} in all) were never added")
        if not partial.batch:
            return torch.zeros(0, self.proj_dim, device=self.device)
        with torch.no_grad(), self._threads():
            return self._finish(partial.state)

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        return torch_threads(self.threads if self.device.type == "cpu" else None)

    def _begin(self, batch: int) -> Any:
        """The kind's accumulator for a batch (hook; e.g. a zero ``(b, d)`` output)."""
        raise NotImplementedError

    def _add(self, state: Any, block: int, x: torch.Tensor) -> None:
        """Add one checked block, already on ``self.device`` (hook)."""
        raise NotImplementedError

    def _finish(self, state: Any) -> torch.Tensor:
        """The ``(b, proj_dim)`` fp32 features from the accumulator (hook)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that fix the matrix (stored in the datastore's meta.json)."""
        return {
            "kind": self.kind,
            "proj_dim": self.proj_dim,
            "seed": self.seed,
            "block_sizes": list(self.block_sizes),
            "scheme_version": SCHEME_VERSION,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.input_dim:,} in {len(self.block_sizes)} "
            f"blocks -> d={self.proj_dim}, seed={self.seed})"
        )

    def _check(self, blocks: Sequence[torch.Tensor]) -> int:
        """Batch size, after checking the blocks match ``block_sizes`` (errors name the block)."""
        if len(blocks) != len(self.block_sizes):
            raise ValueError(
                f"{self.kind} projector expects {len(self.block_sizes)} blocks, got {len(blocks)}"
            )
        batch = None
        for i, x in enumerate(blocks):
            self._check_block(i, x, batch)
            batch = x.shape[0]
        return int(batch)

    def _check_block(self, i: int, x: torch.Tensor, batch: int | None) -> None:
        if not 0 <= i < len(self.block_sizes):
            raise ValueError(f"block {i}: no such block (there are {len(self.block_sizes)})")
        n = self.block_sizes[i]
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"block {i}: expected shape (b, {n}), got {tuple(x.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"block {i}: batch size {x.shape[0]} != {batch} of block 0")
        if not x.is_floating_point():
            raise ValueError(f"block {i}: expected a float tensor, got {x.dtype}")
