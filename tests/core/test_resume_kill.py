"""SIGKILL a datastore build, a warmup training, a store's finalisation (checksums and
``meta.json``) and ``Lab.select`` (scoring and writing the selection) at random moments,
resume, compare.

Why a real kill: an exception unwinds the stack and runs ``finally`` blocks; SIGKILL does
not, so only a kill shows that every file is consistent at every instant. Why fork: one
driver process (``python tests/test_resume_kill.py OUT``) pays the torch/transformers
import once, then forks a child per build attempt and kills it after a random delay drawn
over the length of an uninterrupted build, so kills land in setup, mid-build, while
writing rows and while finalising. The driver only reads files and forks; it never runs
multi-threaded torch code itself (forking after that could deadlock the child).

Checked: the finished store equals an uninterrupted build byte for byte (features, stats,
ids, meta); no attempt ever wrote a row that was already marked done before it started
(``on_write`` logs the rows about to be written); the kills really interrupted builds; a
killed finalisation or selection, run again, gives byte-identical files. The seed is
printed (``LESS_LAB_KILL_SEED`` replays one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
STORE_TRIALS, TRAIN_TRIALS, FINISH_TRIALS, SELECT_TRIALS = 20, 6, 12, 8
SELECTION_FILES = ("selected.jsonl", "selection.parquet", "scores.parquet", "settings.json")
STORE_FILES = ("features.bin", "stats.bin", "crc.bin", "done.bin", "ids.parquet", "meta.json")


# --------------------------------------------------------------------------- the driver


def _setup(out: Path):
    """Tiny model with LoRA, random-token pool, and one warmup checkpoint (made in a child)."""
    import polars as pl
    import torch

    from less_lab.config import GradientConfig, LoraSettings, TrainConfig
    from less_lab.data.batching import IGNORE
    from less_lab.model.lora import add_lora
    from less_lab.model.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(72):
        length = 6 + (7 * i) % 29
        ids = torch.randint(4, len(tok), (length,), generator=gen).tolist()
        rows.append(
            {
                "example_id": f"x{i}",
                "input_ids": ids,
                "labels": [IGNORE] * 3 + ids[3:],
                "n_tokens": length,
                "n_completion_tokens": length - 3,
            }
        )
    data = pl.DataFrame(rows)
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    model = add_lora(tiny_llama(tok, seed=0), lora, seed=0)
    train_cfg = TrainConfig(epochs=4, learning_rate=1e-3, batch_size=6, token_budget=128, lora=lora)
    grad_cfg = GradientConfig(proj_dim=48, token_budget=96, max_batch_examples=3)
    return model, tok.pad_token_id, data, train_cfg, grad_cfg


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _run(fn, kill_after: float | None = None) -> tuple[bool, float]:
    """Run ``fn`` in a child; SIGKILL it after ``kill_after`` s. (finished?, seconds)."""
    t0 = time.perf_counter()
    pid = _fork(fn)
    if kill_after is not None:
        deadline = t0 + kill_after
        while time.perf_counter() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True, time.perf_counter() - t0
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"child failed with exit code {os.WEXITSTATUS(status)}")
    return os.WIFEXITED(status), time.perf_counter() - t0


def _done_rows(store: Path, n: int) -> set[int]:
    done = store / "done.bin"
    if not (store / "settings.json").exists() or not done.exists():
        return set()
    return set(np.flatnonzero(np.fromfile(done, dtype=np.uint8)[:n]).tolist())


def _logged_rows(log: Path) -> list[int]:
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]  # a line cut by the kill has no newline
    return [int(x) for line in lines for x in line.split()]


def _store_trials(out: Path, setup, trials: int, rng: random.Random) -> dict:
    from less_lab.core.pipeline import extract_store
    from less_lab.core.training import train_lora

    model, pad_id, data, train_cfg, grad_cfg = setup
    one_epoch = dataclasses.replace(train_cfg, epochs=1)
    _run(
        lambda: train_lora(model, data[:12], one_epoch, out / "warm", pad_id=pad_id, progress=False)
    )
    from less_lab.core.training import Checkpoint

    ckpt = Checkpoint.load(out / "warm" / "epoch-1")
    n = data.height

    def build(path: Path, log: Path | None = None):
        def on_write(rows):
            with open(log, "a") as fh:
                fh.write(" ".join(map(str, rows.tolist())) + "\n")

        return lambda: extract_store(
            model,
            data,
            path,
            split="pool",
            feature="adam",
            cfg=grad_cfg,
            checkpoint=ckpt,
            pad_id=pad_id,
            progress=False,
            on_write=on_write if log else None,
        )

    _, ref_seconds = _run(build(out / "ref"))
    result = {
        "trials": trials,
        "ref_seconds": ref_seconds,
        "kills": 0,
        "interrupted": 0,
        "rewritten": [],
        "mismatch": [],
        "rows_written_after_kill": 0,
    }
    for trial in range(trials):
        path = out / f"s{trial}"
        for attempt in range(rng.choice([1, 2, 3])):
            before = _done_rows(path, n)
            log = out / f"s{trial}.{attempt}.log"
            left = 1 - len(before) / n  # aim the kill within what is left of the build
            finished, _ = _run(
                build(path, log), kill_after=rng.uniform(0, (0.15 + left) * ref_seconds)
            )
            result["kills"] += not finished
            result["interrupted"] += not (path / "meta.json").exists()
            result["rewritten"] += sorted(before.intersection(_logged_rows(log)))
        before = _done_rows(path, n)
        log = out / f"s{trial}.final.log"
        _run(build(path, log))
        logged = _logged_rows(log)
        result["rows_written_after_kill"] += len(logged)
        result["rewritten"] += sorted(before.intersection(logged))
        if len(logged) != len(set(logged)):
            result["rewritten"].append(f"trial {trial}: a row logged twice in one attempt")
        for name in STORE_FILES:
            if (path / name).read_bytes() != (out / "ref" / name).read_bytes():
                result["mismatch"].append(f"trial {trial}: {name}")
        if (path / "shards").exists() or list(path.glob("*.tmp")):
            result["mismatch"].append(f"trial {trial}: leftover temporary files")
    return result


def _train_trials(out: Path, setup, trials: int, rng: random.Random) -> dict:
    from safetensors.numpy import load_file

    from less_lab.core.training import train_lora

    model, pad_id, data, train_cfg, _ = setup

    def train(path: Path):
        return lambda: train_lora(model, data[:30], train_cfg, path, pad_id=pad_id, progress=False)

    _, ref_seconds = _run(train(out / "tref"))
    result = {
        "trials": trials,
        "ref_seconds": ref_seconds,
        "kills": 0,
        "interrupted": 0,
        "mismatch": [],
    }
    last = f"epoch-{train_cfg.epochs}"
    for trial in range(trials):
        path = out / f"t{trial}"
        for _ in range(rng.choice([1, 2])):
            finished, _ = _run(train(path), kill_after=rng.uniform(0, 1.1 * ref_seconds))
            result["kills"] += not finished
            result["interrupted"] += not (path / last / "state.json").exists()
        _run(train(path))
        for epoch in range(1, train_cfg.epochs + 1):
            got, want = path / f"epoch-{epoch}", out / "tref" / f"epoch-{epoch}"
            for name in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
                a, b = load_file(got / name), load_file(want / name)
                if a.keys() != b.keys() or any(not np.array_equal(a[k], b[k]) for k in a):
                    result["mismatch"].append(f"trial {trial}: epoch {epoch} {name}")
            if json.loads((got / "state.json").read_text()) != json.loads(
                (want / "state.json").read_text()
            ):
                result["mismatch"].append(f"trial {trial}: epoch {epoch} state.json")
    return result


def _killing_writes(run, files: Path, marks: Path, kill_at: int = -1):
    """``run`` with each ``os.replace`` into ``files`` (every artifact lands through one)
    logged in ``marks``; the child SIGKILLs itself just before (even ``kill_at``) or just
    after (odd) replace number ``kill_at // 2``, so kills also land between two writes."""

    def aimed():
        real, count = os.replace, iter(range(1 << 30))

        def replace(src, dst):
            mine = Path(dst).parent == files
            k = 2 * next(count) if mine else -2
            if k == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if mine:
                with marks.open("a") as fh:
                    fh.write(f"{Path(dst).name}\n")
            if k + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace  # in the forked child only
        run()

    return aimed


def _killed_reruns(out: Path, trials: int, rng: random.Random, stage) -> dict:
    """``stage(path)`` -> (prepare, run, files): per trial, ``prepare`` makes the input,
    ``run`` is killed once, at a random moment (odd trials) or around a random one of
    its file writes (even trials), then run again to the end; its ``files`` must equal
    those of an uninterrupted run."""
    prepare, run, files = stage(out / "ref")
    prepare()
    _, ref_seconds = _run(_killing_writes(run, files, out / "ref.marks"))
    writes = len((out / "ref.marks").read_text().split())
    want = {name: (files / name).read_bytes() for name in _names(files)}
    result = {"trials": trials, "ref_seconds": ref_seconds, "kills": 0, "interrupted": 0}
    result.update(partial=0, leftover=0, mismatch=[], writes=writes)
    for trial in range(trials):
        prepare, run, files = stage(out / f"k{trial}")
        prepare()
        if trial % 2:
            finished, _ = _run(run, rng.uniform(0, ref_seconds))
        else:
            kill_at = rng.randrange(2 * writes)
            finished, _ = _run(_killing_writes(run, files, out / "marks", kill_at))
        result["kills"] += not finished
        there = [(files / name).exists() for name in want]
        result["interrupted"] += not all(there)
        result["partial"] += any(there) and not all(there)  # killed between writes
        _run(run)
        got = {name: (files / name).read_bytes() for name in _names(files)}
        result["leftover"] += len([p for p in files.iterdir() if p.name[0] == "."])
        if got != want:
            result["mismatch"].append(f"trial {trial}: {sorted(set(got) ^ set(want))}")
            result["mismatch"][-1] += str([k for k in want if got.get(k) != want[k]])
    return result


def _names(folder: Path) -> list[str]:
    """The artifacts of a folder: ``_io.atomic_path`` leaves a hidden ``.<name>.*.tmp``
    behind when killed between writing and renaming (ignored, counted as ``leftover``)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name[0] != ".")


def _finish_stage(out: Path, rng: random.Random) -> dict:
    """Kill the finalisation of a complete store whose ``meta.json`` is missing (verify
    every row, checksums, write ``meta.json``)."""
    from less_lab.core.datastore import finish_store

    store = out / "ref"  # the store of _store_trials

    def stage(path: Path):
        def prepare():
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(store, path, ignore=shutil.ignore_patterns("meta.json"))

        return prepare, lambda: finish_store(path), path

    return _killed_reruns(out / "finish", FINISH_TRIALS, rng, stage)


def _lab(run: Path):
    from less_lab import (
        DataConfig,
        GradientConfig,
        LoraSettings,
        SelectConfig,
        TrainConfig,
        WarmupConfig,
    )
    from less_lab.data.demo_pool import demo_pool, demo_targets
    from less_lab.lab import Lab
    from less_lab.model.tiny import tiny_llama, tiny_tokenizer

    train = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=2, alpha=4))
    lab = Lab(
        run,
        data=DataConfig(max_length=64),
        warmup=WarmupConfig(fraction=0.3, train=train),
        gradients=GradientConfig(proj_dim=256),
        select=SelectConfig(k=5),
        progress=False,
    )
    tok = tiny_tokenizer()
    lab.use_model(tiny_llama(tok, seed=0), tok)
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    return lab


def _select_stage(out: Path, rng: random.Random) -> dict:
    """Kill ``Lab.select`` (scoring the stores, writing the selection folder) on a run
    whose warmup and stores are done."""
    base = out / "labbase"
    _run(lambda: _lab(base).select("demo"))
    name = next((base / "selections").iterdir()).name

    def stage(path: Path):
        def prepare():
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(base, path, ignore=shutil.ignore_patterns("selections"))

        return prepare, lambda: _lab(path).select("demo"), path / "selections" / name

    return _killed_reruns(out / "select", SELECT_TRIALS, rng, stage)


def main(out: str, seed: int = 0, stages: str = "store,train,finish") -> None:
    """Run the kill trials of ``stages`` (``store``, ``train``, ``finish``, ``select``;
    ``finish`` needs ``store``) into ``out/report.json``."""
    import torch

    torch.set_num_threads(1)
    out_dir = Path(out)
    print(f"kill trials seed {seed}, stages {stages}", flush=True)
    rng = random.Random(seed)
    report = {}
    if {"store", "train"} & set(stages.split(",")):
        setup = _setup(out_dir)
        report["store"] = _store_trials(out_dir, setup, STORE_TRIALS, rng)
        report["train"] = _train_trials(out_dir, setup, TRAIN_TRIALS, rng)
    if "finish" in stages:
        report["finish"] = _finish_stage(out_dir, rng)
    if "select" in stages:
        report["select"] = _select_stage(out_dir, rng)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))


# ----------------------------------------------------------------------------- the tests


def _drive(out: Path, stages: str) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    seed = int(os.environ.get("LESS_LAB_KILL_SEED", random.randrange(1 << 16)))
    proc = subprocess.run(
        [sys.executable, __file__, str(out), str(seed), stages],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"driver failed (seed {seed}):\n{proc.stderr[-4000:]}"
    report = json.loads((out / "report.json").read_text())
    report["seed"] = seed
    print(json.dumps(report, indent=1))
    return report


@pytest.fixture(scope="module")
def kill_report(tmp_path_factory) -> dict:
    return _drive(tmp_path_factory.mktemp("kill"), "store,train,finish")


def test_killed_store_builds_resume_to_the_uninterrupted_store(kill_report):
    r = kill_report["store"]
    assert r["trials"] >= 20
    assert r["mismatch"] == [], f"seed {kill_report['seed']}"
    assert r["rewritten"] == [], f"rows written twice (seed {kill_report['seed']})"
    # the kills must really have cut builds short, or this test proves nothing
    assert r["interrupted"] >= r["trials"] // 2 and r["rows_written_after_kill"] > 0


def test_killed_warmup_training_resumes_to_the_uninterrupted_checkpoints(kill_report):
    r = kill_report["train"]
    assert r["mismatch"] == [], f"seed {kill_report['seed']}"
    assert r["interrupted"] >= r["trials"] // 2


def test_killed_finalisation_reruns_to_the_identical_store(kill_report):
    r = kill_report["finish"]
    assert r["trials"] >= 10 and r["mismatch"] == [], f"seed {kill_report['seed']}"
    assert r["interrupted"] >= 2, f"kills missed the finalisation (seed {kill_report['seed']})"
    counts = {k: v["trials"] for k, v in kill_report.items() if isinstance(v, dict)}
    print(f"kill trials per stage {counts}, seed {kill_report['seed']}")


@pytest.mark.slow  # 1-3 min: every attempt builds a Lab on the tiny model and scores
def test_killed_selection_reruns_to_identical_files(tmp_path):
    report = _drive(tmp_path, "select")
    r = report["select"]
    assert r["trials"] >= 8 and r["mismatch"] == [], f"seed {report['seed']}"
    assert r["interrupted"] >= r["trials"] // 2, f"seed {report['seed']}"


if __name__ == "__main__":
    main(sys.argv[1], *([int(sys.argv[2])] if len(sys.argv) > 2 else []), *sys.argv[3:4])
