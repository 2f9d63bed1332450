"""Integrity holes closed: no re-finalising over unverified bytes, every file of a store and
of a checkpoint checked (naming the file), disk-full reported as ``StorageError`` with the
path and the space needed, and canonical checkpoint files (stable fingerprints)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from less_lab.core.datastore import open_store
from less_lab.errors import LessLabError, StorageError, StoreCorruptError
from tests.core.test_datastore_integrity import X, _build, _interrupt_after

ROOT = Path(__file__).resolve().parents[2]
FILES = ("features.bin", "stats.bin", "done.bin", "ids.parquet", "meta.json")


def _flip(fpath: Path, at: int) -> None:
    data = bytearray(fpath.read_bytes())
    data[at] ^= 0x10
    fpath.write_bytes(bytes(data))


# ------------------------------------------------------------ 1. no re-finalising


@pytest.mark.parametrize("name", ["features.bin", "stats.bin"])
def test_corrupt_done_rows_are_recomputed_not_refinalised(tmp_path, name):
    path = tmp_path / "s"
    _build(path, X)
    good = {f: (path / f).read_bytes() for f in FILES}
    _flip(path / name, 3 * (8 if name == "features.bin" else 3) * 4 + 1)  # row 3
    (path / "meta.json").unlink()
    calls: list[int] = []
    with pytest.warns(UserWarning, match=r"rows \[3\].*checksum"):
        _build(path, X, calls=calls)
    assert calls == [3]  # only the damaged row's unit is computed again
    assert {f: (path / f).read_bytes() for f in FILES} == good
    open_store(path, verify=True)


def test_a_flipped_done_mark_of_a_partial_store_is_recomputed(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        _build(path, X, on_write=_interrupt_after(1))  # rows 0, 1 written
    done = np.fromfile(path / "done.bin", dtype=np.uint8)
    assert done.tolist() == [1, 1, 0, 0, 0]
    done[4] = 1  # a row marked done whose bytes were never written
    done.tofile(path / "done.bin")
    calls: list[int] = []
    with pytest.warns(UserWarning, match=r"rows \[4\]"):
        _build(path, X, calls=calls)
    assert sorted(calls) == [2, 3, 4]
    ref = tmp_path / "ref"
    _build(ref, X)
    assert all((path / f).read_bytes() == (ref / f).read_bytes() for f in FILES)


# --------------------------------------------------- 2. every file of a store


def test_stats_checksum_is_recorded_and_verified(tmp_path):
    path = tmp_path / "s"
    _build(path, X)
    meta = json.loads((path / "meta.json").read_text())
    assert isinstance(meta["stats_crc32"], int)
    _flip(path / "stats.bin", 17)
    where = re.escape(str(path / "stats.bin"))
    with pytest.raises(StoreCorruptError, match=rf"{where}: checksum differs"):
        open_store(path, verify=True)


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
def test_truncated_done_file_names_the_file(tmp_path, partial):
    path = tmp_path / "s"
    if partial:
        with pytest.raises(KeyboardInterrupt):
            _build(path, X, on_write=_interrupt_after(0))
    else:
        _build(path, X)
        (path / "meta.json").unlink()
    (path / "done.bin").write_bytes((path / "done.bin").read_bytes()[:2])
    where = re.escape(str(path / "done.bin"))
    with pytest.raises(StoreCorruptError, match=rf"{where}: size 2, expected 5"):
        _build(path, X)


# --------------------------------------------------------- 3. disk full


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_allocating_a_store_names_the_file_and_the_space(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    where = re.escape(str(tmp_path / "s" / "features.bin"))
    with pytest.raises(
        StorageError, match=rf"{where}: no space left.*160 bytes needed \(245 for the store\)"
    ):
        _build(tmp_path / "s", X)


@pytest.mark.parametrize("target", ["features.bin", "done.bin"])
def test_disk_full_while_writing_rows_names_the_file(tmp_path, monkeypatch, target):
    path = tmp_path / "s"
    real = os.pwrite

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(target):
            _enospc()
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    where = re.escape(str(path / target))
    with pytest.raises(StorageError, match=rf"{where}: no space left.*bytes needed"):
        _build(path, X)
    monkeypatch.setattr(os, "pwrite", real)
    _build(path, X)  # resumes once there is space again
    open_store(path, verify=True)


# ------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    from tests.core.test_training import CFG, _train

    out = tmp_path_factory.mktemp("ck")
    import dataclasses

    _, ckpts = _train(tiny_tokenizer, out / "w", cfg=dataclasses.replace(CFG, epochs=1))
    return ckpts[0].path


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize(
    "name", ["optimizer.safetensors", "adapter/adapter_model.safetensors", "optimizer_full.pt"]
)
def test_damaged_checkpoint_files_name_the_file(checkpoint, tmp_path, damage, name):
    from less_lab.core.training import Checkpoint

    ck = _copy(checkpoint, tmp_path / "epoch-1")
    fpath = ck / name
    if damage == "truncate":
        fpath.write_bytes(fpath.read_bytes()[:-7])
    else:
        _flip(fpath, fpath.stat().st_size - 9)  # inside the tensor data
    loaded = Checkpoint.load(ck)
    where = re.escape(str(fpath))
    with pytest.raises(LessLabError, match=where):
        if name == "optimizer.safetensors":
            loaded.adam_state()
        elif name.startswith("adapter"):
            loaded.adapter_weights()
        else:
            from less_lab.core.training import load_optimizer_state

            load_optimizer_state(loaded)


def test_disk_full_while_saving_a_checkpoint_names_the_file(tiny_tokenizer, tmp_path, monkeypatch):
    from less_lab.core import training
    from tests.core.test_training import _train

    monkeypatch.setattr(training, "save_file", _enospc)
    with pytest.raises(StorageError, match=r"optimizer\.safetensors: no space left.*needed"):
        _train(tiny_tokenizer, tmp_path / "w")


# ------------------------------------------------------ 4. canonical fingerprints

_TRAIN = """
import dataclasses, sys
from tests.core.test_training import CFG, _train
from less_lab.model.tiny import tiny_tokenizer
from less_lab.model.loading import file_fingerprint
cfg = dataclasses.replace(CFG, epochs=1, lora=dataclasses.replace(
    CFG.lora, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")))
_, ck = _train(tiny_tokenizer(), sys.argv[1], cfg=cfg)
print(file_fingerprint(ck[0].path))
"""


def test_identical_trainings_give_identical_checkpoint_fingerprints(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN, str(tmp_path / f"w{seed}")],
            env={**env, "PYTHONHASHSEED": str(seed)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    configs = [
        (tmp_path / f"w{s}/epoch-1/adapter/adapter_config.json").read_bytes() for s in (1, 2)
    ]
    assert configs[0] == configs[1]
    modules = json.loads(configs[0])["target_modules"]
    assert modules == sorted(modules)
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1]
