"""Record sources beyond JSONL: JSON arrays, parquet, Hugging Face ``datasets`` (a
``Dataset`` object or a ``save_to_disk`` directory). Each yields the same
``(row, record)`` stream as a JSONL file, so the pool and target readers check every
format with the same rules and report ``file:row`` the same way.

A record is a ``str`` (a JSONL line, parsed and checked by the caller), a ``dict``
(already decoded: a JSON array item or a parquet/arrow row, with null columns dropped)
or a :class:`DataError` for a row that could not be read. Row numbers are 1-based: the
line of a JSONL file, the item of a JSON array, the row of a parquet file or a dataset.

``save_to_disk`` directories are read with pyarrow from their arrow files (listed in
``state.json``), so they need no extra package. A ``datasets.Dataset`` object is read
through its own arrow table; ``datasets`` is the optional extra ``less_lab[hf]`` and is
imported only then.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from less_lab.errors import DataError

RECORD_PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.json", "*.parquet")
"""What a data directory stands for: JSONL (plain or gzip), JSON arrays, parquet files,
and ``save_to_disk`` subdirectories."""
BATCH_ROWS = 4096
Record = str | dict[str, Any] | DataError


def is_hf_dataset_dir(path: Path) -> bool:
    """A ``datasets`` ``save_to_disk`` directory (one split: ``state.json`` + arrow files)."""
    return path.is_dir() and (path / "state.json").is_file()


def hf_split_dirs(path: Path) -> list[Path]:
    """The split directories of a ``DatasetDict.save_to_disk`` directory, else []."""
    index = path / "dataset_dict.json"
    if not (path.is_dir() and index.is_file()):
        return []
    try:
        splits = json.loads(index.read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        what = f"unreadable dataset_dict.json ({err})"
        raise DataError(what, path=index, expected="a datasets save_to_disk index") from None
    return [path / s for s in splits if is_hf_dataset_dir(path / s)]


def is_hf_dataset(obj: object) -> bool:
    """A ``datasets.Dataset`` (checked by its class, without importing ``datasets``)."""
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "with_format")


def require_datasets() -> Any:
    """The ``datasets`` module, or an ImportError naming the optional extra."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "reading a Hugging Face datasets.Dataset needs the optional extra: "
            "pip install 'less_lab[hf]' (or pip install datasets)"
        ) from None
    return datasets


def dataset_label(obj: Any) -> str:
    """The name a ``Dataset`` object's rows are reported under (``hf:<name>``)."""
    info = getattr(obj, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(obj, "split", None) or "dataset"
    return f"hf:{name}"


def iter_records(path: Path, json_lines: Any) -> Iterator[tuple[int, Record]]:
    """``(row, record)`` of one data file or ``save_to_disk`` directory; ``json_lines``
    is the JSONL line reader (``pool.iter_json_lines`` bound to its size limit)."""
    if path.is_dir():
        yield from _arrow_dir_rows(path)
    elif path.name.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif path.name.endswith(".json"):
        yield from _json_array_rows(path)
    else:
        yield from json_lines(path)


def iter_dataset(obj: Any) -> Iterator[tuple[int, Record]]:
    """``(row, record)`` of a ``datasets.Dataset`` object, through its arrow batches."""
    require_datasets()
    arrow = obj.with_format("arrow")
    yield from _table_rows(arrow.iter(batch_size=BATCH_ROWS))


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """A columnar row as a record: columns that are null in this row are left out."""
    return {k: v for k, v in row.items() if v is not None}


def _table_rows(batches: Any) -> Iterator[tuple[int, Record]]:
    row = 0
    for batch in batches:
        for item in batch.to_pylist():
            row += 1
            yield row, _clean(item)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Record]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        yield from _table_rows(batches)
    except (OSError, pa.ArrowException) as err:
        what = f"cannot read parquet ({err})"
        raise DataError(what, path=path, expected="a readable parquet file") from None


def _arrow_dir_rows(path: Path) -> Iterator[tuple[int, Record]]:
    """The rows of a ``save_to_disk`` directory, its arrow stream files in order."""
    import pyarrow as pa

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        what = f"unreadable state.json ({err})"
        raise DataError(
            what, path=path / "state.json", expected="a datasets save_to_disk"
        ) from None

    def batches() -> Iterator[Any]:
        for file in files:
            with pa.memory_map(str(file)) as source:
                yield from pa.ipc.open_stream(source)

    try:
        yield from _table_rows(batches())
    except (OSError, pa.ArrowException) as err:
        what = f"cannot read arrow data ({err})"
        raise DataError(what, path=path, expected="datasets save_to_disk arrow files") from None


def _json_array_rows(path: Path) -> Iterator[tuple[int, Record]]:
    """Items of a ``.json`` file holding one array of records; a file that is not
    valid JSON, or not an array, is one error at its line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        yield line, DataError("invalid UTF-8 byte", path=path, line=line, expected="UTF-8 text")
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        what = f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno})"
        yield 1, DataError(what, path=path, line=1, expected="a JSON array of records")
        return
    except RecursionError:
        yield 1, DataError("JSON nested too deeply", path=path, line=1)
        return
    if not isinstance(items, list):
        what = f"top level is a JSON {type(items).__name__}"
        yield 1, DataError(what, path=path, line=1, expected="a JSON array of records")
        return
    for row, item in enumerate(items, start=1):
        if isinstance(item, dict):
            yield row, item
        else:
            what = f"item is a JSON {type(item).__name__}, not an object"
            yield row, DataError(what, path=path, line=row, expected="an array of objects")
