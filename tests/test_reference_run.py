"""Already ran LESS? A reference run (princeton-nlp/LESS layout) explored with less_lab:
import, all three scoring methods, selection, reliability, views, the reference's own
selection side by side, and export back (``less_lab.reference_run``)."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
import torch
from reference_tree import STEPS, write_reference_run

from less_lab import ReferenceRun, export_reference
from less_lab.errors import DataError

POOL_ORDER = ["flan_v2", "dolly"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return write_reference_run(tmp_path_factory.mktemp("reference"))


def _run(ref, out, **kw):
    files = [ref["pool"] / f"{n}_data.jsonl" for n in POOL_ORDER]
    kw.setdefault("checkpoints_dir", ref["out"])
    return ReferenceRun(ref["grads"], out, pool_files=files, targets={"mmlu": ref["mmlu"]}, **kw)


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    return _run(ref, tmp_path_factory.mktemp("imported"))


def test_learning_rates_from_coarse_trainer_logs(run, ref):
    np.testing.assert_allclose([c.lr for c in run.checkpoints()], ref["weights"], rtol=1e-9)
    assert [c.step for c in run.checkpoints()] == list(STEPS)


def test_mean_of_shots_equals_the_reference_matching(run, ref):
    scores = run.scores("mmlu", method="mean_of_shots")
    want = torch.cat([ref["scores"][n] for n in POOL_ORDER]).numpy()
    np.testing.assert_allclose(scores["score"].to_numpy(), want, atol=2e-3)
    for method in ("paper", "dot"):
        other = run.scores("mmlu", method=method)
        assert other.height == 260 and other["score"].is_finite().all()


def test_selection_reliability_and_reference_selection(run, ref):
    sel = run.select("mmlu")
    assert sel.frame.height == 13 and sel.paths["selected"].exists()
    assert sel.reliability is not None and 0 < sel.reliability.r_full <= 1
    theirs = run.reference_selection(ref["root"] / "selected_data/mmlu/top_p0.05.jsonl")
    assert theirs.columns == ["example_id", "score", "rank", "file"]
    assert theirs.height == int(0.05 * 260) and theirs["rank"].to_list() == list(range(1, 14))
    assert len(set(theirs["example_id"]) & set(sel.frame["example_id"])) >= 10
    full = run.reference_selection(ref["root"] / "selected_data/mmlu/sorted.csv")
    assert (
        full.height == 260
        and full["example_id"].head(13).to_list() == theirs["example_id"].to_list()
    )


def test_views_show_both_selections(run, ref):
    theirs = run.reference_selection(ref["root"] / "selected_data/mmlu/top_p0.05.jsonl")
    tab = run.explore("mmlu", selections={"reference": theirs})
    assert set(tab.titles) == {"Top examples", "Similarity", "Subsets", "Lengths"}
    methods = set(tab.views["Lengths"].selections)
    assert {"LESS", "reference"} <= methods


def test_export_round_trip_to_reference_layout(run, ref, tmp_path):
    args = export_reference(run, tmp_path / "grads", targets=["mmlu"])
    assert args["train_file_names"] == POOL_ORDER and args["ckpts"] == list(STEPS)
    for sub in ("flan_v2-ckpt13-adam", "mmlu-ckpt26-sgd"):
        for f in ("all_orig.pt", "all_unormalized.pt"):
            a = torch.load(ref["grads"] / sub / "dim64" / f, weights_only=True)
            b = torch.load(tmp_path / "grads" / sub / "dim64" / f, weights_only=True)
            assert torch.equal(a, b)


def test_refusals_name_both_values(ref, tmp_path):
    with pytest.raises(ValueError, match="pass lrs="):
        _run(ref, tmp_path / "a", checkpoints_dir=None)
    with pytest.raises(ValueError, match="1 learning rates for 2 checkpoints"):
        _run(ref, tmp_path / "b", checkpoints_dir=None, lrs=[1.0])
    extra = ref["pool"].parent / "bigger_pool"
    extra.mkdir(exist_ok=True)
    lines = (ref["pool"] / "dolly_data.jsonl").read_text().splitlines()
    (extra / "dolly_data.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="60 gradient rows but 59 examples"):
        ReferenceRun(
            ref["grads"],
            tmp_path / "c",
            pool_files=[ref["pool"] / "flan_v2_data.jsonl", extra / "dolly_data.jsonl"],
            targets={"mmlu": ref["mmlu"]},
            lrs=[1, 1],
        )


def test_reliability_unavailable_says_why(run):
    from less_lab import inspection

    store = run.datastore("pool")[0]
    unknown = type(store)(
        store.path,
        {**store.meta, "projection": {"kind": "unknown"}},
        store.ids,
        store.features,
        store.stats,
    )
    assert "not recorded" in inspection.reliability_unavailable(unknown)

    class Fake:
        targets, score_cfg, select_cfg = run.targets, run.score_cfg, run.select_cfg

        def datastore(self, split):
            return [unknown] if split == "pool" else run.datastore(split)

        def checkpoints(self):
            return run.checkpoints()[:1]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inspection.reliability(Fake(), "mmlu") is None
    assert any("unavailable" in str(w.message) for w in caught)
    assert isinstance(run.lengths(), pl.DataFrame)


def test_target_dim_other_than_pool_is_refused(ref, tmp_path):
    import shutil

    grads = tmp_path / "grads"
    shutil.copytree(ref["grads"], grads)
    for step in STEPS:
        (grads / f"mmlu-ckpt{step}-sgd/dim64").rename(grads / f"mmlu-ckpt{step}-sgd/dim32")
    files = [ref["pool"] / f"{n}_data.jsonl" for n in POOL_ORDER]
    with pytest.raises(DataError, match=r"has dims \[32\], the pool has dim 64"):
        ReferenceRun(grads, tmp_path / "o", pool_files=files, targets={"mmlu": ref["mmlu"]},
                     lrs=[1, 1])  # fmt: skip
