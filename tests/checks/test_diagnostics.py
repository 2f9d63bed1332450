"""Reliability diagnostics on constructed cases where the right answer is known.

Split-half: identical halves -> reliability 1; pure noise -> overlap at chance; a planted
signal of known size -> the split-half estimate matches the *actual* reliability (squared
correlation of the projected score with the exact, unprojected score). Adam health:
v << eps -> eps share 1 and Γ = momentum-SGD; the parts of Γ add up to
``gradients.adam_update``. Truncation: counts from real tokenization.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from less_lab.checks import adam_health as ah
from less_lab.checks import reliability as rel
from less_lab.checks.diagnostics import summary, truncation_report
from less_lab.config import DataConfig, GradientConfig, ScoreConfig, SelectConfig
from less_lab.core.datastore import build_store
from less_lab.core.gradients import AdamState, adam_update, per_example_gradients
from less_lab.core.projection import make_projector
from less_lab.core.scoring import aggregate, long_frame, subtask_scores


def _compute(matrix: np.ndarray):
    def compute(rows):
        x = torch.as_tensor(matrix[rows], dtype=torch.float32)
        norm = x.norm(dim=1)
        yield SimpleNamespace(rows=rows, features=x, loss=norm, grad_norm=norm, feature_norm=norm)

    return compute


def store(path, matrix, projection, *, split="pool", ids=None, epoch=1):
    ids = ids or [f"{split}{i}" for i in range(len(matrix))]
    settings = {
        "split": split,
        "feature": "adam" if split == "pool" else "sgd",
        "dim": matrix.shape[1],
        "dtype": "float32",
        "projection": projection,
        "model": "m",
        "checkpoint": {"epoch": epoch},
    }
    return build_store(path, settings, ids, _compute(matrix), progress=False)


def targets_frame(subtasks: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"example_id": [f"target{i}" for i in range(len(subtasks))], "subtask": subtasks}
    )


def planted(n=500, p=4000, tau=0.0625, seed=0):
    """Pool rows whose exact cosine with the target direction is ``a_i ~ N(0.05, tau)``,
    and 4 target shots near that direction (one subtask)."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=p)
    t /= np.linalg.norm(t)
    a = rng.normal(0.05, tau, size=n)
    u = rng.normal(size=(n, p))
    u -= np.outer(u @ t, t)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pool = a[:, None] * t + np.sqrt(1 - a**2)[:, None] * u
    shots = t + rng.normal(scale=0.3 / np.sqrt(p), size=(4, p))
    return pool.astype(np.float32), shots.astype(np.float32)


def project(kind, x, d, seed=0, **kw):
    proj = make_projector(kind, [x.shape[1]], d, seed, **kw)
    return proj.project([torch.as_tensor(x)]).numpy(), proj.describe()


# ------------------------------------------------------------------ split-half reliability


def test_columns_slice_equals_scoring_the_sliced_store(tmp_path):
    rng = np.random.default_rng(1)
    pool, tgt = rng.normal(size=(20, 6)), rng.normal(size=(3, 6))
    targets = targets_frame(["a", "a", "b"])
    desc = {"kind": "rademacher"}
    full = subtask_scores(
        [store(tmp_path / "p", pool, desc)],
        [store(tmp_path / "t", tgt, desc, split="target", ids=list(targets["example_id"]))],
        targets,
        [1.0],
        columns=slice(2, 5),
    )
    part = subtask_scores(
        [store(tmp_path / "p2", pool[:, 2:5], desc)],
        [
            store(
                tmp_path / "t2", tgt[:, 2:5], desc, split="target", ids=list(targets["example_id"])
            )
        ],
        targets,
        [1.0],
    )
    np.testing.assert_allclose(full[0], part[0], rtol=1e-6)


def test_identical_halves_give_reliability_one(tmp_path):
    rng = np.random.default_rng(0)
    half_pool, half_tgt = rng.normal(size=(200, 8)), rng.normal(size=(6, 8))
    pool, tgt = np.hstack([half_pool] * 2), np.hstack([half_tgt] * 2)
    targets = targets_frame(["a", "a", "b", "b", "c", "c"])
    desc = {"kind": "rademacher", "proj_dim": 16}
    r = rel.split_half(
        [store(tmp_path / "p", pool, desc)],
        [store(tmp_path / "t", tgt, desc, split="target", ids=list(targets["example_id"]))],
        targets,
        [1.0],
        select=SelectConfig(k=20),
    )
    assert r.r_half == pytest.approx(1.0) and r.r_full == pytest.approx(1.0)
    assert r.overlap == 20 and r.excess_overlap == pytest.approx(1.0)
    assert r.half_dim == 8 and r.d_needed <= 16  # already past the target at d=16
    assert r.argmax_agreement == 1.0 and r.r_full_subtasks == pytest.approx(1.0)


def test_pure_noise_overlaps_at_chance(tmp_path):
    """Independent halves of pure-noise features: the top-k overlap, averaged over many
    pools, sits at the hypergeometric k²/n, and the reliability near 0."""
    targets = targets_frame(["a", "b"])
    overlaps, r_halves = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        pool, tgt = rng.normal(size=(400, 64)), rng.normal(size=(2, 64))
        desc = {"kind": "rademacher"}
        r = rel.split_half(
            [store(tmp_path / f"p{seed}", pool, desc)],
            [
                store(
                    tmp_path / f"t{seed}",
                    tgt,
                    desc,
                    split="target",
                    ids=list(targets["example_id"]),
                )
            ],
            targets,
            [1.0],
            select=SelectConfig(k=40),
        )
        overlaps.append(r.overlap)
        r_halves.append(r.r_half)
    mean, sd = rel.chance_overlap(400, 40)
    assert mean == pytest.approx(4.0)
    assert abs(np.mean(overlaps) - mean) < 3 * sd / np.sqrt(len(overlaps))
    assert abs(np.mean(r_halves)) < 0.05


def test_chance_overlap_matches_simulation():
    rng = np.random.default_rng(0)
    n, k = 60, 12
    sims = [
        len(set(rng.choice(n, k, replace=False)) & set(rng.choice(n, k, replace=False)))
        for _ in range(20000)
    ]
    mean, sd = rel.chance_overlap(n, k)
    assert np.mean(sims) == pytest.approx(mean, abs=0.03)
    assert np.std(sims) == pytest.approx(sd, rel=0.03)


def test_spearman_brown_and_prophecy():
    assert rel.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert rel.spearman_brown(0.5, 3.0) == pytest.approx(0.75)
    # reliability 0.5 at d=1000 -> 0.9 needs 9x the length
    assert rel.dim_for_reliability(0.5, 1000, 0.9) == 9000
    assert rel.dim_for_reliability(0.0, 1000) is None
    # the prophecy inverts Spearman-Brown
    d = rel.dim_for_reliability(0.3, 2048, 0.8)
    assert rel.spearman_brown(0.3, d / 2048) == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("kind,kw", [("rademacher", {}), ("sparse_sign", {"sparse_nnz": 4})])
def test_split_half_predicts_actual_reliability(tmp_path, kind, kw):
    """The estimate from two halves equals corr(projected, exact)² within sampling error;
    without the Spearman-Brown step (or with dependent halves) it would be far off."""
    pool, shots = planted()
    targets = targets_frame(["a"] * 4)
    tid = list(targets["example_id"])
    exact = [
        store(tmp_path / "pe", pool, {"kind": "none"}),
        store(tmp_path / "te", shots, {"kind": "none"}, split="target", ids=tid),
    ]
    exact_scores, _ = subtask_scores(exact[:1], exact[1:], targets, [1.0])
    d = 256
    pp, desc = project(kind, pool, d, **kw)
    tp, _ = project(kind, shots, d, **kw)
    pstore = store(tmp_path / "pp", pp, desc)
    tstore = store(tmp_path / "tp", tp, desc, split="target", ids=tid)
    projected, _ = subtask_scores([pstore], [tstore], targets, [1.0])
    actual = rel.correlation(projected[:, 0], exact_scores[:, 0]) ** 2
    r = rel.split_half([pstore], [tstore], targets, [1.0], select=SelectConfig(k=25))
    assert 0.3 < actual < 0.7  # the case is informative: neither all signal nor all noise
    assert r.r_full == pytest.approx(actual, abs=0.1)
    assert abs(r.r_half - actual) > 0.1  # the raw half correlation alone would be wrong
    # prophecy: the d it asks for for reliability 0.9 delivers about that
    assert r.d_needed is not None and r.d_needed > d
    big_p, _ = project(kind, pool, r.d_needed, seed=1, **kw)
    big_t, _ = project(kind, shots, r.d_needed, seed=1, **kw)
    big = subtask_scores(
        [store(tmp_path / "pb", big_p, desc)],
        [store(tmp_path / "tb", big_t, desc, split="target", ids=tid)],
        targets,
        [1.0],
    )[0]
    assert rel.correlation(big[:, 0], exact_scores[:, 0]) ** 2 == pytest.approx(0.9, abs=0.07)


def test_sparse_sign_halves_follow_its_ranges(tmp_path):
    x = np.zeros((3, 12), np.float32)
    a, b, length = rel.half_columns(
        store(tmp_path / "s4", x, {"kind": "sparse_sign", "sparse_nnz": 4})
    )
    assert (a, b, length) == (slice(0, 6), slice(6, 12), 2.0)
    a, b, length = rel.half_columns(
        store(tmp_path / "s3", x, {"kind": "sparse_sign", "sparse_nnz": 3})
    )
    assert (a, b, length) == (slice(0, 4), slice(4, 8), 3.0)  # last range left out
    with pytest.raises(ValueError, match="nnz=1"):
        rel.half_columns(store(tmp_path / "s1", x, {"kind": "sparse_sign", "sparse_nnz": 1}))
    with pytest.raises(ValueError, match="exact"):
        rel.half_columns(store(tmp_path / "n", x, {"kind": "none"}))


def test_agreement_and_pairwise_cosine(tmp_path):
    frame = pl.DataFrame(
        {"example_id": [f"e{i}" for i in range(50)], "score": np.linspace(0, 1, 50)}
    )
    same = rel.agreement(frame, frame, 5)
    assert same["pearson"] == pytest.approx(1) and same["overlap"] == 5
    flipped = rel.agreement(frame, frame.with_columns(-pl.col("score")), 5)
    assert flipped["spearman"] == pytest.approx(-1) and flipped["overlap"] == 0
    x = np.random.default_rng(0).normal(size=(30, 5))
    s = store(tmp_path / "c", x, {"kind": "none"})
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    plain = (cos.sum() - np.trace(cos)) / (30 * 29)
    assert rel.mean_pairwise_cosine(s) == pytest.approx(plain, abs=1e-6)
    aligned = store(tmp_path / "a", np.ones((4, 5)) + 1e-3 * x[:4], {"kind": "none"})
    assert rel.mean_pairwise_cosine(aligned) > 0.99


# -------------------------------------------------------------------- Adam-update health


class FakeCheckpoint:
    """What adam_health reads from a checkpoint: moments, and LoRA weights to load."""

    def __init__(self, epoch, state, weights=None):
        self.epoch, self._state, self._weights = epoch, state, weights or {}
        self.adapter_dir = f"fake-{epoch}"

    def adam_state(self):
        return self._state

    def adapter_weights(self):
        return self._weights


def moments(shapes: dict, m: float, v: float, step=10, eps=1e-8, seed=0, spread=0.1):
    """Random moments: m ~ N(0, m²), v = v * 10^U(-spread, spread)."""
    gen = torch.Generator().manual_seed(seed)
    avg = {k: m * torch.randn(s, generator=gen) for k, s in shapes.items()}
    sq = {k: v * 10 ** (spread * (2 * torch.rand(s, generator=gen) - 1)) for k, s in shapes.items()}
    return AdamState(avg, sq, step, (0.9, 0.999), eps)


def test_eps_share_known_cases():
    shapes = {
        "model.layers.0.self_attn.q_proj.lora_A.weight": (4, 8),
        "model.layers.0.self_attn.q_proj.lora_B.weight": (8, 4),
    }
    tiny = FakeCheckpoint(1, moments(shapes, 1e-4, 1e-13))
    big = FakeCheckpoint(2, moments(shapes, 1e-4, 1e-4))
    table = ah.eps_share_table([tiny, big])
    assert table.filter(pl.col("checkpoint") == 1)["eps_share"].to_list() == [1.0, 1.0]
    assert table.filter(pl.col("checkpoint") == 2)["eps_share"].to_list() == [0.0, 0.0]
    assert set(table["kind"]) == {"q_proj.lora_A", "q_proj.lora_B"}
    # v = 1e-12: below eps inside the sqrt, but sqrt(v) = 1e-6 is above eps outside it
    mid = FakeCheckpoint(3, moments(shapes, 1e-4, 1e-12))
    inside = ah.eps_share_table([mid])["eps_share"].to_list()
    outside = ah.eps_share_table([mid], GradientConfig(adam_eps_inside_sqrt=False))
    assert inside == [1.0, 1.0] and outside["eps_share"].to_list() == [0.0, 0.0]
    # half the coordinates small, half large -> share 1/2
    state = moments(shapes, 1e-4, 1e-4)
    for v in state.exp_avg_sq.values():
        v.view(-1)[::2] = 1e-14
    half = ah.eps_share_table([FakeCheckpoint(4, state)])
    assert half["eps_share"].to_list() == [0.5, 0.5]
    health = ah.adam_health([tiny, big])
    assert len(health.warnings) == 1 and "checkpoint 1" in health.warnings[0]
    assert "eps share 100.0%" in health.text()


@pytest.mark.parametrize("inside", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_update_parts_add_up_to_adam_update(inside, bias):
    cfg = GradientConfig(adam_eps_inside_sqrt=inside, adam_bias_correction=bias)
    state = moments({"w": (50,)}, 1e-3, 1e-7, step=3)
    g = 1e-3 * torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    parts = ah.update_parts(g, state.exp_avg["w"], state.exp_avg_sq["w"], state, cfg)
    want = adam_update(g.clone(), state.exp_avg["w"], state.exp_avg_sq["w"], state, cfg)
    torch.testing.assert_close(parts["update"].float(), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(parts["momentum"] + parts["gradient"], parts["update"])


def _lora_tiny(tiny_model):
    from less_lab.config import LoraSettings
    from less_lab.model.lora import add_lora, canonical_name

    model = add_lora(tiny_model, LoraSettings(r=2, alpha=4, dropout=0.0), seed=0)
    with torch.no_grad():  # non-zero B so both A and B get gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    weights = {
        canonical_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n
    }
    return model, weights


def _tokenized(tiny_tokenizer, n=3):
    from less_lab.data.formatting import tokenize

    frame = pl.DataFrame(
        {
            "example_id": [f"x{i}" for i in range(n)],
            "messages": [
                [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"The answer is {2 * i}."},
                ]
                for i in range(n)
            ],
        }
    )
    return tokenize(frame, tiny_tokenizer, DataConfig(max_length=64))[0]


def test_momentum_share_against_plain_definition(tiny_model, tiny_tokenizer):
    model, weights = _lora_tiny(tiny_model)
    tok = _tokenized(tiny_tokenizer)
    shapes = {k: tuple(w.shape) for k, w in weights.items()}
    cfg = GradientConfig()
    state = moments(shapes, 1e-3, 1e-6, step=5)
    table = ah.momentum_table(
        [FakeCheckpoint(1, state, weights)], model, tok, cfg, pad_id=tiny_tokenizer.pad_token_id
    )
    # plain: batch-1 gradient of example x1, Γ by adam_update, momentum term by hand
    from less_lab.data.batching import collate
    from less_lab.model.lora import block_names, lora_modules

    modules = lora_modules(model)
    batch = collate([tok["input_ids"][1]], [tok["labels"][1]], tiny_tokenizer.pad_token_id)
    blocks, _ = per_example_gradients(model, modules, batch)
    mm = uu = 0.0
    b1, b2 = state.betas
    t = state.step + 1
    for blk, name in zip(blocks, block_names(modules), strict=True):
        m, v = state.exp_avg[name].flatten(), state.exp_avg_sq[name].flatten()
        gamma = adam_update(blk.clone(), m, v, state, cfg)[0].double()
        v_new = (b2 * v + (1 - b2) * blk[0].square()) / (1 - b2**t)
        mom = (b1 * m / (1 - b1**t)) / (v_new + state.eps).sqrt()
        mm += float(mom.double().square().sum())
        uu += float(gamma.square().sum())
    row = table.filter(pl.col("example_id") == "x1").row(0, named=True)
    assert row["momentum_share"] == pytest.approx((mm / uu) ** 0.5, rel=1e-4)


def test_adam_degenerates_to_momentum_sgd_when_v_below_eps(tiny_model, tiny_tokenizer):
    model, weights = _lora_tiny(tiny_model)
    tok = _tokenized(tiny_tokenizer)
    shapes = {k: tuple(w.shape) for k, w in weights.items()}
    # v << eps (eps large enough to dominate the example's own g² too) and a big shared
    # momentum: Γ ~ momentum-SGD, dominated by the momentum term
    degenerate = FakeCheckpoint(1, moments(shapes, 1.0, 1e-20, step=1000, eps=1.0))
    # no momentum, v >> eps and uneven over 6 decades: real Adam preconditioning
    healthy = FakeCheckpoint(2, moments(shapes, 0.0, 1e2, step=1000, spread=3.0))
    for ck in (degenerate, healthy):
        ck._weights = weights
    h = ah.adam_health(
        [degenerate, healthy],
        model=model,
        tokenized=tok,
        pad_id=tiny_tokenizer.pad_token_id,
        sample=3,
    )
    by = {r["checkpoint"]: r for r in h.by_checkpoint().iter_rows(named=True)}
    assert by[1]["eps_share"] == 1.0 and by[1]["eps_share_with_g"] > 0.99
    assert by[1]["msgd_cos"] > 0.999 and by[1]["momentum_share"] > 0.9
    assert by[2]["eps_share"] == 0.0 and by[2]["momentum_share"] == 0.0
    assert by[2]["msgd_cos"] < 0.95
    text = " ".join(h.warnings)
    assert "checkpoint 1" in text and "checkpoint 2" not in text
    assert "momentum-SGD" in text


# ------------------------------------------------------------------ truncation + summary


def test_truncation_report_counts_what_was_cut(tiny_tokenizer):
    from less_lab.data.formatting import tokenize

    long_prompt = "word " * 80
    pool = pl.DataFrame(
        {
            "example_id": ["short", "long", "long2"],
            "source": ["a", "b", "b"],
            "messages": [
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                [
                    {"role": "user", "content": long_prompt},
                    {"role": "assistant", "content": "fine"},
                ],
                [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}],
            ],
        }
    )
    cfg = DataConfig(max_length=32)
    tok, dropped = tokenize(pool, tiny_tokenizer, cfg)
    rep = truncation_report(tok, dropped, pool)
    b = rep.filter(pl.col("source") == "b").row(0, named=True)
    assert (b["n"], b["prompt_cut"], b["completion_cut"], b["dropped"]) == (2, 2, 0, 0)
    with pytest.warns(UserWarning, match="dropped"):
        tok_r, dropped_r = tokenize(pool, tiny_tokenizer, replace(cfg, truncation="right"))
    rep_r = truncation_report(tok_r, dropped_r, pool)
    b = rep_r.filter(pl.col("source") == "b").row(0, named=True)
    assert (b["n"], b["dropped"]) == (2, 2)
    assert rep_r.filter(pl.col("source") == "a")["dropped"].to_list() == [0]


def test_summary_warns_on_noise_and_not_on_signal(tmp_path):
    targets = targets_frame(["a", "b"])
    tid = list(targets["example_id"])
    rng = np.random.default_rng(0)
    noise = summary(
        [store(tmp_path / "p", rng.normal(size=(300, 32)), {"kind": "rademacher"})],
        [
            store(
                tmp_path / "t",
                rng.normal(size=(2, 32)),
                {"kind": "rademacher"},
                split="target",
                ids=tid,
            )
        ],
        targets,
        [1.0],
        select_cfg=SelectConfig(k=15),
    )
    assert any("projection noise" in w for w in noise.warnings)
    assert "reliability" in noise.frames() and "projection reliability" in noise.text()
    half = rng.normal(size=(300, 16))
    clean = summary(
        [store(tmp_path / "p2", np.hstack([half, half]), {"kind": "rademacher"})],
        [
            store(
                tmp_path / "t2",
                np.hstack([np.eye(2, 16)] * 2),
                {"kind": "rademacher"},
                split="target",
                ids=tid,
            )
        ],
        targets,
        [1.0],
        select_cfg=SelectConfig(k=15),
    )
    assert clean.warnings == [] and "no warnings" in clean.text()
    exact = summary(
        [store(tmp_path / "p3", half, {"kind": "none"})],
        [store(tmp_path / "t3", np.eye(2, 16), {"kind": "none"}, split="target", ids=tid)],
        targets,
        [1.0],
    )
    assert exact.reliability is None and "reliability" not in exact.frames()


def test_summary_with_selection_report(tmp_path):
    from less_lab.core.selection import select_top, selection_report

    targets = targets_frame(["a", "b", "c"])
    rng = np.random.default_rng(0)
    half = rng.normal(size=(100, 8))
    pstore = store(tmp_path / "p", np.hstack([half, half]), {"kind": "rademacher"})
    tstore = store(
        tmp_path / "t",
        np.hstack([rng.normal(size=(3, 8))] * 2),
        {"kind": "rademacher"},
        split="target",
        ids=list(targets["example_id"]),
    )
    matrix, subtasks = subtask_scores([pstore], [tstore], targets, [1.0], ScoreConfig())
    ids = pstore.ids
    pool = pl.DataFrame({"example_id": ids, "source": ["s"] * len(ids)})
    tok = pool.with_columns(pl.lit(10).alias("n_tokens"), pl.lit(5).alias("n_completion_tokens"))
    top = select_top(aggregate(long_frame(matrix, subtasks, ids)), SelectConfig(k=10))
    report = selection_report(top, pool, tok, subtasks=subtasks)
    diag = summary(
        [pstore], [tstore], targets, [1.0], selection=report, select_cfg=SelectConfig(k=10)
    )
    assert diag.warnings == report.warnings
    assert "selection_subtasks" in diag.frames() and "selection of 10" in diag.text()
