"""Reference LESS artifacts (princeton-nlp/LESS) in and out: gradient trees, selections,
warmup checkpoints (``core.reference``, ``core.reference_files``, ``core.hf_import``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_tree import DIM, SHOTS, STEPS, SUBJECTS, save_like_collect_grads  # noqa: E402

from less_lab.core.datastore import open_store  # noqa: E402
from less_lab.core.reference import export_store, import_store  # noqa: E402
from less_lab.core.reference_files import read_features, scan_reference  # noqa: E402
from less_lab.errors import DataError, StoreCorruptError  # noqa: E402


def _rows(n: int, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, DIM, generator=g) * 1e-2).to(dtype)


def _ids(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def tree(tmp_path):
    """Pool (two files, 200 + 30 rows, fp16) and targets (3 x 5, bf16) at two checkpoints."""
    root = tmp_path / "grads"
    for s, step in enumerate(STEPS):
        save_like_collect_grads(root / f"a-ckpt{step}-adam/dim{DIM}", _rows(200, seed=s))
        save_like_collect_grads(root / f"b-ckpt{step}-adam/dim{DIM}", _rows(30, seed=10 + s))
        shots = _rows(len(SUBJECTS) * SHOTS, torch.bfloat16, seed=20 + s)
        save_like_collect_grads(root / f"mmlu-ckpt{step}-sgd/dim{DIM}", shots)
    return root


def _refs(root, name, kind="adam"):
    return [r for r in scan_reference(root) if r.name == name and r.gradient_type == kind]


def test_scan_finds_every_folder(tree):
    found = {(r.name, r.checkpoint, r.gradient_type, r.dim) for r in scan_reference(tree)}
    assert found == {
        (n, s, k, DIM) for s in STEPS for n, k in [("a", "adam"), ("b", "adam"), ("mmlu", "sgd")]
    }


def test_chunks_equal_the_merged_file(tree):
    folder = tree / f"a-ckpt{STEPS[0]}-adam/dim{DIM}"
    assert sorted(p.name for p in folder.glob("grads-*")) == ["grads-160.pt", "grads-200.pt"]
    merged, info = read_features(folder)
    assert info == {"files": ["all_unormalized.pt"], "normalized": False, "dtype": "float16"}
    (folder / "all_unormalized.pt").unlink()
    chunks, info = read_features(folder)
    assert info["files"] == ["grads-160.pt", "grads-200.pt"] and not info["normalized"]
    assert torch.equal(chunks, merged)
    normed, info = read_features(folder, prefer="normalized")
    assert info["normalized"] and torch.allclose(
        normed.float().norm(dim=1), torch.ones(200), atol=1e-3
    )


def test_unsafe_or_wrong_files_are_refused(tmp_path):
    folder = tmp_path / f"x-ckpt1-adam/dim{DIM}"
    folder.mkdir(parents=True)
    torch.save({"not": "a tensor"}, folder / "all_unormalized.pt")
    with pytest.raises(DataError, match="one \\(rows, d\\) float tensor"):
        read_features(folder)
    torch.save(np.zeros((2, 2)), folder / "all_unormalized.pt")  # needs unpickling
    with pytest.raises((StoreCorruptError, DataError), match="all_unormalized.pt"):
        read_features(folder)


def test_import_records_provenance_and_keeps_rows(tree, tmp_path):
    a = _refs(tree, "a")[0]
    b = _refs(tree, "b")[0]
    store = import_store([(a, 200), (b, 30)], _ids(230), tmp_path / "s", split="pool")
    ref = store.meta["reference"]
    assert store.meta["dtype"] == "float16" and store.dim == DIM and len(store) == 230
    assert ref["checkpoint"] == STEPS[0] and ref["gradient_type"] == "adam"
    assert not ref["normalized"] and [s["name"] for s in ref["sources"]] == ["a", "b"]
    assert set(ref["sources"][0]["files"]) == {"all_unormalized.pt"}
    assert all(len(fp) == 16 for fp in ref["sources"][0]["files"].values())
    want = torch.cat([read_features(a.path)[0], read_features(b.path)[0]])
    assert np.array_equal(np.asarray(store.features), want.numpy())
    assert store.nonfinite_ids == []  # unknown stats (NaN) flag nothing
    assert open_store(store.path).ids == _ids(230)


def test_count_mismatch_is_refused_with_both_counts(tree, tmp_path):
    a = _refs(tree, "a")[0]
    with pytest.raises(DataError, match="200 gradient rows but 199 examples"):
        import_store([(a, 199)], _ids(199), tmp_path / "s", split="pool")


def test_dim_mismatch_is_refused_with_both_values(tree, tmp_path):
    a = _refs(tree, "a")[0]
    other = tmp_path / "g2" / f"c-ckpt{STEPS[0]}-adam/dim32"
    save_like_collect_grads(other, torch.randn(5, 32).half())
    c = [r for r in scan_reference(tmp_path / "g2")][0]
    with pytest.raises(DataError, match=r"dims \[32, 64\]"):
        import_store([(a, 200), (c, 5)], _ids(205), tmp_path / "s", split="pool")


def _matching_py(root: Path, names, task, ckpts, weights):
    """What the reference's matching.py computes, read the way it reads (torch.load of
    all_orig.pt through the "{}-ckpt{}" template; weights renormalised)."""
    template = str(root / "{}-ckpt{}-adam" / f"dim{DIM}" / "all_orig.pt")
    val_template = str(root / "{}-ckpt{}-sgd" / f"dim{DIM}" / "all_orig.pt")
    w = [x / sum(weights) for x in weights]
    out = []
    for name in names:
        score = 0
        for i, ckpt in enumerate(ckpts):
            val = torch.load(val_template.format(task, ckpt), weights_only=True).float()
            train = torch.load(template.format(name, ckpt), weights_only=True).float()
            score = score + w[i] * train @ val.T
        out.append(score.reshape(score.shape[0], len(SUBJECTS), -1).mean(-1).max(-1)[0])
    return torch.cat(out)


def test_export_is_read_by_matching_py_with_the_same_scores(tree, tmp_path):
    import polars as pl

    from less_lab.config import ScoreConfig
    from less_lab.core.scoring import subtask_scores

    targets = pl.DataFrame(
        {"example_id": _ids(15, "t"), "subtask": [s for s in SUBJECTS for _ in range(SHOTS)]}
    )
    pools, tgts = [], []
    for step in STEPS:
        ra = [r for r in _refs(tree, "a") if r.checkpoint == step][0]
        rb = [r for r in _refs(tree, "b") if r.checkpoint == step][0]
        rt = [r for r in _refs(tree, "mmlu", "sgd") if r.checkpoint == step][0]
        pools.append(
            import_store([(ra, 200), (rb, 30)], _ids(230), tmp_path / f"p{step}", split="pool")
        )
        tgts.append(import_store([(rt, 15)], _ids(15, "t"), tmp_path / f"t{step}", split="mmlu"))
    lrs = [3e-5, 1e-5]
    ours, _ = subtask_scores(pools, tgts, targets, lrs, ScoreConfig(method="mean_of_shots"))
    out = tmp_path / "export"
    for step, p, t in zip(STEPS, pools, tgts, strict=True):
        export_store(p, out, "a", step, rows=range(200))
        export_store(p, out, "b", step, rows=range(200, 230))
        export_store(t, out, "mmlu", step)
    theirs = _matching_py(out, ["a", "b"], "mmlu", STEPS, lrs)
    np.testing.assert_allclose(theirs.numpy(), ours.max(1), atol=2e-3)  # fp16 rows
    original = _matching_py(tree, ["a", "b"], "mmlu", STEPS, lrs)
    assert torch.equal(theirs, original)


def test_round_trip_gives_identical_tensors(tree, tmp_path):
    for name, kind, n in [("a", "adam", 200), ("mmlu", "sgd", 15)]:
        ref = _refs(tree, name, kind)[0]
        store = import_store([(ref, n)], _ids(n), tmp_path / name, split=name)
        back = export_store(store, tmp_path / "out", name, ref.checkpoint)
        assert back.relative_to(tmp_path / "out") == ref.path.relative_to(tree)
        for f in ("all_orig.pt", "all_unormalized.pt"):
            a = torch.load(ref.path / f, weights_only=True)
            b = torch.load(back / f, weights_only=True)
            assert a.dtype == b.dtype and torch.equal(a, b), (name, f)


def test_normalised_only_import_round_trips(tree, tmp_path):
    ref = _refs(tree, "b")[0]
    for f in ("all_unormalized.pt", "grads-30.pt"):
        (ref.path / f).unlink()
    store = import_store([(ref, 30)], _ids(30), tmp_path / "s", split="pool")
    assert store.meta["reference"]["normalized"]
    back = export_store(store, tmp_path / "out", "b", ref.checkpoint)
    assert sorted(p.name for p in back.iterdir()) == ["all_orig.pt"]
    assert torch.equal(
        torch.load(back / "all_orig.pt", weights_only=True),
        torch.load(ref.path / "all_orig.pt", weights_only=True),
    )


# ------------------------------------------------------------------ warmup checkpoints
def _tiny_peft():
    from less_lab.config import LoraSettings
    from less_lab.model.lora import add_lora
    from less_lab.model.tiny import tiny_llama, tiny_tokenizer

    return add_lora(tiny_llama(tiny_tokenizer(), seed=0), LoraSettings(r=2, alpha=4))


def _trained_optimizer(model):
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-3, betas=(0.9, 0.95), eps=1e-6)
    for _, p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt, params


@pytest.fixture(scope="module")
def peft_model():
    return _tiny_peft()


def test_fsdp_checkpoint_by_name_with_bin_adapter(peft_model, tmp_path):
    from less_lab.core.hf_import import import_hf_checkpoint
    from less_lab.core.training import load_adapter
    from less_lab.model.lora import canonical_name

    opt, params = _trained_optimizer(peft_model)
    sd = opt.state_dict()
    names = [n for n, _ in params]
    src = tmp_path / "checkpoint-13"
    src.mkdir()
    state = {f"_fsdp_wrapped_module.{names[i]}": v for i, v in sd["state"].items()}
    torch.save(
        {"state": state, "param_groups": [dict(sd["param_groups"][0], params=list(state))]},
        src / "optimizer.bin",
    )
    peft_model.save_pretrained(src)
    from safetensors.torch import load_file

    weights = load_file(src / "adapter_model.safetensors")
    (src / "adapter_model.safetensors").unlink()
    torch.save(weights, src / "adapter_model.bin")
    ckpt = import_hf_checkpoint(src, peft_model, tmp_path / "ours", lr=1e-5, epoch=1)
    assert ckpt.lr == 1e-5 and ckpt.epoch == 1 and ckpt.betas == (0.9, 0.95)
    for n, p in params:
        torch.testing.assert_close(
            ckpt.adam_state().exp_avg[canonical_name(n)], opt.state[p]["exp_avg"]
        )
    load_adapter(peft_model, ckpt)


def test_trainer_checkpoint_by_position_refuses_mismatches(peft_model, tmp_path):
    from less_lab.core.hf_import import import_hf_checkpoint

    opt, params = _trained_optimizer(peft_model)
    src = tmp_path / "checkpoint-13"
    peft_model.save_pretrained(src)
    state = {
        "epoch": 1.0,
        "global_step": 13,
        "log_history": [
            {"epoch": 0.38, "step": 5, "learning_rate": 2e-5},
            {"epoch": 0.77, "step": 10, "learning_rate": 1e-5},
        ],
    }
    (src / "trainer_state.json").write_text(json.dumps(state))
    sd = opt.state_dict()
    torch.save(sd, src / "optimizer.pt")
    ckpt = import_hf_checkpoint(src, peft_model, tmp_path / "ok")
    steps = np.arange(1, 14)
    assert ckpt.lr == pytest.approx(np.mean(np.clip(3e-5 - 2e-6 * steps, 0, None)))  # coarse log
    short = {
        "state": dict(list(sd["state"].items())[:-1]),
        "param_groups": [dict(sd["param_groups"][0], params=sd["param_groups"][0]["params"][:-1])],
    }
    torch.save(short, src / "optimizer.pt")
    with pytest.raises(DataError, match=f"{len(params) - 1} optimizer entries for {len(params)}"):
        import_hf_checkpoint(src, peft_model, tmp_path / "bad1")
    swapped = {k: dict(v) for k, v in sd["state"].items()}
    swapped[0]["exp_avg"] = swapped[0]["exp_avg"].T.contiguous()
    swapped[0]["exp_avg_sq"] = swapped[0]["exp_avg_sq"].T.contiguous()
    torch.save({"state": swapped, "param_groups": sd["param_groups"]}, src / "optimizer.pt")
    with pytest.raises(DataError, match="moments of shape"):
        import_hf_checkpoint(src, peft_model, tmp_path / "bad2")


def test_epoch_lr_dense_and_without_any_log():
    from less_lab.core.hf_import import epoch_lr

    dense = {
        "global_step": 4,
        "epoch": 2.0,
        "log_history": [
            {"epoch": e / 2, "step": e, "learning_rate": lr}
            for e, lr in [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
        ],
    }
    assert epoch_lr(dense, 1) == 3.5 and epoch_lr(dense, 2) == 1.5
    with pytest.raises(DataError, match="no learning rate logged"):
        epoch_lr({"log_history": [{"epoch": 1.0, "loss": 2.0}]}, 1)
