"""Chat formatting and tokenization with completion-only labels and answer-keeping
truncation: the one place a conversation becomes ``input_ids`` and ``labels``.

Why one place: warmup training, gradient features, baselines and evaluation prompts must
all see the same tokens, or LESS would compare gradients of differently formatted text.
The ids are open-instruct's: the whole formatted example encoded once, labels switched
off up to the token length of each prompt prefix (:mod:`less_lab.data.encoding`), so a
SentencePiece tokenizer gives the reference's ids, not one ``▁`` per chat segment.
Reading the pool is :mod:`less_lab.data.pool`.

Dataset text never becomes a special token: a message holding ``</s>`` or ``<|im_end|>``
is encoded as those characters, while the format's own markers (the EOS after each
answer, the chat template's tokens) stay special
(:class:`~less_lab.data.encoding.SpecialStrings`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from less_lab.config import DataConfig
from less_lab.data.batching import IGNORE as IGNORE_INDEX
from less_lab.data.encoding import SpecialStrings, encode_formatted
from less_lab.data.pool import Messages
from less_lab.errors import DataError

DROPPED_SCHEMA = {"example_id": pl.String, "reason": pl.String, "n_tokens": pl.Int64}


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


def tokenize(
    frame: pl.DataFrame, tokenizer: Any, cfg: DataConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(tokenized, dropped)``: ``input_ids`` and ``labels`` (``-100`` off the completion)
    truncated to ``cfg.max_length`` per ``cfg.truncation``, with per-example token counts.

    As open-instruct builds them: each example's formatted text is encoded whole (all
    examples in one batched call of the fast tokenizer's Rust loop), and a token is a
    label unless it lies before the token length of a prompt part's end and at or after
    that of its start (:mod:`less_lab.data.encoding`). Examples left with no completion
    token cannot teach or score anything: they go to ``dropped`` (``example_id, reason,
    n_tokens``) with a warning, never silently. Special-token strings inside message
    contents are plain text; only the format's own (EOS, template markers) are special."""
    specials = SpecialStrings(tokenizer)
    segments = [
        format_segments(specials.escape(m), tokenizer, cfg.chat_format)
        for m in frame["messages"].to_list()
    ]
    texts = ["".join(text for text, _ in segs) for segs in segments]
    spans = [_label_spans(segs) for segs in segments]
    cuts = [[pos for pos, _ in row[1:]] for row in spans]
    encoded, lengths = encode_formatted(tokenizer, texts, cuts, specials)
    bos = tokenizer.bos_token_id
    prefix = [bos] if _adds_bos(tokenizer) else []
    out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "counts", "row")}
    dropped: list[dict[str, Any]] = []
    ids_col = frame["example_id"].to_list()
    for row, ids in enumerate(encoded):
        comp = _completion_mask(len(ids), [flag for _, flag in spans[row]], lengths[row])
        if prefix and (not ids or ids[0] != bos):
            ids, comp = prefix + ids, np.r_[False, comp]
        head = 1 if ids and bos is not None and ids[0] == bos else 0
        comp[:head] = False
        ids_arr = np.asarray(ids, dtype=np.int64)
        n_completion = int(comp.sum())
        keep = _truncate(comp, head, cfg.max_length, cfg.truncation)
        kept_comp = comp[keep]
        cut_completion = n_completion - int(kept_comp.sum())
        cut_prompt = len(ids) - len(kept_comp) - cut_completion
        if n_completion - cut_completion == 0:
            reason = "no completion tokens"
            if n_completion:
                reason += f" left after '{cfg.truncation}' truncation to {cfg.max_length}"
            dropped.append({"example_id": ids_col[row], "reason": reason, "n_tokens": len(ids)})
            continue
        ids_arr = ids_arr[keep]
        out["input_ids"].append(ids_arr)
        out["labels"].append(np.where(kept_comp, ids_arr, IGNORE_INDEX))
        out["counts"].append(
            (len(ids_arr), n_completion - cut_completion, cut_prompt, cut_completion)
        )
        out["row"].append(row)
    return _tokenized_frame(frame, out), _dropped_frame(dropped)


def _label_spans(segments: list[tuple[str, bool]]) -> list[tuple[int, bool]]:
    """``(start character, is_completion)`` of each maximal run of prompt or completion
    segments in the formatted text."""
    out: list[tuple[int, bool]] = []
    pos = 0
    for text, flag in segments:
        if not out or out[-1][1] != flag:
            out.append((pos, flag))
        pos += len(text)
    return out


def _completion_mask(n_tokens: int, flags: list[bool], starts: list[int]) -> np.ndarray:
    """Completion flag per token: open-instruct's masking, each prompt run's tokens
    ``[len(prefix to its start), len(prefix to its end))`` off, everything else on."""
    comp = np.ones(n_tokens, dtype=bool)
    bounds = [0, *starts, n_tokens]
    for k, flag in enumerate(flags):
        if not flag:
            comp[bounds[k] : bounds[k + 1]] = False
    return comp


def check_kept(
    name: str, frame: pl.DataFrame, tokenized: pl.DataFrame, cfg: DataConfig, by_subtask: bool
) -> None:
    """Refuse (``DataError``) a split whose tokenization dropped every example, or, with
    ``by_subtask``, every example of one ``subtask`` (a target then scores without it)."""
    if tokenized.height == 0:
        raise DataError(
            f"{name}: all {frame.height} examples were dropped by tokenization "
            f"(max_length={cfg.max_length})",
            expected="examples that fit data.max_length",
        )
    if not by_subtask or "subtask" not in frame.columns:
        return
    lost = frame.filter(~pl.col("subtask").is_in(tokenized["subtask"].unique().to_list()))
    if lost.height:
        counts = lost.group_by("subtask", maintain_order=True).len().rows()
        names = ", ".join(f"{subtask!r} ({n} examples)" for subtask, n in counts)
        raise DataError(
            f"target {name!r}: tokenization dropped every example of subtask(s) {names}: no "
            f"completion token left after {cfg.truncation!r} truncation to "
            f"max_length={cfg.max_length}",
            expected="each subtask to keep an example (raise data.max_length or use "
            "truncation='prompt_left')",
        )


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


def _list_series(rows: list[np.ndarray], lengths: np.ndarray) -> pl.Series:
    """A ``list[i32]`` series from per-row arrays, built through Arrow offsets (far quicker
    than converting many Python lists one by one)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, dtype=np.int32)
    return pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)))


def _dropped_frame(dropped: list[dict[str, Any]]) -> pl.DataFrame:
    result = pl.DataFrame(dropped, schema=DROPPED_SCHEMA)
    if result.height:
        warnings.warn(
            f"tokenize dropped {result.height} example(s) with no completion tokens, "
            f"e.g. {result['example_id'][0]!r}: {result['reason'][0]}",
            stacklevel=3,
        )
    return result
