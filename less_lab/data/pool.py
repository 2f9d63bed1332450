"""Pool examples as polars frames: strict JSONL reading, bad-line reports, and writing a
selection back in the pool's own format.

Why a frame per stage: every later stage (gradients, scores, selections, views) joins on
``example_id``, so reading is strict about ids and formats and *never* loses a line
without saying so. Each example keeps its original JSON line (``raw``) so a selection is
written back byte for byte in the user's own format.

Chat formatting and tokenization (completion-only labels) are in
:mod:`less_lab.formatting`. Target sets (BBH, MMLU, TydiQA) are read by
:mod:`less_lab.targets`.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from less_lab.data.readers import (
    RECORD_PATTERNS,
    Record,
    dataset_label,
    hf_split_dirs,
    is_hf_dataset,
    is_hf_dataset_dir,
    iter_dataset,
    iter_records,
)
from less_lab.errors import DataError

ROLES = ("system", "user", "assistant")
MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
POOL_SCHEMA = {
    "example_id": pl.String,
    "source": pl.String,
    "format": pl.String,
    "messages": MESSAGES_DTYPE,
    "raw": pl.String,
    "file": pl.String,
    "line": pl.Int64,
}
REPORT_SCHEMA = {"file": pl.String, "line": pl.Int64, "reason": pl.String}
Messages = list[dict[str, str]]


# --------------------------------------------------------------------------- reading


DATA_PATTERNS = RECORD_PATTERNS
"""What a pool directory stands for: JSONL files (gzip-compressed or not), JSON arrays,
parquet files and ``datasets`` ``save_to_disk`` subdirectories (see ``readers``)."""
Source = str | os.PathLike | Any  # a path, or a datasets.Dataset object


def resolve_files(
    paths: Source | Sequence[Source], pattern: str | Sequence[str] = DATA_PATTERNS
) -> list[Path]:
    """Files named by ``paths``; a directory stands for its ``pattern`` files and its
    ``save_to_disk`` subdirectories, sorted; a ``save_to_disk`` directory (or a
    ``DatasetDict`` one: its splits) stands for itself."""
    if isinstance(paths, (str, os.PathLike)) or is_hf_dataset(paths):
        paths = [paths]
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files: list[Path] = []
    for item in paths:
        if is_hf_dataset(item):
            files.append(item)
            continue
        item = Path(item)
        if is_hf_dataset_dir(item):
            files.append(item)
        elif splits := hf_split_dirs(item):
            files.extend(splits)
        elif item.is_dir():
            found = sorted({p for pat in patterns for p in item.glob(pat) if p.is_file()})
            found += sorted(p for p in item.iterdir() if is_hf_dataset_dir(p))
            if not found:
                what = "directory holds no data files"
                raise DataError(what, path=item, expected=" or ".join(patterns))
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return files


def file_stem(path: Path) -> str:
    """A data file's name without its data suffixes (``a.jsonl.gz`` -> ``a``): the default
    source and id prefix of its records."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def iter_json_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """``(line_no, text)`` per non-blank line, or ``(line_no, DataError)`` for a line that
    is too long or not UTF-8. An over-long line is skipped in chunks, never held whole,
    so one corrupt multi-GB line cannot exhaust memory. ``*.gz`` files are read through
    gzip (a truncated archive is an error naming the file)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            yield from _lines(fh, path, max_line_bytes)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read ({err})", path=path, expected="a readable file") from None


def _lines(fh: Any, path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """The lines of an open binary file (see ``iter_json_lines``)."""
    line_no = 0
    while chunk := fh.readline(max_line_bytes + 1):
        line_no += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(1 << 20)
            what = f"line longer than {max_line_bytes} bytes"
            yield line_no, DataError(what, path=path, line=line_no, expected="shorter lines")
            continue
        if chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        if line_no == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]  # a UTF-8 byte-order mark is not part of the record
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as err:
            what = f"invalid UTF-8 byte at column {err.start + 1}"
            yield line_no, DataError(what, path=path, line=line_no, expected="UTF-8 text")
            continue
        if text.strip():
            yield line_no, text


def load_json_object(text: str, path: Path, line: int) -> dict[str, Any]:
    """Parse one JSONL record; anything but an object is a :class:`DataError`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        what = f"malformed JSON ({err.msg} at column {err.colno})"
        raise DataError(what, path=path, line=line, expected="one JSON object per line") from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path=path, line=line) from None
    if not isinstance(obj, dict):
        what = f"a JSON {type(obj).__name__} is not an object"
        raise DataError(what, path=path, line=line, expected="one JSON object per line")
    return checked_text(obj, path, line)


def checked_text(obj: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    """``obj`` when all its text is valid Unicode, else a :class:`DataError`."""
    try:  # JSON escapes can spell lone surrogates, which no later stage can encode
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        what = f"text holds an unpaired surrogate {err.object[err.start : err.end]!r}"
        raise DataError(what, path=path, line=line, expected="valid Unicode text") from None
    return obj


def parse_example(obj: dict[str, Any], path: Path, line: int) -> tuple[str, Messages]:
    """``(format, messages)`` of an open-instruct ``messages`` or ``prompt``/``completion``
    record; every assistant turn must say something, since it is the training signal."""

    def fail(what: str, expected: str) -> DataError:
        return DataError(what, path=path, line=line, expected=expected)

    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise fail("'messages' is empty or not a list", "a list of {role, content}")
        out: Messages = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or "role" not in msg:
                raise fail(f"message {i} has no 'role'", "{role, content} objects")
            role, content = msg["role"], msg.get("content")
            if role not in ROLES:
                raise fail(f"message {i} has unknown role {role!r}", f"one of {list(ROLES)}")
            if not isinstance(content, str):
                raise fail(f"message {i} 'content' is not a string", "text content")
            if role == "assistant" and not content.strip():
                raise fail(f"message {i} is an empty assistant turn", "a non-empty completion")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise fail("no assistant turn", "at least one assistant message (the completion)")
        return "messages", out
    if "prompt" in obj or "completion" in obj:
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise fail("'prompt' or 'completion' missing or not a string", "two strings")
        if not completion.strip():
            raise fail("empty completion", "a non-empty completion")
        return "prompt_completion", [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
    raise fail("no 'messages' or 'prompt'/'completion' field", "an open-instruct record")


def record_id(obj: dict[str, Any], path: Path, line: int) -> str:
    """The record's ``id`` (string or integer), else ``{file stem}_{line}``."""
    value = obj.get("id")
    if value is None:
        return f"{file_stem(path)}_{line}"
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"bad id {value!r}", path=path, line=line, expected="a string or integer")
    return str(value)


def record_sources(
    paths: Source | Sequence[Source], max_line_bytes: int
) -> Iterator[tuple[Path, Iterator[tuple[int, Record]]]]:
    """``(label, (row, record) stream)`` per data source named by ``paths``: files and
    ``save_to_disk`` directories (``readers.iter_records``), ``Dataset`` objects."""
    for item in resolve_files(paths):
        if is_hf_dataset(item):
            yield Path(dataset_label(item)), iter_dataset(item)
        else:
            yield item, iter_records(item, lambda p: iter_json_lines(p, max_line_bytes))


def decode_record(record: Record, path: Path, line: int) -> tuple[dict[str, Any], str]:
    """``(object, raw JSON line)`` of one record of any format (see ``readers``)."""
    if isinstance(record, DataError):
        raise record
    if isinstance(record, str):
        return load_json_object(record, path, line), record
    obj = checked_text(record, path, line)
    return obj, json.dumps(obj, ensure_ascii=False, default=str)


def _pool_row(record: Record, path: Path, line: int) -> dict[str, Any]:
    obj, text = decode_record(record, path, line)
    fmt, messages = parse_example(obj, path, line)
    source = obj.get("dataset", obj.get("source"))
    if source is None:
        source = file_stem(path)
    elif not isinstance(source, str):
        raise DataError(f"bad source {source!r}", path=path, line=line, expected="a string")
    eid = record_id(obj, path, line)
    return dict(example_id=eid, source=source, format=fmt, messages=messages, raw=text)


def read_pool_with_report(
    paths: Source | Sequence[Source],
    *,
    on_error: Literal["raise", "skip"] = "skip",
    max_line_bytes: int = 8_000_000,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(pool, report)``: the pool frame (see :func:`read_pool`) and one report row
    ``(file, line, reason)`` per skipped line. Duplicate ids keep the first occurrence."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path, records in record_sources(paths, max_line_bytes):
        for line, record in _guarded(records, path, on_error, skipped):
            try:
                row = _pool_row(record, path, line)
                first = seen.get(row["example_id"])
                if first is not None:
                    what = f"duplicate id {row['example_id']!r} (first at {first})"
                    raise DataError(what, path=path, line=line, expected="unique ids")
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped.append({"file": str(path), "line": line, "reason": err.reason})
                continue
            seen[row["example_id"]] = f"{path}:{line}"
            rows.append(row | {"file": str(path), "line": line})
    return pl.DataFrame(rows, schema=POOL_SCHEMA), pl.DataFrame(skipped, schema=REPORT_SCHEMA)


def _guarded(
    records: Iterator[tuple[int, Record]], path: Path, on_error: str, skipped: list
) -> Iterator[tuple[int, Record]]:
    """``records``, where a source that fails as a whole (an unreadable parquet or arrow
    file) is reported once and skipped under ``on_error="skip"``."""
    try:
        yield from records
    except DataError as err:
        if on_error == "raise":
            raise
        skipped.append({"file": str(path), "line": err.line, "reason": err.reason})


def read_pool(
    paths: Source | Sequence[Source],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    max_line_bytes: int = 8_000_000,
) -> pl.DataFrame:
    """Candidate examples, one row per record: ``example_id, source, format, messages,
    raw, file, line``. ``paths``: JSONL (``.jsonl``, ``.jsonl.gz``), JSON arrays
    (``.json``), parquet, ``datasets`` ``save_to_disk`` directories or ``Dataset``
    objects; any other directory means all of those it holds, sorted. ``line`` is the
    line of a JSONL file, else the 1-based row (array item, parquet or dataset row).

    ``on_error="raise"`` stops at the first bad line with a :class:`DataError` naming file
    and line; ``"skip"`` leaves bad lines out and warns with their count (use
    :func:`read_pool_with_report` to get every skipped line)."""
    frame, report = read_pool_with_report(paths, on_error=on_error, max_line_bytes=max_line_bytes)
    if report.height:
        first = "; ".join(f"{f}:{n}: {why}" for f, n, why in report.head(3).iter_rows())
        warnings.warn(
            f"read_pool skipped {report.height} bad line(s), e.g. {first}",
            stacklevel=2,
        )
    return frame


def write_jsonl(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write the ``raw`` lines of ``frame`` in frame order, atomically (temp file + rename),
    so a selection comes back in its input's own format and a crash never leaves half a
    file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            for i, raw in enumerate(frame.get_column("raw").to_list()):
                if raw is None or "\n" in raw:
                    raise ValueError(f"row {i}: 'raw' is missing or spans several lines")
                fh.write(raw + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stratified_sample(
    frame: pl.DataFrame, n: int, by: str = "source", seed: int = 0
) -> pl.DataFrame:
    """About ``n`` rows with an equal share per ``by`` group (seeded), in the frame's own
    order: a small pool that keeps every source, for CPU-sized runs and notebooks."""
    if by not in frame.columns:
        raise KeyError(f"no column {by!r} to stratify by; have {frame.columns}")
    per = max(1, n // max(1, frame[by].n_unique()))
    picked = frame.with_row_index("_row").sample(fraction=1.0, shuffle=True, seed=seed)
    picked = picked.filter(pl.int_range(pl.len()).over(by) < per)
    return picked.sort("_row").drop("_row")
