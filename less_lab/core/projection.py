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
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

SCHEME_VERSION = 1
"""Bump when a change alters the matrix any kind draws for the same settings."""

KINDS = ("sparse_sign", "rademacher", "trak_basic", "none")
_INT64_MIN = -(2**63)


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


class Projector:
    """Base class: input checks, fp32 handling, CPU threads and the JSON description.

    On CPU, ``project`` runs on ``threads`` intra-op threads (default 1; None keeps torch's
    setting). The work is memory-bound and split into many small ops: measured on 2 shared
    cores, 2 threads were at best ~1.6x faster (sparse_sign, idle machine) and 4-100x
    slower whenever another process held a core (each op waits at an OpenMP barrier for the
    descheduled thread). Features do not depend on the thread count.

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
        """Features ``(b, proj_dim)`` float32 of a batch given as one ``(b, n_i)`` per block."""
        batch = self._check(blocks)
        if batch == 0:
            return torch.zeros(0, self.proj_dim, device=self.device)
        with torch.no_grad(), self._threads():
            blocks = [x.to(self.device) for x in blocks]
            return self._project(blocks, batch)

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        return torch_threads(self.threads if self.device.type == "cpu" else None)

    def _project(self, blocks: list[torch.Tensor], batch: int) -> torch.Tensor:
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
        for i, (x, n) in enumerate(zip(blocks, self.block_sizes, strict=True)):
            if x.dim() != 2 or x.shape[1] != n:
                raise ValueError(f"block {i}: expected shape (b, {n}), got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"block {i}: batch size {x.shape[0]} != {batch} of block 0")
            if not x.is_floating_point():
                raise ValueError(f"block {i}: expected a float tensor, got {x.dtype}")
            batch = x.shape[0]
        return int(batch)


class NoProjection(Projector):
    """``none``: the exact features (concatenation), for pools small enough to keep them."""

    kind = "none"

    def _configure(self) -> None:
        if self.proj_dim != self.input_dim:
            raise ValueError(
                f"projection 'none' keeps all P={self.input_dim} values: "
                f"proj_dim must equal P, got {self.proj_dim}"
            )

    def _project(self, blocks: list[torch.Tensor], batch: int) -> torch.Tensor:
        return torch.cat([x.float() for x in blocks], dim=1)


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
    non-zero) are cached up to ``cache_bytes``; blocks beyond it are rehashed every call
    (identical result, slower).
    """

    kind = "sparse_sign"

    def _configure(self, *, nnz: int = 4, cache_bytes: int = 512 * 2**20) -> None:
        if not 1 <= nnz <= self.proj_dim:
            raise ValueError(f"sparse_nnz must be in [1, proj_dim={self.proj_dim}], got {nnz}")
        self.nnz = int(nnz)
        bounds = [r * self.proj_dim // self.nnz for r in range(self.nnz + 1)]
        self._lo = torch.tensor(bounds[:-1], dtype=torch.int64)
        self._width = torch.tensor(bounds[1:], dtype=torch.int64) - self._lo
        self.cache_bytes = int(cache_bytes)
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
        across rows through ``inf * 0``, so ``_project`` redoes such batches with ``copy_``."""
        n, b = x.shape[1], x.shape[0]
        if x.dtype == torch.float32 and x.t().is_contiguous():
            return x.t()
        out = buffer[: n * b].view(n, b)
        if x.dtype == torch.float32 and eye is not None:
            return torch.mm(x.t(), eye, out=out)
        return out.copy_(x.t())

    def _project(self, blocks: list[torch.Tensor], batch: int) -> torch.Tensor:
        feats = self._sketch(blocks, batch, use_blas=True)
        if not torch.isfinite(feats).all():
            feats = self._sketch(blocks, batch, use_blas=False)
        return feats

    def _sketch(self, blocks: list[torch.Tensor], batch: int, use_blas: bool) -> torch.Tensor:
        eye = torch.eye(batch, device=self.device) if use_blas else None
        buffer = torch.empty(max(self.block_sizes) * batch, device=self.device)
        bags = torch.zeros(2 * self.proj_dim, batch, device=self.device)
        for i, x in enumerate(blocks):
            coords, starts = self._hash(i)
            rows = self._rows(x, buffer, eye)
            bags += F.embedding_bag(coords, rows, starts, mode="sum")
        scale = 1.0 / math.sqrt(self.nnz)
        return (bags[: self.proj_dim] - bags[self.proj_dim :]).t().mul(scale).contiguous()


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
    generated on the device. CPU, CUDA and fast_jl matrices all differ (``generator`` in
    ``describe()``), so their features must not be mixed.
    """

    kind = "rademacher"

    def _configure(self, *, chunk_rows: int | None = None, use_fast_jl: bool | None = None) -> None:
        on_cuda = self.device.type == "cuda"
        self.chunk_rows = int(chunk_rows or (4096 if on_cuda else 128))
        if use_fast_jl is None:
            use_fast_jl = on_cuda and self.proj_dim % 512 == 0 and _fast_jl_importable()
        if use_fast_jl and not on_cuda:
            raise ValueError("fast_jl (trak's CudaProjector) needs a CUDA device")
        self.use_fast_jl = bool(use_fast_jl)
        self._cuda: list[Any] = []
        self._cuda_scale = 1.0

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

    def _project(self, blocks: list[torch.Tensor], batch: int) -> torch.Tensor:
        if self.use_fast_jl:
            return self._project_fast_jl(blocks)
        out = torch.zeros(batch, self.proj_dim, device=self.device)
        gen = torch.Generator(device=self.device)
        for i, x in enumerate(blocks):
            x = x.float()
            for chunk, start in enumerate(range(0, x.shape[1], self.chunk_rows)):
                part = x[:, start : start + self.chunk_rows]
                out.addmm_(part, self.signs(i, chunk, gen)[: part.shape[1]])
        return out.mul_(1.0 / math.sqrt(self.proj_dim))

    def _project_fast_jl(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        if not self._cuda:
            self._cuda = [self._make_cuda(i, n) for i, n in enumerate(self.block_sizes)]
            self._cuda_scale = self._calibrate()
        out = None
        for proj, x in zip(self._cuda, blocks, strict=True):
            part = proj.project(x.float().contiguous(), model_id=0).float()
            out = part if out is None else out.add_(part)
        return out.mul_(self._cuda_scale)

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
    matrix with ``bernoulli_`` (~0.07 G entries/s on CPU) every call, whatever the batch:
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

    def _project(self, blocks: list[torch.Tensor], batch: int) -> torch.Tensor:
        if self._trak is None:
            from trak.projectors import BasicProjector, ProjectionType

            args = (self.input_dim, self.proj_dim, self.seed, ProjectionType.rademacher)
            self._trak = BasicProjector(*args, self.device, block_size=self.block_size)
        flat = torch.cat([x.float() for x in blocks], dim=1)
        return self._trak.project(flat, model_id=0).mul_(1.0 / math.sqrt(self.proj_dim))


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
    cache_bytes: int = 512 * 2**20,
    threads: int | None = 1,
) -> Projector:
    """The projector of ``kind`` (see ``GradientConfig.projection``) for these block sizes.

    ``cache_bytes`` caps the memory ``sparse_sign`` spends on its hash tables (4 bytes per
    non-zero: ~240 MB for LoRA r=128 on SmolLM2-135M); beyond it blocks are rehashed per
    call. ``threads``: CPU intra-op threads while projecting (see ``Projector``)."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection kind {kind!r}; expected one of {KINDS}")
    options = {"nnz": sparse_nnz, "cache_bytes": cache_bytes} if kind == "sparse_sign" else {}
    return PROJECTORS[kind](block_sizes, proj_dim, seed, device, threads=threads, **options)
