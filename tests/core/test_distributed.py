"""Several processes build ONE datastore, identical to a single-process build.

The end-to-end test runs the real CLI twice on the same warmup checkpoint: once as one
process, once under ``torchrun --nproc_per_node=2`` (gloo on CPU), and compares every
store file byte for byte. Unit tests cover the rank environment, the round-robin deal
and the merge of shards left behind by an interrupted multi-process build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from less_lab.core.datastore import build_store, open_store
from less_lab.core.distributed import DistContext, env_context, main_first

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- units


def test_rank_and_world_come_from_the_torchrun_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert env_context() == DistContext(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_context() == DistContext(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        env_context()


def test_round_robin_deal_covers_every_unit_once():
    units = list(range(11))
    shares = [DistContext(r, 3).shard(units) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == units


def test_main_first_runs_the_body_once_without_a_process_group():
    ran = []
    with main_first(DistContext()) as ctx:
        ran.append(ctx.rank)
    assert ran == [0]


@dataclass(frozen=True)
class FakeRank(DistContext):
    """A rank of a pretend multi-process run, driven one process after the other."""

    def barrier(self) -> None:
        pass


SETTINGS = {
    "split": "pool",
    "feature": "adam",
    "dim": 4,
    "dtype": "float32",
    "projection": {"kind": "none"},
    "model": "m",
    "checkpoint": None,
}
X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
IDS = [f"e{i}" for i in range(10)]


def _compute(calls: list[int]):
    def compute(rows):
        for start in range(0, len(rows), 2):
            part = rows[start : start + 2]
            calls.extend(part)
            x = torch.as_tensor(X[part])
            yield SimpleNamespace(
                rows=part, features=x, loss=x[:, 0], grad_norm=x[:, 1], feature_norm=x[:, 2]
            )

    return compute


def _stop_after(k: int):
    seen = []

    def on_write(rows):
        seen.append(rows)
        if len(seen) > k:
            raise KeyboardInterrupt

    return on_write


def test_shards_of_an_interrupted_multiprocess_build_are_merged_on_resume(tmp_path):
    path, calls = tmp_path / "s", []
    with pytest.raises(KeyboardInterrupt):  # a single process wrote rows 0-1, then died
        build_store(path, SETTINGS, IDS, _compute(calls), on_write=_stop_after(1), progress=False)
    with pytest.raises(KeyboardInterrupt):  # rank 1 of 2 wrote 1 batch to its shard, died
        build_store(
            path,
            SETTINGS,
            IDS,
            _compute(calls),
            dist=FakeRank(1, 2),
            on_write=_stop_after(1),
            progress=False,
        )
    shard = path / "shards" / "rank-00001"
    assert np.fromfile(shard / "rows.bin", dtype=np.int64).tolist() == [3, 5, 7, 9]
    assert np.fromfile(shard / "done.bin", np.uint8).tolist() == [1, 1, 0, 0]
    merged = [3, 5]
    junk = path / "shards" / "rank-00007"  # killed while creating its shard: no done.bin
    junk.mkdir()
    (junk / "rows.bin").write_bytes(b"\0" * 3)
    calls.clear()
    store = build_store(path, SETTINGS, IDS, _compute(calls), progress=False)
    assert sorted(calls) == sorted(set(range(2, 10)) - set(merged))  # nothing recomputed
    np.testing.assert_array_equal(np.asarray(store.features), X)
    assert not (path / "shards").exists()
    assert open_store(path, verify=True).meta["n"] == 10


# ------------------------------------------------------------------ torchrun, 2 ranks


def _write_inputs(tmp: Path, tokenizer) -> tuple[Path, Path, Path]:
    from less_lab.model.tiny import tiny_llama

    model_dir = tmp / "tiny-model"
    tiny_llama(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    words = ["cat", "dog", "book", "question", "data", "story", "math", "robot"]
    pool = tmp / "pool.jsonl"
    with pool.open("w") as fh:
        for i in range(26):
            prompt = " ".join(words[(i + k) % 8] for k in range(1 + i % 6))
            answer = " ".join(words[(3 * i + k) % 8] for k in range(1 + i % 4))
            fh.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "prompt": f"What is {prompt}?",
                        "completion": f"The answer is {answer}.",
                    }
                )
                + "\n"
            )
    target = tmp / "target.jsonl"
    with target.open("w") as fh:
        for i in range(4):
            fh.write(
                json.dumps(
                    {
                        "id": f"t{i}",
                        "subtask": "ab"[i % 2],
                        "prompt": f"Count {words[i]}",
                        "completion": f"{i} {words[i]}",
                    }
                )
                + "\n"
            )
    return model_dir, pool, target


def _cli(
    args: list[str], run_dir: Path, model_dir: Path, pool: Path, target: Path, nproc: int = 1
) -> subprocess.CompletedProcess:
    sets = [
        "warmup.fraction=0.5",
        "warmup.train.epochs=2",
        "warmup.train.batch_size=4",
        "warmup.train.lora.r=4",
        "warmup.train.lora.alpha=8",
        "gradients.proj_dim=32",
        "gradients.max_batch_examples=3",
        "gradients.token_budget=64",
    ]
    cmd = [
        "-m",
        "less_lab",
        *args,
        "--run-dir",
        str(run_dir),
        "--pool",
        str(pool),
        "--target",
        f"t={target}",
        "--model",
        str(model_dir),
    ]
    if nproc == 1:
        cmd.append("--quiet")
    for s in sets:
        cmd += ["--set", s]
    if nproc > 1:
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
        cmd = torchrun + cmd
    else:
        cmd = [sys.executable, *cmd]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
        "LESS_LAB_CACHE": str(run_dir.parent / "cache"),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_torchrun_two_ranks_build_the_same_store_as_one_process(tmp_path, tiny_tokenizer):
    model_dir, pool, target = _write_inputs(tmp_path, tiny_tokenizer)
    one, two = tmp_path / "one", tmp_path / "two"
    _cli(["warmup"], one, model_dir, pool, target)
    shutil.copytree(one / "warmup", two / "warmup")
    _cli(["datastore"], one, model_dir, pool, target)
    proc = _cli(["datastore"], two, model_dir, pool, target, nproc=2)
    assert proc.stdout.count("Store(") >= 4  # pool + target at 2 checkpoints (rank 0 at least)
    shares = re.findall(r"\[rank (\d)/2\] (\S+): (\d+) of (\d+) pending rows", proc.stderr)
    assert len(shares) == 2 * 4, proc.stderr[-3000:]
    for store in {s[1] for s in shares}:  # each store's rows were split between the ranks
        mine = {int(r): int(k) for r, s, k, _ in shares if s == store}
        total = {int(t) for _, s, _, t in shares if s == store}
        assert set(mine) == {0, 1} and all(mine.values()) and {sum(mine.values())} == total
    metas = sorted(p.relative_to(one) for p in one.glob("stores/**/meta.json"))
    assert len(metas) == 4  # pool and target at 2 checkpoints
    for meta in metas:
        a, b = one / meta.parent, two / meta.parent
        assert sorted(os.listdir(a)) == sorted(os.listdir(b))  # no shards left behind
        for name in ("features.bin", "stats.bin", "done.bin", "ids.parquet", "meta.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{meta.parent}/{name}"
        store = open_store(b, verify=True)
        assert np.isfinite(np.asarray(store.features)).all() and np.abs(store.features).max() > 0
