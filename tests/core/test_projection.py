"""Random projections: JL statistics, exact structure, determinism, batch independence.

Statistical checks use fixed seeds (deterministic), with bounds several standard errors
wide so that a real bug (wrong scale, biased signs, correlated blocks) fails them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from less_lab.core.projection import make_projector
from less_lab.core.projection_dense import RademacherProjector, TrakBasicProjector
from less_lab.core.projection_sparse import SparseSignProjector

SIZES = (700, 1000, 348)  # P = 2048, uneven blocks
DIM = 512
RANDOM_KINDS = ("sparse_sign", "rademacher", "trak_basic")


def split(x: torch.Tensor, sizes=SIZES) -> list[torch.Tensor]:
    return list(x.split(list(sizes), dim=1))


def implied_matrix(proj, sizes) -> torch.Tensor:
    """The P x d matrix a projector applies, read off by projecting identity rows."""
    return proj.project(split(torch.eye(sum(sizes)), sizes))


def fp32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def unit_pairs(n_pairs: int, dim: int, seed: int = 1):
    """Unit vectors x, y with <x, y> = c spread uniformly over [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n_pairs, dim, generator=gen), dim=1)
    z = torch.randn(n_pairs, dim, generator=gen)
    z = torch.nn.functional.normalize(z - (z * x).sum(1, keepdim=True) * x, dim=1)
    c = torch.rand(n_pairs, generator=gen) * 2 - 1
    y = c[:, None] * x + (1 - c[:, None] ** 2).sqrt() * z
    return x, y, c


def inner_products(kind: str, x, y, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    proj = make_projector(kind, SIZES, DIM, seed)
    both = proj.project(split(torch.cat([x, y])))
    px, py = both[: len(x)], both[len(x) :]
    return (px * py).sum(1), (px * px).sum(1)


def assert_rows_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to fp32 rounding: max error per row <= rel * that row's norm."""
    err = (got - want).abs().amax(dim=1)
    bound = rel * want.norm(dim=1).clamp_min(1e-30)
    assert (err <= bound).all(), f"max error/norm = {(err / bound).max() * rel:.2e} > {rel}"


def assert_standard(z: torch.Tensor, what: str) -> None:
    """z should look like N(0, 1) draws: centred, unit spread, no outliers."""
    se = 1 / math.sqrt(len(z))
    assert abs(z.mean().item()) < 4 * se, f"{what}: biased, mean z = {z.mean():.3f}"
    assert 0.75 < z.std().item() < 1.25, f"{what}: spread z = {z.std():.3f}, expected 1"
    assert z.abs().max().item() < 5, f"{what}: outlier |z| = {z.abs().max():.2f}"


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_inner_products_and_norms_preserved(kind):
    x, y, c = unit_pairs(200, sum(SIZES))
    ip, sq = inner_products(kind, x, y)
    # JL variance for +-1/sqrt(d) or sparse sketches: (|x|^2|y|^2 + <x,y>^2) / d.
    assert_standard((ip - c) / ((1 + c**2) / DIM).sqrt(), f"{kind} inner products")
    assert_standard((sq - 1) / math.sqrt(2 / DIM), f"{kind} squared norms")
    assert (ip - c).abs().max() < 5 * math.sqrt(2 / DIM)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_deterministic_by_seed(kind):
    x = torch.randn(3, sum(SIZES))
    a = make_projector(kind, SIZES, DIM, seed=7).project(split(x))
    b = make_projector(kind, SIZES, DIM, seed=7).project(split(x))
    other = make_projector(kind, SIZES, DIM, seed=8).project(split(x))
    assert torch.equal(a, b)
    assert (a - other).abs().max() > 0.1 * a.abs().max()


@pytest.mark.parametrize("kind", (*RANDOM_KINDS, "none"))
def test_batch_rows_independent(kind):
    dim = sum(SIZES) if kind == "none" else DIM
    proj = make_projector(kind, SIZES, dim, seed=3)
    x = torch.randn(7, sum(SIZES))
    batch = proj.project(split(x))
    assert batch.shape == (7, dim) and batch.dtype == torch.float32
    for i in range(len(x)):
        alone = proj.project(split(x[i : i + 1]))
        assert_rows_close(alone, batch[i : i + 1], rel=1e-6)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_linear_and_equal_to_concatenated_matrix(kind):
    proj = make_projector(kind, SIZES, DIM, seed=5)
    x, y = torch.randn(2, sum(SIZES)), torch.randn(2, sum(SIZES))
    px, py = proj.project(split(x)), proj.project(split(y))
    mix = proj.project(split(2.5 * x - 0.5 * y))
    assert_rows_close(mix, 2.5 * px - 0.5 * py)
    assert_rows_close(px, x @ implied_matrix(proj, SIZES))


def test_sparse_matrix_structure():
    sizes, dim, nnz = (700, 700, 648), 64, 4  # P = 2048
    proj = SparseSignProjector(sizes, dim, seed=0, nnz=nnz)
    m = implied_matrix(proj, sizes)
    assert ((m != 0).sum(1) == nnz).all(), "every input row needs exactly nnz non-zeros"
    assert set(m[m != 0].abs().unique().tolist()) == {fp32(1 / math.sqrt(nnz))}
    width = dim // nnz  # one non-zero in each of the nnz output ranges (Kane-Nelson blocks)
    per_range = (m != 0).view(-1, nnz, width).sum(2)
    assert (per_range == 1).all()
    positive = (m > 0).sum().item() / (m != 0).sum().item()
    assert abs(positive - 0.5) < 4 * 0.5 / math.sqrt(2048 * nnz)
    load = (m != 0).sum(0).float()  # ~ Binomial(2048, 1/16): mean 128, sd 11
    assert (load - 128).abs().max() < 5 * 11
    assert not torch.equal(m[:700], m[700:1400]), "equal-sized blocks share a hash"


def test_sparse_fast_path_matches_plain_definition():
    proj = SparseSignProjector(SIZES, DIM, seed=2, nnz=3)  # 512 % 3 != 0: uneven ranges
    x = torch.randn(5, sum(SIZES))
    dense = torch.zeros(sum(SIZES), DIM)
    start = 0
    for i, n in enumerate(SIZES):
        column, sign = proj.buckets(i)
        rows = torch.arange(start, start + n)[:, None].expand(n, 3)
        dense[rows, column] += sign.float() / math.sqrt(3)
        start += n
    assert_rows_close(proj.project(split(x)), x @ dense)


def test_sparse_cache_and_rehash_agree():
    x = torch.randn(4, sum(SIZES))
    cached = SparseSignProjector(SIZES, DIM, seed=4).project(split(x))
    rehashed = SparseSignProjector(SIZES, DIM, seed=4, cache_bytes=0)
    assert torch.equal(cached, rehashed.project(split(x)))
    assert not rehashed._cache


@pytest.mark.parametrize("kind", ("sparse_sign", "rademacher"))
def test_hash_depends_only_on_block_and_position(kind):
    short = implied_matrix(make_projector(kind, (100, 50), DIM, seed=9), (100, 50))
    long = implied_matrix(make_projector(kind, (300, 50), DIM, seed=9), (300, 50))
    assert torch.equal(short[:100], long[:100])
    assert torch.equal(short[100:], long[300:])


def test_rademacher_matrix_structure():
    sizes, dim = (2048, 2048), 64
    m = implied_matrix(RademacherProjector(sizes, dim, seed=0), sizes)
    assert set(m.abs().unique().tolist()) == {fp32(1 / math.sqrt(dim))}
    # Each of the 8 signs drawn from one byte of a 64-bit word must be balanced.
    positive = (m > 0).float().view(-1, 8).mean(0)
    assert (positive - 0.5).abs().max() < 4 * 0.5 / math.sqrt(m.numel() / 8)
    assert not torch.equal(m[:2048], m[2048:]), "equal-sized blocks share a matrix"
    gram = m.T @ m  # columns nearly orthogonal, unit norm
    assert (gram.diagonal() - 4096 / dim).abs().max() < 1e-3
    off = gram - torch.diag(gram.diagonal())
    assert off.abs().max() < 5 * math.sqrt(4096) / dim


def test_rademacher_fast_path_matches_plain_definition():
    proj = RademacherProjector(SIZES, DIM, seed=6, chunk_rows=64)
    x = torch.randn(3, sum(SIZES))
    parts = []
    for i, n in enumerate(SIZES):
        chunks = [proj.signs(i, c) for c in range(math.ceil(n / 64))]
        parts.append(torch.cat(chunks)[:n])
    dense = torch.cat(parts) / math.sqrt(DIM)
    assert_rows_close(proj.project(split(x)), x @ dense)


def test_trak_basic_matrix_structure():
    proj = TrakBasicProjector(SIZES, DIM, seed=0)
    assert proj.block_size < DIM
    m = implied_matrix(proj, SIZES)
    assert set(m.abs().unique().tolist()) == {fp32(1 / math.sqrt(DIM))}
    assert abs((m > 0).float().mean().item() - 0.5) < 0.005


def test_rademacher_and_trak_basic_agree_statistically():
    x, y, c = unit_pairs(200, sum(SIZES), seed=11)
    ours, _ = inner_products("rademacher", x, y)
    trak, _ = inner_products("trak_basic", x, y)
    assert not torch.allclose(ours, trak, atol=1e-3), "expected different matrices"
    err_ours, err_trak = ours - c, trak - c
    assert abs(torch.corrcoef(torch.stack([err_ours, err_trak]))[0, 1].item()) < 0.3
    assert_standard((ours - trak) / (2 * (1 + c**2) / DIM).sqrt(), "rademacher - trak")
    assert abs(err_ours.std().item() / err_trak.std().item() - 1) < 0.25


def test_none_is_exact_and_checks_dim():
    x = torch.randn(3, sum(SIZES), dtype=torch.float64)
    out = make_projector("none", SIZES, sum(SIZES)).project(split(x))
    assert torch.equal(out, x.float())
    with pytest.raises(ValueError, match="proj_dim must equal P"):
        make_projector("none", SIZES, DIM)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_low_precision_input_accumulates_in_fp32(kind):
    proj = make_projector(kind, SIZES, DIM)
    x = torch.randn(2, sum(SIZES)).to(torch.bfloat16)
    got = proj.project(split(x))
    assert got.dtype == torch.float32
    assert_rows_close(got, proj.project(split(x.float())), rel=1e-6)


def test_sparse_transposed_input_and_nonfinite_rows_do_not_leak():
    proj = SparseSignProjector(SIZES, DIM, seed=1)
    x = torch.randn(3, sum(SIZES))
    expected = proj.project(split(x))
    # Blocks laid out as (n, b) in memory take the zero-copy path.
    as_columns = [part.t().contiguous().t() for part in split(x)]
    assert torch.equal(proj.project(as_columns), expected)
    x[0, 5] = float("inf")
    got = proj.project(split(x))
    assert not torch.isfinite(got[0]).all()
    assert torch.equal(got[1:], expected[1:]), "a non-finite row leaked into others"


def test_golden_values_fix_the_scheme():
    """Stored datastores depend on these draws: change them only with SCHEME_VERSION."""
    column, sign = SparseSignProjector((10,), 64, seed=0).buckets(0)
    assert column[:2].tolist() == [[9, 23, 39, 57], [12, 24, 38, 57]]
    assert sign[:2].tolist() == [[-1, 1, 1, -1], [1, 1, 1, -1]]
    row = RademacherProjector((10,), 64, seed=0).signs(0, 0)[0, :8]
    assert row.tolist() == [1, 1, -1, -1, 1, -1, -1, -1]


def test_input_checks_name_the_block():
    proj = make_projector("sparse_sign", SIZES, DIM)
    x = split(torch.randn(2, sum(SIZES)))
    with pytest.raises(ValueError, match="expects 3 blocks"):
        proj.project(x[:2])
    with pytest.raises(ValueError, match="block 1: expected shape"):
        proj.project([x[0], x[1][:, :10], x[2]])
    with pytest.raises(ValueError, match="block 2: batch size"):
        proj.project([x[0], x[1], x[2][:1]])
    with pytest.raises(ValueError, match="unknown projection kind"):
        make_projector("gaussian", SIZES, DIM)
    with pytest.raises(ValueError, match="block_size"):
        TrakBasicProjector(SIZES, DIM, block_size=DIM)
    assert proj.project(split(torch.zeros(0, sum(SIZES)))).shape == (0, DIM)


def test_describe_is_json_and_distinguishes_settings():
    kinds = {k: make_projector(k, SIZES, DIM).describe() for k in RANDOM_KINDS}
    for desc in kinds.values():
        assert json.loads(json.dumps(desc)) == desc
    assert len({json.dumps(d, sort_keys=True) for d in kinds.values()}) == 3
    assert make_projector("sparse_sign", SIZES, DIM, seed=1).describe() != kinds["sparse_sign"]
    assert kinds["sparse_sign"]["sparse_nnz"] == 4


def test_sparse_at_lora_scale():
    """SmolLM2-135M LoRA r=8 block sizes (P = 921,600) at the default d = 8192."""
    sizes = []
    for _ in range(30):
        for out_dim in (576, 192, 192, 576):
            sizes += [8 * 576, out_dim * 8]
    proj = make_projector("sparse_sign", sizes, 8192, seed=0)
    x = torch.nn.functional.normalize(torch.randn(4, sum(sizes)), dim=1)
    feats = proj.project(split(x, sizes))
    sq = (feats**2).sum(1)
    assert (sq - 1).abs().max() < 5 * math.sqrt(2 / 8192)
    assert torch.equal(proj.project(split(x[2:3], sizes))[0], feats[2])


def test_sparse_threads_setting_is_restored():
    before = torch.get_num_threads()
    proj = SparseSignProjector(SIZES, DIM, threads=1)
    proj.project(split(torch.randn(2, sum(SIZES))))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kind", [*RANDOM_KINDS, "none"])
def test_blocks_one_at_a_time_in_any_order_equal_project(kind):
    dim = sum(SIZES) if kind == "none" else DIM
    proj = make_projector(kind, SIZES, dim, seed=2)
    x = torch.randn(3, sum(SIZES))
    want = proj.project(split(x))
    partial = proj.begin(3)
    for i, block in reversed(list(enumerate(split(x)))):
        proj.add(partial, i, block)
    assert_rows_close(proj.finish(partial), want, rel=1e-6)
    partial = proj.begin(3)
    proj.add(partial, 0, split(x)[0])
    with pytest.raises(ValueError, match="already added"):
        proj.add(partial, 0, split(x)[0])
    with pytest.raises(ValueError, match="never added"):
        proj.finish(partial)


def test_sparse_cache_defaults_to_every_block_and_zero_rehashes():
    from less_lab.core.projection_sparse import sketch_table_bytes

    auto = SparseSignProjector(SIZES, DIM, seed=4)
    assert auto.cache_bytes == sketch_table_bytes(SIZES, DIM, 4)
    x = torch.randn(2, sum(SIZES))
    feats = auto.project(split(x))
    assert auto.cached_bytes == auto.cache_bytes and len(auto._cache) == len(SIZES)
    none = make_projector("sparse_sign", SIZES, DIM, seed=4, cache_mb=0)
    assert torch.equal(none.project(split(x)), feats) and none.cached_bytes == 0


def test_rademacher_on_cuda_without_fast_jl_warns_and_names_the_slow_path(monkeypatch):
    from less_lab.core import projection_dense

    monkeypatch.setattr(projection_dense, "_fast_jl_importable", lambda: False)
    with pytest.warns(RuntimeWarning, match="fast_jl .*not importable.*slower path"):
        proj = RademacherProjector(SIZES, 1024, device="cuda")
    assert not proj.use_fast_jl and proj.describe()["generator"] == "torch-cuda-philox"
    with pytest.warns(RuntimeWarning, match="not a multiple of 512"):
        RademacherProjector(SIZES, 1000, device="cuda")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RademacherProjector(SIZES, 1024, device="cuda", use_fast_jl=False)  # asked for
        RademacherProjector(SIZES, 1024)  # CPU: fast_jl never applies
