"""Random projections of per-example LoRA gradients to ``proj_dim`` features (LESS §3.2).

Gradients arrive as a list of blocks, one per LoRA weight matrix, each of shape ``(b, n_i)``.
Every projector maps them to ``(b, proj_dim)`` float32 features such that inner products,
norms and cosines are preserved in expectation (Johnson-Lindenstrauss), with

* fp32 accumulation whatever the input dtype (never cast to fp16 first: small gradients
  underflow),
* the same features for an example whatever batch it is in (rows never mix),
* a matrix fixed by the settings in ``describe()`` alone, generated block by block, so the
  full ``P x proj_dim`` matrix never exists in memory.

Kinds: ``sparse_sign`` (CPU default, sparse JL sketch), ``rademacher`` (dense +-1/sqrt(d),
trak's ``CudaProjector`` on GPU), ``trak_basic`` (trak's ``BasicProjector``: the slow
reference) and ``none`` (no projection). Different kinds, and ``rademacher`` run with a
different generator (CPU, CUDA, fast_jl), give *different* matrices: their features are not
interchangeable. ``describe()`` records what fixes the matrix, and the datastore refuses to
mix stores whose descriptions differ.

This module names the kinds and builds one (``make_projector``); the shared base class is
in ``projection_base``, ``sparse_sign`` in ``projection_sparse``, and ``rademacher`` and
``trak_basic`` in ``projection_dense``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from less_lab.core.projection_base import Projector
from less_lab.core.projection_dense import RademacherProjector, TrakBasicProjector
from less_lab.core.projection_sparse import SparseSignProjector

KINDS = ("sparse_sign", "rademacher", "trak_basic", "none")


class NoProjection(Projector):
    """``none``: the exact features (concatenation), for pools small enough to keep them."""

    kind = "none"

    def _configure(self) -> None:
        if self.proj_dim != self.input_dim:
            raise ValueError(
                f"projection 'none' keeps all P={self.input_dim} values: "
                f"proj_dim must equal P, got {self.proj_dim}"
            )

    def _begin(self, batch: int) -> torch.Tensor:
        return torch.empty(batch, self.input_dim, device=self.device)

    def _add(self, state: torch.Tensor, block: int, x: torch.Tensor) -> None:
        start = sum(self.block_sizes[:block])
        state[:, start : start + self.block_sizes[block]].copy_(x)

    def _finish(self, state: torch.Tensor) -> torch.Tensor:
        return state


PROJECTORS: dict[str, type[Projector]] = {
    cls.kind: cls
    for cls in (SparseSignProjector, RademacherProjector, TrakBasicProjector, NoProjection)
}
"""The class of each kind in :data:`KINDS`."""


def make_projector(
    kind: str,
    block_sizes: Sequence[int],
    proj_dim: int,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    sparse_nnz: int = 4,
    cache_mb: int | None = None,
    threads: int | None = 1,
) -> Projector:
    """The projector of ``kind`` (see ``GradientConfig.projection``) for these block sizes.

    ``cache_mb`` caps the memory ``sparse_sign`` spends on its hash tables (4 bytes per
    non-zero: ~240 MB for LoRA r=128 on SmolLM2-135M, 2.1 GB on a 7B; ``None``: every
    block, up to 4096 MB; ``GradientConfig.sketch_cache_mb``); beyond it blocks are
    rehashed per call. ``threads``: CPU intra-op threads while projecting (see
    ``Projector``)."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection kind {kind!r}; expected one of {KINDS}")
    options = {}
    if kind == "sparse_sign":
        cache_bytes = None if cache_mb is None else cache_mb * 2**20
        options = {"nnz": sparse_nnz, "cache_bytes": cache_bytes}
    return PROJECTORS[kind](block_sizes, proj_dim, seed, device, threads=threads, **options)
