"""The ``sparse_sign`` projection: a sparse JL sketch, the CPU default.

Why its own module: its hashing, cache and ``embedding_bag`` fast path share nothing with
the dense kinds (``projection_dense``) beyond the ``Projector`` base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from less_lab.core.projection_base import Projector, derive_seed

AUTO_CACHE_LIMIT = 4096 * 2**20
"""Most bytes the hash tables take when no cache size is given: every block of LoRA r=128
on a 7B (4 x 134M x 4 B = 2.1 GB) or 13B model fits."""


def sketch_table_bytes(block_sizes: Sequence[int], proj_dim: int, nnz: int) -> int:
    """Bytes of the hash tables of every block: 4 per non-zero plus 8 * d bag starts."""
    return sum(4 * (nnz * n + 2 * proj_dim) for n in block_sizes)


class SparseSignProjector(Projector):
    """``sparse_sign``: a sparse JL sketch (Kane & Nelson's block construction).

    The output is split into ``nnz`` equal ranges; input coordinate ``j`` of block ``i``
    adds ``+-x_j / sqrt(nnz)`` to one random bucket in each range, so every input row of the
    implied matrix has exactly ``nnz`` non-zeros. Buckets and signs depend only on
    (seed, block index, position in block). Cost is ``nnz`` multiply-adds per value instead
    of ``proj_dim``.

    Fast path: each block is turned into ``(n_i, b)`` rows of ``b`` floats, and each output
    bucket gathers and sums its rows with ``embedding_bag`` (a fused gather-sum kernel) over
    a precomputed list of the block's coordinates sorted by bucket; positive and negative
    signs go to separate bags, subtracted at the end. The sorted lists (4 bytes per
    non-zero) are cached on the device up to ``cache_bytes`` (None: every block, up to
    ``AUTO_CACHE_LIMIT``; ``GradientConfig.sketch_cache_mb``); blocks beyond it are rehashed
    every call (identical result, slower: at 7B a rehash of all blocks costs seconds).
    """

    kind = "sparse_sign"

    def _configure(self, *, nnz: int = 4, cache_bytes: int | None = None) -> None:
        if not 1 <= nnz <= self.proj_dim:
            raise ValueError(f"sparse_nnz must be in [1, proj_dim={self.proj_dim}], got {nnz}")
        self.nnz = int(nnz)
        bounds = [r * self.proj_dim // self.nnz for r in range(self.nnz + 1)]
        self._lo = torch.tensor(bounds[:-1], dtype=torch.int64)
        self._width = torch.tensor(bounds[1:], dtype=torch.int64) - self._lo
        full = sketch_table_bytes(self.block_sizes, self.proj_dim, self.nnz)
        self.cache_bytes = min(full, AUTO_CACHE_LIMIT) if cache_bytes is None else int(cache_bytes)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cached_bytes = 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sparse_nnz": self.nnz, "generator": "torch-cpu-mt19937"}

    def buckets(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Output column and sign of each (coordinate, repetition) of one block: ``(n, nnz)``.

        Drawn on the CPU generator whatever the device, so the sketch is the same on GPU."""
        n = self.block_sizes[block]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.kind, block))
        draws = torch.empty(n, self.nnz, dtype=torch.int64).random_(0, 2**31, generator=gen)
        column = self._lo + (draws >> 1) % self._width
        sign = 1 - 2 * (draws & 1)
        return column, sign

    def prepare(self) -> None:
        """Hash every block now (seconds at r=128), so the first ``project`` is not slow."""
        with self._threads():
            for block in range(len(self.block_sizes)):
                self._hash(block)

    def _hash(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(coordinates sorted by bag, start of each of the 2*d bags), cached within the cap."""
        if block in self._cache:
            return self._cache[block]
        column, sign = self.buckets(block)
        bag = (column + self.proj_dim * (sign < 0)).flatten()  # negatives in bags d..2d-1
        order = torch.argsort(bag, stable=True)
        coords = (order // self.nnz).to(torch.int32)
        starts = torch.zeros(2 * self.proj_dim, dtype=torch.int64)
        starts[1:] = torch.cumsum(torch.bincount(bag, minlength=2 * self.proj_dim), 0)[:-1]
        entry = (coords.to(self.device), starts.to(torch.int32).to(self.device))
        size = 4 * (coords.numel() + starts.numel())
        if self.cached_bytes + size <= self.cache_bytes:
            self._cache[block] = entry
            self.cached_bytes += size
        return entry

    @staticmethod
    def _rows(x: torch.Tensor, buffer: torch.Tensor, eye: torch.Tensor | None) -> torch.Tensor:
        """The block as ``(n, b)`` contiguous rows (one per coordinate) for ``embedding_bag``.

        ``x.T @ I`` through BLAS transposes fp32 ~1.6x faster than ``copy_`` on CPU and is
        exact (each output is one ``x * 1`` plus exact zeros); non-finite inputs would leak
        across rows through ``inf * 0``, so ``_add`` redoes such blocks with ``copy_``."""
        n, b = x.shape[1], x.shape[0]
        if x.dtype == torch.float32 and x.t().is_contiguous():
            return x.t()
        out = buffer[: n * b].view(n, b)
        if x.dtype == torch.float32 and eye is not None:
            return torch.mm(x.t(), eye, out=out)
        return out.copy_(x.t())

    def _begin(self, batch: int) -> dict[str, Any]:
        bags = torch.zeros(2 * self.proj_dim, batch, device=self.device)
        return {"bags": bags, "eye": torch.eye(batch, device=self.device), "buffer": None}

    def _add(self, state: dict[str, Any], block: int, x: torch.Tensor) -> None:
        """Gather-sum the block into its bags. ``x.T @ I`` would leak a non-finite value
        into every row of the block (``inf * 0``), so such a block is redone with ``copy_``
        (exact either way: the other rows come out equal to a batch without it)."""
        coords, starts = self._hash(block)
        if state["buffer"] is None:
            n = max(self.block_sizes) * x.shape[0]
            state["buffer"] = torch.empty(n, device=self.device)
        rows = self._rows(x, state["buffer"], state["eye"])
        part = F.embedding_bag(coords, rows, starts, mode="sum")
        if not torch.isfinite(part).all():
            rows = self._rows(x, state["buffer"], None)
            part = F.embedding_bag(coords, rows, starts, mode="sum")
        state["bags"] += part

    def _finish(self, state: dict[str, Any]) -> torch.Tensor:
        bags, scale = state["bags"], 1.0 / math.sqrt(self.nnz)
        return (bags[: self.proj_dim] - bags[self.proj_dim :]).t().mul(scale).contiguous()
