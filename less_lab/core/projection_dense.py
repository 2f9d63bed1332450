"""The dense Rademacher projections: ``rademacher`` (ours, or trak's ``CudaProjector`` on
GPU) and ``trak_basic`` (trak's ``BasicProjector``, the slow reference).

Why its own module: both apply a dense +-1/sqrt(d) matrix and both may call into trak;
the sparse CPU default is in ``projection_sparse``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from less_lab.core.projection_base import Projector, derive_seed

_INT64_MIN = -(2**63)


class RademacherProjector(Projector):
    """``rademacher``: dense i.i.d. +-1/sqrt(d) entries, as in LESS/TRAK.

    The matrix is generated in chunks of ``chunk_rows`` input coordinates, each from its own
    generator seeded by (seed, block, chunk), and applied by matmul: memory stays at one
    ``chunk_rows x d`` chunk whatever P is, and the result does not depend on the batch.
    Signs come from the bytes of full-range 64-bit draws (8 signs per draw), ~20x faster than
    ``bernoulli_``. The cost is ``P * d`` generated entries per batch, so on a CPU this kind
    is for checks, not pools; ``sparse_sign`` is the CPU default.

    On CUDA, trak's ``CudaProjector`` (``fast_jl``) is used when importable and
    ``proj_dim % 512 == 0``: one per block, with a per-block seed and its output rescaled to
    our +-1/sqrt(d) convention (measured once on a one-hot probe). Otherwise the chunks are
    generated on the device, with a ``RuntimeWarning`` naming that slower path and why it
    was taken. CPU, CUDA and fast_jl matrices all differ (``generator`` in
    ``describe()``), so their features must not be mixed.
    """

    kind = "rademacher"

    def _configure(self, *, chunk_rows: int | None = None, use_fast_jl: bool | None = None) -> None:
        on_cuda = self.device.type == "cuda"
        self.chunk_rows = int(chunk_rows or (4096 if on_cuda else 128))
        if use_fast_jl is None:
            use_fast_jl = on_cuda and self.proj_dim % 512 == 0 and _fast_jl_importable()
            if on_cuda and not use_fast_jl:
                self._warn_dense_fallback()
        if use_fast_jl and not on_cuda:
            raise ValueError("fast_jl (trak's CudaProjector) needs a CUDA device")
        self.use_fast_jl = bool(use_fast_jl)
        self._cuda: list[Any] = []
        self._cuda_scale = 1.0

    def _warn_dense_fallback(self) -> None:
        """Never fall back silently: name the slower path and why it was taken."""
        why = (
            f"proj_dim={self.proj_dim} is not a multiple of 512"
            if self.proj_dim % 512
            else "trak's fast_jl CUDA extension is not importable "
            '(pip install "traker[fast]" compiles it)'
        )
        warnings.warn(
            f"rademacher projection on {self.device}: {why}; falling back to the slower "
            f"path that generates the dense +-1 matrix on the device in chunks of "
            f"{self.chunk_rows} rows (P x d entries per batch), and whose matrix differs "
            "from fast_jl's (generator torch-cuda-philox)",
            RuntimeWarning,
            stacklevel=4,
        )

    @property
    def generator(self) -> str:
        if self.use_fast_jl:
            return "trak-fast_jl"
        return "torch-cuda-philox" if self.device.type == "cuda" else "torch-cpu-mt19937"

    def describe(self) -> dict[str, Any]:
        extra = {} if self.use_fast_jl else {"chunk_rows": self.chunk_rows}
        return {**super().describe(), "generator": self.generator, **extra}

    def signs(self, block: int, chunk: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """The +-1 entries (float32, ``chunk_rows x d``) of one chunk of one block."""
        gen = gen or torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, self.kind, block, chunk))
        count = self.chunk_rows * self.proj_dim
        words = torch.empty((count + 7) // 8, dtype=torch.int64, device=self.device)
        words.random_(_INT64_MIN, None, generator=gen)  # full range: all 64 bits random
        high = words.view(torch.int8)[:count].view(self.chunk_rows, self.proj_dim)
        # Arithmetic shift maps a byte to -1 (sign bit set) or 0; "| 1" makes that -1 or +1.
        return high.bitwise_right_shift_(7).bitwise_or_(1).to(torch.float32)

    def _begin(self, batch: int) -> dict[str, Any]:
        out = torch.zeros(batch, self.proj_dim, device=self.device)
        return {"out": out, "gen": None if self.use_fast_jl else torch.Generator(self.device)}

    def _add(self, state: dict[str, Any], block: int, x: torch.Tensor) -> None:
        x = x.float()
        if self.use_fast_jl:
            if not self._cuda:
                self._cuda = [self._make_cuda(i, n) for i, n in enumerate(self.block_sizes)]
                self._cuda_scale = self._calibrate()
            state["out"].add_(self._cuda[block].project(x.contiguous(), model_id=0).float())
            return
        for chunk, start in enumerate(range(0, x.shape[1], self.chunk_rows)):
            part = x[:, start : start + self.chunk_rows]
            signs = self.signs(block, chunk, state["gen"])[: part.shape[1]]
            state["out"].addmm_(part, signs)

    def _finish(self, state: dict[str, Any]) -> torch.Tensor:
        scale = self._cuda_scale if self.use_fast_jl else 1.0 / math.sqrt(self.proj_dim)
        return state["out"].mul_(scale)

    def _make_cuda(self, block: int, size: int) -> Any:
        from trak.projectors import CudaProjector, ProjectionType

        # max_batch_size=8 pins one kernel for every batch size, so rows never depend on b.
        seed = derive_seed(self.seed, self.kind, block) % 2**31
        kind = ProjectionType.rademacher
        return CudaProjector(size, self.proj_dim, seed, kind, self.device, max_batch_size=8)

    def _calibrate(self) -> float:
        """Scale turning fast_jl's entries into +-1/sqrt(d), read off a one-hot probe."""
        probe = torch.zeros(1, self.block_sizes[0], device=self.device)
        probe[0, 0] = 1.0
        entries = self._cuda[0].project(probe, model_id=0).float().abs()
        magnitude = entries[0, 0].item()
        if magnitude == 0 or not torch.allclose(entries, torch.full_like(entries, magnitude)):
            raise RuntimeError(
                "fast_jl returned entries of unequal magnitude for a one-hot "
                "input: not a Rademacher matrix; pass use_fast_jl=False"
            )
        return 1.0 / (magnitude * math.sqrt(self.proj_dim))


def _fast_jl_importable() -> bool:
    try:
        import fast_jl  # noqa: F401
        from trak.projectors import CudaProjector  # noqa: F401
    except ImportError:
        return False
    return True


class TrakBasicProjector(Projector):
    """``trak_basic``: trak's ``BasicProjector`` on the concatenated gradient (the reference).

    trak's Rademacher entries are +-1; we scale by 1/sqrt(d) to match the other kinds (the
    matrix itself differs from ``rademacher``'s). trak regenerates its whole ``P x d``
    matrix with ``bernoulli_`` (~0.07 G entries/s on CPU) every call, whatever the batch,
    and needs the whole ``(b, P)`` vector (fed block by block, it keeps every block until
    ``finish``: not for 7B-scale P):
    minutes per call at LESS sizes. ``block_size`` (output columns per generated slab) is
    kept below ``proj_dim`` because trak breaks with a single slab, and is sized so a slab
    (P x block_size floats) fits in ``slab_bytes``. It changes the matrix, so it is recorded.
    """

    kind = "trak_basic"

    def _configure(self, *, block_size: int | None = None, slab_bytes: int = 256 * 2**20) -> None:
        if self.proj_dim < 2:
            raise ValueError("trak_basic needs proj_dim >= 2 (trak fails with a single block)")
        default = max(1, min(self.proj_dim // 2, slab_bytes // (4 * self.input_dim)))
        self.block_size = int(block_size or default)
        if not 1 <= self.block_size < self.proj_dim:
            raise ValueError(f"trak block_size must be in [1, proj_dim), got {self.block_size}")
        self._trak: Any = None

    def describe(self) -> dict[str, Any]:
        extra = {"generator": f"trak-basic-{self.device.type}", "trak_block_size": self.block_size}
        return {**super().describe(), **extra}

    def _begin(self, batch: int) -> list[torch.Tensor | None]:
        return [None] * len(self.block_sizes)

    def _add(self, state: list[torch.Tensor | None], block: int, x: torch.Tensor) -> None:
        state[block] = x.float()  # trak needs the whole vector: kept until ``finish``

    def _finish(self, state: list[torch.Tensor]) -> torch.Tensor:
        if self._trak is None:
            from trak.projectors import BasicProjector, ProjectionType

            args = (self.input_dim, self.proj_dim, self.seed, ProjectionType.rademacher)
            self._trak = BasicProjector(*args, self.device, block_size=self.block_size)
        flat = torch.cat(state, dim=1)
        return self._trak.project(flat, model_id=0).mul_(1.0 / math.sqrt(self.proj_dim))
