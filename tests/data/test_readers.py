"""Pool and target records in every format (less_lab.data.readers): JSON arrays, parquet,
``datasets`` ``save_to_disk`` directories and ``Dataset`` objects read into the same
frame as JSONL, with ``file:row`` provenance, the same DataError messages and the same
``on_error="skip"`` reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from less_lab.data import readers
from less_lab.data.pool import DataError, read_pool, read_pool_with_report
from less_lab.data.targets import read_targets


def _msgs(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


RECORDS = [
    {"id": "a1", "dataset": "flan_v2", "messages": _msgs("What is 2+2?", "4")},
    {"id": "a2", "dataset": "cot", "messages": _msgs("<b>bold</b> & co", "yes")},
    {"id": "a3", "dataset": "dolly", "messages": _msgs("Name a colour.", "Blue.")},
]
PC_RECORDS = [
    {"prompt": "Say hi.", "completion": "hi", "source": "self_instruct"},
    {"prompt": "Say bye.", "completion": "bye", "source": "self_instruct"},
]
BAD = {"id": "bad", "dataset": "cot", "messages": [{"role": "robot", "content": "beep"}]}
COLUMNS = ["example_id", "source", "format", "messages"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=2))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved_dataset(path: Path, records: list[dict], files: int = 2) -> Path:
    """What ``Dataset.save_to_disk`` writes: arrow IPC stream files listed in state.json."""
    path.mkdir()
    table = pa.Table.from_pylist(records)
    step = -(-len(records) // files)
    names = []
    for k in range(files):
        name = f"data-{k:05d}-of-{files:05d}.arrow"
        part = table.slice(k * step, step)
        with pa.OSFile(str(path / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(part)
        names.append({"filename": name})
    (path / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    (path / "dataset_info.json").write_text("{}")
    return path


WRITERS = {
    "json": (write_json, "pool.json"),
    "parquet": (write_parquet, "pool.parquet"),
    "save_to_disk": (write_saved_dataset, "pool_ds"),
}


@pytest.fixture
def reference(tmp_path: Path) -> pl.DataFrame:
    return read_pool(write_jsonl(tmp_path / "ref.jsonl", RECORDS)).select(COLUMNS)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_reads_into_the_jsonl_frame(kind, tmp_path, reference):
    writer, name = WRITERS[kind]
    path = writer(tmp_path / name, RECORDS)
    frame = read_pool(path)
    assert frame.select(COLUMNS).equals(reference)
    assert frame["line"].to_list() == [1, 2, 3] and set(frame["file"]) == {str(path)}
    assert [json.loads(r)["id"] for r in frame["raw"]] == ["a1", "a2", "a3"]  # JSON lines


@pytest.mark.parametrize("kind", list(WRITERS))
def test_prompt_completion_records_and_default_ids(kind, tmp_path):
    writer, name = WRITERS[kind]
    path = writer(tmp_path / name, PC_RECORDS)
    frame = read_pool(path)
    stem = name.removesuffix(".json").removesuffix(".parquet")
    assert frame["example_id"].to_list() == [f"{stem}_1", f"{stem}_2"]
    assert frame["format"].to_list() == ["prompt_completion"] * 2
    assert frame["source"].to_list() == ["self_instruct"] * 2
    assert frame["messages"][1].to_list() == _msgs("Say bye.", "bye")


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_bad_record_names_its_file_and_row(kind, tmp_path):
    writer, name = WRITERS[kind]
    path = writer(tmp_path / name, [RECORDS[0], RECORDS[1], BAD, RECORDS[2]])
    with pytest.raises(DataError, match=rf"^{path}:3: message 0 has unknown role 'robot'; "):
        read_pool(path)
    frame, report = read_pool_with_report(path, on_error="skip")
    assert frame["example_id"].to_list() == ["a1", "a2", "a3"]
    assert frame["line"].to_list() == [1, 2, 4]
    assert report.rows() == [(str(path), 3, "message 0 has unknown role 'robot'; expected "
                              "one of ['system', 'user', 'assistant']")]  # fmt: skip
    with pytest.warns(UserWarning, match="skipped 1 bad line"):
        read_pool(path, on_error="skip")


def test_json_arrays_report_non_objects_and_non_arrays(tmp_path):
    path = write_json(tmp_path / "p.json", [RECORDS[0], "text", RECORDS[1]])
    with pytest.raises(DataError, match=rf"^{path}:2: item is a JSON str, not an object"):
        read_pool(path)
    with pytest.warns(UserWarning, match=rf"{path}:2: item is a JSON str"):
        assert read_pool(path, on_error="skip").height == 2
    obj = write_json(tmp_path / "o.json", {"messages": RECORDS[0]["messages"]})
    with pytest.raises(DataError, match=rf"^{obj}:1: top level is a JSON dict; expected a JSON"):
        read_pool(obj)
    broken = tmp_path / "b.json"
    broken.write_text('[{"id": 1,')
    _, report = read_pool_with_report(broken, on_error="skip")
    assert report.height == 1 and "malformed JSON" in report["reason"][0]


def test_a_corrupt_parquet_file_is_named_and_skippable(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    good = write_jsonl(tmp_path / "good.jsonl", RECORDS)
    with pytest.raises(DataError, match=rf"^{bad}: cannot read parquet"):
        read_pool([bad])
    frame, report = read_pool_with_report([bad, good], on_error="skip")
    assert frame.height == 3 and report["file"].to_list() == [str(bad)]


def test_a_directory_stands_for_all_its_supported_files(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", RECORDS[:1])
    write_json(folder / "b.json", RECORDS[1:2])
    write_parquet(folder / "c.parquet", RECORDS[2:])
    write_saved_dataset(folder / "d_ds", PC_RECORDS, files=1)
    (folder / "notes.txt").write_text("not data")
    frame = read_pool(folder)
    assert frame["example_id"].to_list() == ["a1", "a2", "a3", "d_ds_1", "d_ds_2"]
    assert [Path(f).name for f in frame["file"]] == ["a.jsonl", "b.json", "c.parquet",
                                                      "d_ds", "d_ds"]  # fmt: skip


def test_duplicate_ids_across_formats_are_caught(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", RECORDS[:2])
    b = write_json(tmp_path / "b.json", RECORDS[1:2])
    with pytest.raises(DataError, match=rf"^{b}:1: duplicate id 'a2' \(first at {a}:2\)"):
        read_pool([a, b])


def test_dataset_dict_directories_read_their_splits(tmp_path):
    root = tmp_path / "dd"
    root.mkdir()
    write_saved_dataset(root / "train", RECORDS[:2], files=1)
    write_saved_dataset(root / "test", RECORDS[2:], files=1)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert read_pool(root)["example_id"].to_list() == ["a1", "a2", "a3"]


def test_targets_read_every_format(tmp_path):
    records = [r | {"subtask": s} for r, s in zip(RECORDS, ["x", "y", "x"], strict=True)]
    want = read_targets(write_jsonl(tmp_path / "t.jsonl", records)).drop("source", "raw")
    for kind, (writer, name) in WRITERS.items():
        path = writer(tmp_path / f"t_{name}", records)
        got = read_targets(path)
        assert got.drop("source", "raw").equals(want), kind
        assert set(got["source"]) == {path.name.removesuffix(".json").removesuffix(".parquet")}
    bad = write_parquet(tmp_path / "bad.parquet", [records[0], RECORDS[1]])
    with pytest.raises(DataError, match=rf"^{bad}:2: no 'subtask' field"):
        read_targets(bad)


def test_targets_directory_of_generic_records(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [RECORDS[0] | {"subtask": "x"}])
    write_json(folder / "b.json", [RECORDS[1] | {"subtask": "y"}])
    assert read_targets(folder)["subtask"].to_list() == ["x", "y"]


class FakeDataset:
    """Stands for a datasets.Dataset when the package is absent (same class module)."""

    with_format = None


FakeDataset.__module__ = "datasets.arrow_dataset"


def test_a_dataset_object_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"less_lab\[hf\]"):
        read_pool(FakeDataset())
    assert readers.is_hf_dataset(FakeDataset()) and not readers.is_hf_dataset("x.json")


def test_hugging_face_dataset_objects_and_save_to_disk(tmp_path, reference):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(RECORDS)
    frame = read_pool(ds)
    assert frame.select(COLUMNS).equals(reference)
    assert frame["line"].to_list() == [1, 2, 3]
    shuffled = ds.select([2, 0])  # an indices mapping: rows come in the selected order
    assert read_pool(shuffled)["example_id"].to_list() == ["a3", "a1"]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert read_pool(tmp_path / "saved").select(COLUMNS).equals(reference)
    with_bad = datasets.Dataset.from_list([RECORDS[0], BAD])
    with pytest.raises(DataError, match=r"^hf:.*:2: message 0 has unknown role 'robot'"):
        read_pool(with_bad)
    targets = datasets.Dataset.from_list([r | {"subtask": "x"} for r in RECORDS])
    assert read_targets(targets)["example_id"].to_list() == ["a1", "a2", "a3"]
