"""Target (validation) examples from the LESS evaluation layouts, as one polars frame.

Why subtasks matter: LESS scores a pool example against each subtask's target gradients
separately (BBH task, MMLU subject, TydiQA language) and keeps the best match, so every
target row carries its ``subtask``. The prompts are built as the LESS reference builds its
validation sets (few-shot prompts whose completion is one shot's answer), as chat
``messages`` so they are formatted exactly like pool examples.

One deliberate difference: the reference answers MMLU and TydiQA with a leading space
(``" B"``) because its assistant turn starts with ``The answer is:``. Here the answer opens
the assistant turn, where a space is an unnatural token: SmolLM2 pays ~10 nats for ``" B"``
against ~2 for ``"B"``, so the target gradient would mostly say "drop the space". Answers
therefore carry no leading whitespace (and :mod:`less_lab.evaluation` scores the same).

Layouts: ``bbh/bbh-three-shot.json``, ``mmlu/dev/<subject>_dev.csv``,
``tydiqa/tydiqa-one-shot.json``, or any JSONL whose lines carry ``subtask`` plus
``messages`` or ``prompt``/``completion``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import polars as pl

from less_lab.data.pool import (
    MESSAGES_DTYPE,
    DataError,
    Messages,
    decode_record,
    file_stem,
    parse_example,
    record_id,
    record_sources,
)
from less_lab.data.readers import (
    RECORD_PATTERNS,
    hf_split_dirs,
    is_hf_dataset,
    is_hf_dataset_dir,
)
from less_lab.data.tydiqa import TYDIQA_TEMPLATES, tydiqa_prompt

TASKS = ("bbh", "mmlu", "tydiqa")
TARGET_SCHEMA = {
    "example_id": pl.String,
    "source": pl.String,
    "subtask": pl.String,
    "messages": MESSAGES_DTYPE,
    "raw": pl.String,
}
MMLU_SHOTS = 5
"""Dev rows used per MMLU subject (the LESS validation set: 57 subjects x 5)."""
TYDIQA_INSTRUCTION = TYDIQA_TEMPLATES["english"][0]
_LAYOUTS = {
    "bbh": ("bbh-three-shot.json", "bbh/bbh-three-shot.json"),
    "tydiqa": ("tydiqa-one-shot.json", "tydiqa/tydiqa-one-shot.json"),
    "mmlu": ("dev/*.csv", "mmlu/dev/*.csv"),
}


def read_targets(path: str | Path | Any, *, task: str | None = None) -> pl.DataFrame:
    """Target examples: ``example_id, source, subtask, messages, raw``.

    ``path`` is a layout file, a directory holding one layout (``eval/bbh``), or the top
    evaluation directory together with ``task`` (``"bbh"``, ``"mmlu"``, ``"tydiqa"``).
    Generic targets (records with a ``subtask``) may be JSONL, a JSON array, parquet, a
    ``datasets`` ``save_to_disk`` directory or ``Dataset`` object, or a directory of those.
    ``raw`` is a JSON line in the generic layout, so ``write_jsonl`` of this frame gives a
    file that reads back as the same targets."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, not {task!r}")
    if is_hf_dataset(path):
        kind, where = "jsonl", [path]
    else:
        kind, where = _detect(Path(path), task)
    reader = {"bbh": _read_bbh, "mmlu": _read_mmlu, "tydiqa": _read_tydiqa, "jsonl": _read_jsonl}
    rows = reader[kind](where)
    _check_unique(rows)
    return pl.DataFrame(rows, schema=TARGET_SCHEMA)


def _detect(path: Path, task: str | None) -> tuple[str, Any]:
    """``(layout, location)``: a file's layout from its name, a directory's from what it
    holds; a directory with several layouts needs ``task``."""
    if is_hf_dataset_dir(path) or hf_split_dirs(path):
        return "jsonl", [path]
    if path.is_file():
        if path.name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            return "jsonl", [path]
        if path.suffix == ".csv":
            return "mmlu", [path]
        guess = task or next((t for t in TASKS if path.name.startswith(t)), None)
        if guess in ("bbh", "tydiqa") and path.suffix == ".json":
            return guess, path
        if path.suffix == ".json" and _starts_array(path):
            return "jsonl", [path]  # a JSON array of generic records
        raise DataError(
            "cannot tell the target layout from the file name",
            path=path,
            expected="bbh-three-shot.json, tydiqa-one-shot.json, *_dev.csv, *.jsonl(.gz), "
            "*.json arrays or *.parquet (or pass task=)",
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    found = {}
    for name in [task] if task else TASKS:
        for pattern in _LAYOUTS[name]:
            hits = sorted(p for p in path.glob(pattern) if p.is_file())
            if hits:
                found[name] = hits if name == "mmlu" else hits[0]
                break
    if not task and not found:
        generic = sorted({p for pat in RECORD_PATTERNS for p in path.glob(pat) if p.is_file()})
        generic += sorted(p for p in path.iterdir() if is_hf_dataset_dir(p))
        if generic:
            return "jsonl", generic
    if len(found) == 1:
        return next(iter(found.items()))
    if task:
        raise DataError(f"holds no {task} layout", path=path, expected=" or ".join(_LAYOUTS[task]))
    if found:
        what = f"holds several target layouts ({', '.join(found)})"
        raise DataError(what, path=path, expected="task= to choose one")
    every = (
        ", ".join(sum(_LAYOUTS.values(), ()))
        + " or generic records ("
        + ", ".join(RECORD_PATTERNS)
        + ")"
    )
    raise DataError("holds no target layout", path=path, expected=f"one of {every}")


def _starts_array(path: Path) -> bool:
    """Whether a ``.json`` file opens with ``[`` (a JSON array of generic records)."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _row(example_id: str, source: str, subtask: str, prompt: str, completion: str) -> dict:
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]
    record = {"id": example_id, "source": source, "subtask": subtask, "messages": messages}
    raw = json.dumps(record, ensure_ascii=False)
    return dict(example_id=example_id, source=source, subtask=subtask, messages=messages, raw=raw)


def _check_unique(rows: list[dict]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["example_id"] in seen:
            raise DataError(f"duplicate target id {row['example_id']!r}", expected="unique ids")
        seen.add(row["example_id"])


# --------------------------------------------------------------------------- file helpers


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a bad byte is reported with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError("invalid UTF-8 byte", path=path, line=line, expected="UTF-8 text") from None


def _load_json(path: Path) -> tuple[Any, str]:
    text = _read_text(path)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None


def _key_line(text: str, key: str) -> int | None:
    """1-based line where the object key ``key`` appears (best effort, for messages)."""
    match = re.search(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", text)
    if match is None:
        match = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _object_of(path: Path, value_kind: str) -> tuple[dict, str]:
    data, text = _load_json(path)
    if not isinstance(data, dict):
        what = f"top level is a JSON {type(data).__name__}"
        raise DataError(what, path=path, line=1, expected=f"an object {{{value_kind}}}")
    return data, text


# --------------------------------------------------------------------------- layouts


def _read_bbh(path: Path) -> list[dict]:
    """3 examples per task: shot i answered after the task description and the other two
    shots (the reference's leave-one-out few-shot prompts); completion = text after A:."""
    data, text = _object_of(path, "task: few-shot prompt")
    rows = []
    for task, prompt in data.items():
        line = _key_line(text, task)
        blocks = prompt.split("\n\n") if isinstance(prompt, str) else []
        if len(blocks) < 3:
            what = f"task {task!r} is not a prompt with 3 shots"
            raise DataError(what, path=path, line=line, expected="blocks split by blank lines")
        description = "\n\n".join(blocks[:-3]).strip()
        shots = []
        for block in blocks[-3:]:
            if "\nA:" not in block:
                what = f"task {task!r}: a shot has no '\\nA:' line"
                raise DataError(what, path=path, line=line, expected="'Q: ...\\nA: ...' shots")
            question, answer = block.split("\nA:", 1)
            if not answer.strip():
                raise DataError(f"task {task!r}: empty answer", path=path, line=line)
            shots.append((question, answer))
        head = description + "\n\n" if description else ""
        for i, (question, answer) in enumerate(shots):
            icl = "".join(f"{q}\nA:{a}\n\n" for j, (q, a) in enumerate(shots) if j != i)
            full = head + icl + question + "\nA:"
            rows.append(_row(f"bbh_{task}_{i}", "bbh", task, full, answer))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(first line, fields)`` per CSV record (records may span lines)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    out = []
    start = 1
    try:
        for fields in reader:
            out.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"bad CSV ({err})", path=path, line=start) from None
    return out


def mmlu_question(fields: list[str]) -> str:
    question, *choices = fields[:5]
    lines = [question] + [f"{letter}. {text}" for letter, text in zip("ABCD", choices, strict=True)]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_header(subject: str) -> str:
    return (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )


def mmlu_records(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of an MMLU CSV (question, A-D, answer letter), blank rows
    skipped; shared with :mod:`less_lab.evalsets` so target and test prompts agree."""
    records = [r for r in _csv_rows(path) if r[1]]
    for line, fields in records:
        if len(fields) != 6 or fields[5].strip() not in ("A", "B", "C", "D"):
            what = f"row with {len(fields)} fields (answer {fields[-1][:10]!r})"
            expected = "question,A,B,C,D,answer with answer in A-D"
            raise DataError(what, path=path, line=line, expected=expected)
    return records


def qa_block(context: str, question: str) -> str:
    """The span-QA question block (TydiQA targets and SQuAD-format test sets)."""
    return f"Passage: {context}\nQuestion: {question}\nAnswer:"


def _read_mmlu(files: list[Path]) -> list[dict]:
    """Per subject, dev row i answered after the other dev rows as 5-shot context."""
    rows = []
    for path in files:
        subject = re.sub(r"_(dev|val|test)$", "", path.stem)
        records = mmlu_records(path)
        if not records:
            raise DataError("no rows", path=path, expected="question,A,B,C,D,answer rows")
        if len(records) > MMLU_SHOTS:
            warnings.warn(
                f"{path}: using the first {MMLU_SHOTS} of {len(records)} rows", stacklevel=3
            )
            records = records[:MMLU_SHOTS]
        header = mmlu_header(subject)
        for i, (_, fields) in enumerate(records):
            shots = "".join(
                f"{mmlu_question(f)} {f[5].strip()}\n\n"
                for j, (_, f) in enumerate(records)
                if j != i
            )
            prompt = header + shots + mmlu_question(fields)
            answer = fields[5].strip()  # no leading space: see the module docstring
            rows.append(_row(f"mmlu_{subject}_{i}", "mmlu", subject, prompt, answer))
    return rows


def _read_tydiqa(path: Path) -> list[dict]:
    """One example per record: passage + question in the record language's open-instruct
    template (as the reference's ``get_tydiqa_dataset``), completion = first answer."""
    data, text = _object_of(path, "language: [records]")
    rows = []
    for lang, records in data.items():
        line = _key_line(text, lang)
        if not isinstance(records, list) or not records:
            what = f"language {lang!r} has no list of records"
            raise DataError(what, path=path, line=line, expected="[{context, question, answers}]")
        for j, rec in enumerate(records):
            try:
                context, question = rec["context"], rec["question"]
                answer = rec["answers"][0]["text"]
                ok = all(isinstance(x, str) for x in (context, question, answer))
            except (KeyError, IndexError, TypeError):
                ok = False
            if not ok or not answer.strip():
                what = f"language {lang!r} record {j} lacks context/question/answers[0].text"
                expected = "strings and a non-empty answer"
                raise DataError(what, path=path, line=line, expected=expected)
            prompt = tydiqa_prompt(lang, context, question)  # the language's own template
            rows.append(_row(f"tydiqa_{lang}_{j}", "tydiqa", lang, prompt, answer.strip()))
    return rows


def _read_jsonl(files: list[Any], max_line_bytes: int = 8_000_000) -> list[dict]:
    """Generic targets: each record (JSONL line, array item, parquet or dataset row) an
    open-instruct record plus ``subtask``; source = the file's stem."""
    rows = []
    seen: dict[str, str] = {}
    for path, records in record_sources(files, max_line_bytes):
        for line, record in records:
            obj, text = decode_record(record, path, line)
            _, messages = parse_example(obj, path, line)
            subtask = obj.get("subtask")
            if not isinstance(subtask, str) or not subtask:
                what = "no 'subtask' field"
                raise DataError(what, path=path, line=line, expected="a subtask name (string)")
            eid = record_id(obj, path, line)
            if eid in seen:
                what = f"duplicate id {eid!r} (first at {seen[eid]})"
                raise DataError(what, path=path, line=line, expected="unique ids")
            seen[eid] = f"{path}:{line}"
            rows.append(_generic_row(eid, file_stem(path), subtask, messages, text))
    return rows


def _generic_row(eid: str, source: str, subtask: str, messages: Messages, raw: str) -> dict:
    return dict(example_id=eid, source=source, subtask=subtask, messages=messages, raw=raw)
