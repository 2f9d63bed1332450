"""A store is trusted only when it is complete, made with the requested settings and intact.

Covers issue 6 "Integrity" and the non-finite-gradient part of "Bad input": a missing
``meta.json`` means incomplete; any differing setting (model or checkpoint fingerprint,
projection kind/seed/dim, feature kind, data fingerprint, format version) is refused with
both values named, on complete and on partial stores; truncated or corrupted files are
detected; NaN/inf gradients are reported by example id, score NaN and are never selected.
The other bad-input cases (malformed JSONL, roles, empty completions, truncation,
non-UTF-8, huge lines, duplicate ids, target layouts) are tested in test_data.py and
test_targets.py; duplicate ids reaching the datastore directly are refused here.
"""

from __future__ import annotations

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from less_lab.config import GradientConfig, LoraSettings, SelectConfig
from less_lab.core import datastore
from less_lab.core.datastore import (
    SettingsMismatchError,
    StoreCorruptError,
    build_store,
    open_store,
)
from less_lab.core.pipeline import extract_store
from less_lab.core.projection import make_projector
from less_lab.core.scoring import aggregate, long_frame, subtask_scores
from less_lab.core.selection import select_top
from less_lab.data.batching import IGNORE
from less_lab.model.lora import add_lora


def _settings(**change) -> dict:
    """Settings shaped like ``pipeline.store_settings`` output."""
    proj = make_projector("sparse_sign", [64, 32], 8, seed=0).describe()
    base = {
        "split": "pool",
        "feature": "adam",
        "dim": 8,
        "projection": proj,
        "model": "modelfp0000000001",
        "checkpoint": {"epoch": 1, "fingerprint": "ck0001"},
        "data": "datafp0000000001",
        "dtype": "float32",
        "package_version": "0.1.0",
        "adam": {"bias_correction": True, "eps_inside_sqrt": True},
    }
    return {**base, **change}


def _compute(matrix: np.ndarray, calls: list | None = None):
    def compute(rows):
        for start in range(0, len(rows), 2):
            part = rows[start : start + 2]
            if calls is not None:
                calls.extend(part)
            x = torch.as_tensor(matrix[part], dtype=torch.float32)
            norm = x.norm(dim=1)
            yield SimpleNamespace(
                rows=part, features=x, loss=norm, grad_norm=norm, feature_norm=norm
            )

    return compute


def _build(path, matrix, settings=None, calls=None, **kw):
    ids = [f"e{i}" for i in range(len(matrix))]
    return build_store(
        path,
        settings or _settings(dim=matrix.shape[1]),
        ids,
        _compute(matrix, calls),
        progress=False,
        **kw,
    )


X = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)


# --------------------------------------------------------------------- completeness


def test_missing_meta_means_incomplete_and_rebuild_recomputes_nothing(tmp_path):
    store = _build(tmp_path / "s", X)
    meta = (tmp_path / "s" / "meta.json").read_text()
    (tmp_path / "s" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no meta\.json; the store is missing or incompl"):
        open_store(tmp_path / "s")
    calls: list[int] = []
    again = _build(tmp_path / "s", X, calls=calls)
    assert calls == []  # every row was done: only meta.json is written again
    assert (tmp_path / "s" / "meta.json").read_text() == meta
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(store.features))


# ------------------------------------------------------------------------- settings

PROJ = _settings()["projection"]
CHANGES = {  # what changes -> the lines the error must hold
    "model": (
        {"model": "modelfp0000000002"},
        ["  model: on disk 'modelfp0000000001', requested 'modelfp0000000002'"],
    ),
    "checkpoint": (
        {"checkpoint": {"epoch": 1, "fingerprint": "ck0002"}},
        ["    checkpoint.fingerprint: on disk 'ck0001', requested 'ck0002'"],
    ),
    "projection kind": (
        {"projection": make_projector("rademacher", [64, 32], 8).describe()},
        ["    projection.kind: on disk 'sparse_sign', requested 'rademacher'"],
    ),
    "projection seed": (
        {"projection": {**PROJ, "seed": 1}},
        ["    projection.seed: on disk 0, requested 1"],
    ),
    "projection dim": (
        {"dim": 16, "projection": {**PROJ, "proj_dim": 16}},
        ["  dim: on disk 8, requested 16", "    projection.proj_dim: on disk 8, requested 16"],
    ),
    "feature": ({"feature": "sgd"}, ["  feature: on disk 'adam', requested 'sgd'"]),
    "data": (
        {"data": "datafp0000000002"},
        ["  data: on disk 'datafp0000000001', requested 'datafp0000000002'"],
    ),
}


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
@pytest.mark.parametrize("what", sorted(CHANGES))
def test_any_other_setting_is_refused_naming_both_values(tmp_path, what, partial):
    path = tmp_path / "s"
    if partial:
        with pytest.raises(KeyboardInterrupt):
            _build(path, X, on_write=_interrupt_after(1))
        assert not (path / "meta.json").exists()
    else:
        _build(path, X)
    change, want = CHANGES[what]
    new = _settings(**change)
    with pytest.raises(SettingsMismatchError) as err:
        _build(path, np.zeros((5, new["dim"]), np.float32), settings=new)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path} was built with different settings:"
    for line in want:
        assert line in lines, str(err.value)
    for key in change:  # the whole value too, both sides in the same key order
        assert any(x.startswith(f"  {key}: on disk ") for x in lines)


def _interrupt_after(k: int):
    seen = []

    def on_write(rows):
        seen.append(rows)
        if len(seen) > k:
            raise KeyboardInterrupt

    return on_write


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
def test_other_format_version_is_refused(tmp_path, monkeypatch, partial):
    path = tmp_path / "s"
    if partial:
        with pytest.raises(KeyboardInterrupt):
            _build(path, X, on_write=_interrupt_after(1))
    else:
        _build(path, X)
    monkeypatch.setattr(datastore, "FORMAT_VERSION", 2)
    with pytest.raises(SettingsMismatchError, match="format_version: on disk 1, requested 2"):
        _build(path, X)
    if not partial:  # also when opened without expected settings
        with pytest.raises(SettingsMismatchError, match="format_version: on disk 1, requested 2"):
            open_store(path)


def test_pipeline_records_model_checkpoint_projection_and_data(tmp_path, tiny_tokenizer):
    """The settings the real extractor writes change with each input that changes values."""
    from less_lab.model.tiny import tiny_llama

    data = _token_frame(6, len(tiny_tokenizer))
    cfg = GradientConfig(proj_dim=8, max_batch_examples=3)

    def run(fp="fp-a", frame=data, g=cfg):
        model = add_lora(tiny_llama(tiny_tokenizer, seed=0), LoraSettings(r=2, alpha=4))
        return extract_store(
            model,
            frame,
            tmp_path / "s",
            split="pool",
            feature="sgd",
            cfg=g,
            checkpoint=None,
            pad_id=tiny_tokenizer.pad_token_id,
            model_fingerprint=fp,
            progress=False,
        )

    store = run()
    assert store.meta["projection"]["seed"] == 0 and store.meta["dim"] == 8
    assert re.fullmatch(r"[0-9a-f]{16}", store.meta["data"])
    with pytest.raises(SettingsMismatchError, match=r"\n  model: on disk 'fp-a', requested 'fp-b'"):
        run(fp="fp-b")
    for key, g in {
        "projection": GradientConfig(proj_dim=8, max_batch_examples=3, proj_seed=1),
        "dim": GradientConfig(proj_dim=16, max_batch_examples=3),
    }.items():
        with pytest.raises(SettingsMismatchError, match=rf"\n  {key}: on disk"):
            run(g=g)
    other = data.with_columns(pl.col("input_ids").list.reverse())
    with pytest.raises(SettingsMismatchError, match=r"\n  data: on disk '[0-9a-f]{16}', requested"):
        run(frame=other)


# ------------------------------------------------------------------------ corruption


def test_truncated_or_corrupted_feature_file_is_detected(tmp_path):
    _build(tmp_path / "s", X)
    feats = tmp_path / "s" / "features.bin"
    good = feats.read_bytes()
    feats.write_bytes(good[:-4])
    where = re.escape(str(feats))
    with pytest.raises(StoreCorruptError, match=rf"{where}: size 156, expected 160"):
        open_store(tmp_path / "s")
    bad = bytearray(good)
    bad[37] ^= 0x10  # one flipped bit
    feats.write_bytes(bytes(bad))
    with pytest.raises(StoreCorruptError, match="checksum differs"):
        open_store(tmp_path / "s", verify=True)
    open_store(tmp_path / "s", verify=False)  # the size check alone cannot see a bit flip
    feats.write_bytes(good)
    assert open_store(tmp_path / "s", verify=True).ids == [f"e{i}" for i in range(5)]


def test_truncated_file_of_a_partial_store_is_refused_on_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "s", X, on_write=_interrupt_after(1))
    feats = tmp_path / "s" / "features.bin"
    feats.write_bytes(feats.read_bytes()[:100])
    with pytest.raises(StoreCorruptError, match=r"features\.bin: size 100, expected 160.*delete"):
        _build(tmp_path / "s", X)


def test_damaged_stats_meta_and_ids_are_detected(tmp_path):
    path = tmp_path / "s"
    _build(path, X)
    stats = path / "stats.bin"
    stats.write_bytes(stats.read_bytes()[:-1])
    with pytest.raises(StoreCorruptError, match=r"stats\.bin: size"):
        open_store(path)
    path = tmp_path / "t"
    _build(path, X)
    (path / "ids.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StoreCorruptError, match=r"ids\.parquet: unreadable"):
        open_store(path)
    (path / "meta.json").write_text('{"n": 5, ')
    with pytest.raises(StoreCorruptError, match=r"meta\.json: unreadable"):
        open_store(path)


def test_chunked_reader_equals_the_memmap_and_detects_truncation(tmp_path):
    x = np.random.default_rng(1).normal(size=(11, 6)).astype(np.float16)
    store = _build(tmp_path / "s", x, settings=_settings(dim=6, dtype="float16"))
    chunks = [(s, c.copy()) for s, c in store.iter_chunks(4)]
    assert [s for s, _ in chunks] == [0, 4, 8]
    assert all(c.dtype == np.float32 for _, c in chunks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), x.astype(np.float32))
    feats = tmp_path / "s" / "features.bin"
    feats.write_bytes(feats.read_bytes()[:-30])
    with pytest.raises(StoreCorruptError, match="ends inside row 8"):
        list(store.iter_chunks(4))


def test_duplicate_ids_are_refused_by_the_store(tmp_path):
    with pytest.raises(ValueError, match="duplicate example id 'e1'"):
        build_store(
            tmp_path / "s", _settings(), ["e0", "e1", "e1"], _compute(X[:3]), progress=False
        )


# ------------------------------------------------------------------- non-finite rows


def _token_frame(n: int, vocab: int, poison: set[int] = frozenset()) -> pl.DataFrame:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 6 + i % 5
        ids = torch.randint(5, vocab, (length,), generator=gen).tolist()
        if i in poison:
            ids[0] = POISON
        rows.append(
            {
                "example_id": f"x{i}",
                "input_ids": ids,
                "labels": [IGNORE] * 2 + ids[2:],
                "n_tokens": length,
                "n_completion_tokens": length - 2,
            }
        )
    return pl.DataFrame(rows)


POISON = 4  # a token id the random examples never use


def _poisoning_model(tokenizer, value: float):
    """Tiny LoRA model whose embedding output is ``value`` in rows that hold POISON, as a
    numerically broken example would be (fp16 overflow, a corrupted weight row...)."""
    from less_lab.model.tiny import tiny_llama

    model = add_lora(tiny_llama(tokenizer, seed=0), LoraSettings(r=2, alpha=4))

    def hook(_mod, inputs, output):
        bad = (inputs[0] == POISON).any(1)
        return torch.where(bad[:, None, None], torch.full_like(output, value), output)

    model.get_input_embeddings().register_forward_hook(hook)
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_gradients_are_reported_scored_nan_and_never_selected(
    tmp_path, tiny_tokenizer, value
):
    vocab = len(tiny_tokenizer)
    poison = {1, 4}
    pool = _token_frame(9, vocab, poison)
    cfg = GradientConfig(proj_dim=16, max_batch_examples=4)  # poisoned rows share batches
    pad = tiny_tokenizer.pad_token_id

    def extract(frame, path, split, model):
        return extract_store(
            model,
            frame,
            path,
            split=split,
            feature="sgd",
            cfg=cfg,
            checkpoint=None,
            pad_id=pad,
            progress=False,
        )

    with pytest.warns(UserWarning, match=r"2 of 9 examples have non-finite .*\['x1', 'x4'\]"):
        store = extract(pool, tmp_path / "pool", "pool", _poisoning_model(tiny_tokenizer, value))
    assert store.nonfinite_ids == ["x1", "x4"]
    clean = extract(
        _token_frame(9, vocab), tmp_path / "clean", "pool", _poisoning_model(tiny_tokenizer, value)
    )
    feats, ref = np.asarray(store.features), np.asarray(clean.features)
    others = [i for i in range(9) if i not in poison]
    assert not np.isfinite(feats[sorted(poison)]).any()
    np.testing.assert_array_equal(feats[others], ref[others])  # nothing leaks across rows

    targets = _token_frame(4, vocab, {2}).with_columns(
        pl.Series("example_id", ["t0", "t1", "t2", "t3"]),
        pl.Series("subtask", ["a", "a", "b", "b"]),
    )
    with pytest.warns(UserWarning, match="non-finite"):
        tstore = extract(
            targets, tmp_path / "target", "target", _poisoning_model(tiny_tokenizer, value)
        )
    assert tstore.nonfinite_ids == ["t2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matrix, subtasks = subtask_scores([store], [tstore], targets, [1.0])
    messages = [str(w.message) for w in caught]
    assert any("left out 1 target examples" in m and "t2" in m for m in messages), messages
    assert any(
        m.startswith("2 of 9 pool examples have non-finite") and "'x1', 'x4'" in m for m in messages
    ), messages
    assert np.isnan(matrix[sorted(poison)]).all()
    assert np.isfinite(matrix[others]).all()  # subtask b still scores, from t3 alone
    t3 = np.asarray(tstore.features)[3]
    want = ref[others] @ t3 / np.linalg.norm(ref[others], axis=1) / np.linalg.norm(t3)
    # fp32 cosines of batched rows against a row-by-row reference: ~1e-8 apart near zero
    np.testing.assert_allclose(matrix[others, subtasks.index("b")], want, rtol=1e-5, atol=1e-6)
    agg = aggregate(long_frame(matrix, subtasks, store.ids))
    top = select_top(agg, SelectConfig(k=9))
    assert top.height == 7 and not set(top["example_id"]) & {"x1", "x4"}


def test_meta_lists_every_nonfinite_id(tmp_path):
    x = np.ones((50, 4), np.float32)
    x[::2, 1] = np.inf
    with pytest.warns(UserWarning, match=r"25 of 50 examples .*'e38'\] \.\.\. \(all in "):
        store = _build(tmp_path / "s", x, settings=_settings(dim=4))
    assert store.nonfinite_ids == [f"e{i}" for i in range(0, 50, 2)]
    assert (
        json.loads((tmp_path / "s" / "meta.json").read_text())["nonfinite_ids"]
        == store.nonfinite_ids
    )
