"""Pool examples as polars frames, chat formatting, and completion-only labels.

Why a frame per stage: every later stage (gradients, scores, selections, views) joins on
``example_id``, so reading is strict about ids and formats and *never* loses a line
without saying so. Each example keeps its original JSON line (``raw``) so a selection is
written back byte for byte in the user's own format.

Labels are built from separately tokenized text segments (prompt or completion), so the
boundary between ``-100`` and a completion token is exact, whatever the tokenizer would
have merged across it. Target sets (BBH, MMLU, TydiQA) are read by :mod:`less_lab.targets`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from less_lab.config import DataConfig

from .batching import IGNORE as IGNORE_INDEX  # noqa: E402

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
DROPPED_SCHEMA = {"example_id": pl.String, "reason": pl.String, "n_tokens": pl.Int64}
Messages = list[dict[str, str]]


class DataError(ValueError):
    """Bad input data. The message reads ``{path}:{line}: {what}; expected {expected}``."""

    def __init__(
        self,
        what: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = what if expected is None else f"{what}; expected {expected}"
        where = "" if self.path is None else self.path + ("" if line is None else f":{line}")
        super().__init__(f"{where}: {self.reason}" if where else self.reason)


# --------------------------------------------------------------------------- reading


def resolve_files(paths: str | Path | Sequence[str | Path], pattern: str = "*.jsonl") -> list[Path]:
    """Files named by ``paths``; a directory stands for its ``pattern`` files, sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.glob(pattern) if p.is_file())
            if not found:
                raise DataError("directory holds no data files", path=item, expected=pattern)
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return files


def iter_json_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """``(line_no, text)`` per non-blank line, or ``(line_no, DataError)`` for a line that
    is too long or not UTF-8. An over-long line is skipped in chunks, never held whole,
    so one corrupt multi-GB line cannot exhaust memory."""
    with open(path, "rb") as fh:
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
        return f"{path.stem}_{line}"
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"bad id {value!r}", path=path, line=line, expected="a string or integer")
    return str(value)


def _pool_row(text: str, path: Path, line: int) -> dict[str, Any]:
    obj = load_json_object(text, path, line)
    fmt, messages = parse_example(obj, path, line)
    source = obj.get("dataset", obj.get("source"))
    if source is None:
        source = path.stem
    elif not isinstance(source, str):
        raise DataError(f"bad source {source!r}", path=path, line=line, expected="a string")
    eid = record_id(obj, path, line)
    return dict(example_id=eid, source=source, format=fmt, messages=messages, raw=text)


def read_pool_with_report(
    paths: str | Path | Sequence[str | Path],
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
    for path in resolve_files(paths):
        for line, text in iter_json_lines(path, max_line_bytes):
            try:
                if isinstance(text, DataError):
                    raise text
                row = _pool_row(text, path, line)
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


def read_pool(
    paths: str | Path | Sequence[str | Path],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    max_line_bytes: int = 8_000_000,
) -> pl.DataFrame:
    """Candidate examples, one row per JSONL line: ``example_id, source, format, messages,
    raw, file, line``. A directory means all its ``*.jsonl`` files, sorted.

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


# --------------------------------------------------------------------------- formatting


def format_segments(
    messages: Messages, tokenizer: Any, chat_format: Literal["tulu", "template"] = "tulu"
) -> list[tuple[str, bool]]:
    """Conversation text as ``(segment, is_completion)`` pairs; their concatenation is the
    full training text. Completion = every assistant turn's content plus its end marker."""
    if chat_format == "tulu":
        return _tulu_segments(messages, tokenizer.eos_token)
    if chat_format == "template":
        return _template_segments(messages, tokenizer)
    raise ValueError(f"chat_format must be 'tulu' or 'template', not {chat_format!r}")


def _tulu_segments(messages: Messages, eos: str | None) -> list[tuple[str, bool]]:
    """The open-instruct/LESS format (``<|user|>\\n...``); EOS ends each answer."""
    if eos is None:
        raise ValueError("the tulu chat format needs a tokenizer with an eos_token")
    out: list[tuple[str, bool]] = []
    for msg in messages:
        role, content = msg["role"], msg["content"]
        if role == "assistant":
            out += [("<|assistant|>\n", False), (content + eos, True), ("\n", False)]
        elif role in ("user", "system"):
            out.append((f"<|{role}|>\n{content}\n", False))
        else:
            raise ValueError(f"unknown role {role!r}")
    return out


def _render(tokenizer: Any, messages: Messages, generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _template_segments(messages: Messages, tokenizer: Any) -> list[tuple[str, bool]]:
    """Locate each assistant span by rendering prefixes of the conversation.

    Rendering ``messages[:k]`` with a generation prompt must give a prefix of rendering
    ``messages[:k+1]``, which must continue with the assistant content; the completion is
    that content plus the template's end-of-turn text up to trailing whitespace."""
    full = _render(tokenizer, messages, False)
    out: list[tuple[str, bool]] = []
    pos = 0
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], True) if k else ""
        after = _render(tokenizer, messages[: k + 1], False)
        tail = after[len(before) :]
        content = msg["content"]
        consistent = (
            after.startswith(before)
            and before.startswith(full[:pos])
            and full.startswith(after)
            and (tail.startswith(content) or tail.startswith(content.strip()))
        )
        if not consistent:
            raise ValueError(
                "the chat template does not render conversation prefixes consistently "
                f"(assistant turn {k}); use chat_format='tulu' for this tokenizer"
            )
        completion = tail.rstrip()
        out.append((before[pos:], False))
        out.append((completion, True))
        pos = len(before) + len(completion)
    out.append((full[pos:], False))
    return [(text, flag) for text, flag in out if text]


# --------------------------------------------------------------------------- tokenizing


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text by itself (Llama does,
    GPT-2-style tokenizers do not); we then add it once, outside any segment."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _truncate(comp: np.ndarray, head: int, max_length: int, mode: str) -> np.ndarray:
    """Keep-mask over tokens (``comp`` flags completion tokens; the first ``head`` tokens
    are BOS and never cut). Prompt modes cut prompt tokens first, then the completion's
    tail; ``right`` cuts the end like the reference code."""
    keep = np.ones(len(comp), dtype=bool)
    excess = len(comp) - max_length
    if excess <= 0:
        return keep
    if mode == "right":
        keep[max_length:] = False
        return keep
    if mode == "prompt_middle":
        start, stop = _last_prompt_span(comp, head)
        cut = min(excess, stop - start)
        left = start + (stop - start - cut) // 2
        keep[left : left + cut] = False
        excess -= cut
    elif mode != "prompt_left":
        raise ValueError(f"unknown truncation {mode!r}")
    prompt = np.flatnonzero(~comp & keep)
    cut_idx = prompt[prompt >= head][:excess]
    keep[cut_idx] = False
    excess -= len(cut_idx)
    if excess > 0:
        completion = np.flatnonzero(comp & keep)
        keep[completion[len(completion) - min(excess, len(completion)) :]] = False
    return keep


def _last_prompt_span(comp: np.ndarray, head: int) -> tuple[int, int]:
    """``[start, stop)`` of the prompt tokens right before the last completion segment."""
    idx = np.flatnonzero(comp)
    if not len(idx):
        return head, head
    run_starts = idx[np.r_[True, np.diff(idx) > 1]]
    stop = int(run_starts[-1])
    earlier = idx[idx < stop]
    start = int(earlier[-1]) + 1 if len(earlier) else 0
    return max(start, head), max(stop, head)


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, in one batched call. A fast
    tokenizer's Rust backend is called directly (no offsets, no Python wrapper objects),
    which is 2-3x quicker than ``tokenizer(texts)`` and gives the same ids."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = backend is not None and backend.truncation is None and backend.padding is None
    if plain and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def tokenize(
    frame: pl.DataFrame, tokenizer: Any, cfg: DataConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(tokenized, dropped)``: ``input_ids`` and ``labels`` (``-100`` off the completion)
    truncated to ``cfg.max_length`` per ``cfg.truncation``, with per-example token counts.

    Examples left with no completion token cannot teach or score anything: they go to
    ``dropped`` (``example_id, reason, n_tokens``) with a warning, never silently.
    All segment texts are tokenized in one batched call (the fast tokenizer's Rust loop);
    repeated texts such as role headers are tokenized once."""
    segments = [format_segments(m, tokenizer, cfg.chat_format) for m in frame["messages"].to_list()]
    unique = list(dict.fromkeys(text for segs in segments for text, _ in segs))
    lookup = dict(zip(unique, _encode_texts(tokenizer, unique), strict=True))
    bos = tokenizer.bos_token_id
    prefix = [bos] if _adds_bos(tokenizer) else []
    out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "counts", "row")}
    dropped: list[dict[str, Any]] = []
    ids_col = frame["example_id"].to_list()
    for row, segs in enumerate(segments):
        ids: list[int] = []
        labels: list[int] = []
        for text, is_completion in segs:
            piece = lookup[text]
            ids.extend(piece)
            labels.extend(piece if is_completion else [IGNORE_INDEX] * len(piece))
        if prefix and (not ids or ids[0] != bos):
            ids, labels = prefix + ids, [IGNORE_INDEX] + labels
        head = 1 if ids and bos is not None and ids[0] == bos else 0
        comp = np.asarray(labels, dtype=np.int64) != IGNORE_INDEX
        n_completion = int(comp.sum())
        keep = _truncate(comp, head, cfg.max_length, cfg.truncation)
        if not keep.all():
            kept = np.flatnonzero(keep)
            ids = [ids[i] for i in kept]
            labels = [labels[i] for i in kept]
        cut_completion = n_completion - int((comp & keep).sum())
        cut_prompt = int((~keep).sum()) - cut_completion
        if n_completion - cut_completion == 0:
            reason = "no completion tokens"
            if n_completion:
                reason += f" left after '{cfg.truncation}' truncation to {cfg.max_length}"
            dropped.append({"example_id": ids_col[row], "reason": reason, "n_tokens": len(comp)})
            continue
        out["input_ids"].extend(ids)
        out["labels"].extend(labels)
        out["counts"].append((len(ids), n_completion - cut_completion, cut_prompt, cut_completion))
        out["row"].append(row)
    return _tokenized_frame(frame, out), _dropped_frame(dropped)


def _tokenized_frame(frame: pl.DataFrame, out: dict[str, list[Any]]) -> pl.DataFrame:
    counts = np.asarray(out["counts"], dtype=np.int64).reshape(-1, 4)
    rows = pl.Series(out["row"], dtype=pl.UInt32)
    extra = [c for c in ("source", "subtask") if c in frame.columns]
    return pl.DataFrame(
        {
            "example_id": frame["example_id"].gather(rows),
            "input_ids": _list_series(out["input_ids"], counts[:, 0]),
            "labels": _list_series(out["labels"], counts[:, 0]),
            "n_tokens": counts[:, 0],
            "n_completion_tokens": counts[:, 1],
            "n_prompt_tokens_cut": counts[:, 2],
            "n_completion_tokens_cut": counts[:, 3],
            **{c: frame[c].gather(rows) for c in extra},
        }
    )


def _list_series(flat: list[int], lengths: np.ndarray) -> pl.Series:
    """A ``list[i32]`` series from concatenated values and row lengths, built through
    Arrow offsets (far quicker than converting millions of Python lists one by one)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.asarray(flat, dtype=np.int32))
    return pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets), values))


def _dropped_frame(dropped: list[dict[str, Any]]) -> pl.DataFrame:
    result = pl.DataFrame(dropped, schema=DROPPED_SCHEMA)
    if result.height:
        warnings.warn(
            f"tokenize dropped {result.height} example(s) with no completion tokens, "
            f"e.g. {result['example_id'][0]!r}: {result['reason'][0]}",
            stacklevel=3,
        )
    return result
