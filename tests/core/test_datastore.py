"""Datastore round trip, resume, refusal of mismatched settings, corruption; scoring by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import STORE_SETTINGS

from less_lab.core.datastore import build_store, open_store
from less_lab.errors import SettingsMismatchError

SETTINGS = STORE_SETTINGS


def test_round_trip(tmp_path, make_store):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    store = make_store(tmp_path / "s", x)
    again = open_store(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(again.features), x)
    assert again.ids == ["e0", "e1", "e2", "e3"]
    np.testing.assert_allclose(again.stats["grad_norm"], np.linalg.norm(x, axis=1), rtol=1e-6)
    assert store.meta["n"] == 4 and store.meta["format_version"] == 1


def test_reuse_with_other_settings_is_refused_naming_both(tmp_path, make_store):
    x = np.ones((2, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    with pytest.raises(SettingsMismatchError) as err:
        make_store(tmp_path / "s", x, projection={"kind": "sparse_sign", "seed": 1})
    assert "'kind': 'none'" in str(err.value) and "'sparse_sign'" in str(err.value)
    with pytest.raises(SettingsMismatchError, match="model"):
        open_store(tmp_path / "s", {"model": "other"})


def test_missing_meta_means_incomplete_and_resume_computes_only_missing_rows(
    tmp_path, matrix_compute
):
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    path = tmp_path / "s"

    def crashing(rows):
        for i, out in enumerate(matrix_compute(x)(rows)):
            if i == 2:
                raise KeyboardInterrupt
            yield out

    with pytest.raises(KeyboardInterrupt):
        build_store(path, SETTINGS, [f"e{i}" for i in range(7)], crashing, progress=False)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_store(path)
    calls: list[int] = []
    store = build_store(
        path, SETTINGS, [f"e{i}" for i in range(7)], matrix_compute(x, calls=calls), progress=False
    )
    assert sorted(calls) == [4, 5, 6]  # rows 0-3 were done before the crash
    np.testing.assert_array_equal(np.asarray(store.features), x)


def test_corruption_and_truncation_are_detected(tmp_path, make_store):
    x = np.ones((3, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    feats = tmp_path / "s" / "features.bin"
    data = bytearray(feats.read_bytes())
    data[5] ^= 0xFF
    feats.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        open_store(tmp_path / "s")
    feats.write_bytes(bytes(data[:-4]))
    with pytest.raises(ValueError, match="size"):
        open_store(tmp_path / "s")


def test_nonfinite_rows_are_reported(tmp_path, make_store):
    x = np.ones((3, 3), dtype=np.float32)
    x[1, 2] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        store = make_store(tmp_path / "s", x)
    assert store.meta["nonfinite_ids"] == ["e1"]


def test_meta_json_is_written_last(tmp_path, make_store):
    x = np.ones((2, 3), dtype=np.float32)
    make_store(tmp_path / "s", x)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["crc32"] and meta["n"] == 2
