"""Formatted text to token ids the way open-instruct (which LESS trained with) does it:
the whole example encoded in one tokenizer call, and the token length of each prefix
(the text up to a prompt/completion boundary) telling where the labels switch.

Why whole text: a SentencePiece tokenizer (Llama-2, Mistral) marks a word start with
``▁``, so encoding chat segments one by one and concatenating puts a ``▁`` (or a different
merge) at every segment start: other ids than the reference's, hence other warmup data,
gradients and evaluation prompts. Byte-level BPE tokenizers (SmolLM2, GPT-2) rarely differ,
but the whole-text ids are the definition for every tokenizer.

Prefix lengths come from the whole encoding's character offsets when a token starts
exactly at the boundary (one encoding, no second pass); a boundary that falls inside a
token, or that the offsets cannot place, is settled by encoding the prefix itself, which
is open-instruct's definition (``len(tokenizer(prefix))``).

Dataset text never becomes a special token: message contents are escaped before
formatting (:class:`SpecialStrings`), so every special-token string left in a formatted
text was written by the format (EOS after each answer, chat-template markers). A text with
no escape is encoded as it is, special tokens parsed; a text with one is split at the
format's markers (as the tokenizer itself splits at added tokens), its plain pieces are
encoded with special-token parsing off, and the markers become their ids.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_ESC = "\ue000"
"""Private-use character that starts an escape in dataset text: ``_ESC`` + a code
character stands for one special-token string (or for ``_ESC`` itself)."""
_FIRST_CODE = 0xF0000  # supplementary private-use area: room for 65k special tokens


class SpecialStrings:
    """The tokenizer's special-token strings, and the escaping that keeps them plain text
    inside dataset text.

    Message contents are escaped before formatting, so in a formatted text every
    special-token string left as it is was written by the format (EOS, template markers).
    :meth:`plan` splits a text there: those become their ids, everything between (escapes
    restored) is plain text, encoded with special-token parsing off."""

    def __init__(self, tokenizer: Any) -> None:
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        found = {t.content for t in added.values() if getattr(t, "special", False)}
        found |= set(getattr(tokenizer, "all_special_tokens", []) or [])
        self.strings = sorted((s for s in found if s), key=lambda s: (-len(s), s))
        self.ids = {s: tokenizer.convert_tokens_to_ids(s) for s in self.strings}
        codes = {s: _ESC + chr(_FIRST_CODE + i) for i, s in enumerate(self.strings)}
        self.codes = {**codes, _ESC: _ESC + _ESC}
        self.decoded = {code: s for s, code in self.codes.items()}
        specials = "|".join(re.escape(s) for s in self.strings)
        self._escape_re = re.compile(f"{_ESC}|{specials}")
        self._split_re = re.compile(f"({_ESC}.|{specials})", re.DOTALL)

    def escape(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` with special-token strings in their contents escaped."""
        if not self.strings:
            return messages
        sub, codes = self._escape_re.sub, self.codes
        return [{**m, "content": sub(lambda x: codes[x.group()], m["content"])} for m in messages]

    def plan(self, text: str) -> list[str | int]:
        """An escaped text as plain-text pieces (unescaped) and special-token ids."""
        parts = self._split_re.split(text) if self.strings else [text]
        if len(parts) == 1:
            return [text]
        out: list[str | int] = []
        buf: list[str] = []
        for i, part in enumerate(parts):
            if i % 2 == 1 and part in self.ids:
                if "".join(buf):
                    out.append("".join(buf))
                out.append(self.ids[part])
                buf = []
            else:
                buf.append(self.decoded.get(part, part) if i % 2 else part)
        if "".join(buf):
            out.append("".join(buf))
        return out


def encode_formatted(
    tokenizer: Any, texts: list[str], cuts: list[list[int]], specials: SpecialStrings
) -> tuple[list[list[int]], list[list[int]]]:
    """``(ids, prefix_lengths)``: each escaped formatted text encoded whole (no special
    tokens added), and for each character position in ``cuts[i]`` the token length of
    ``texts[i][:position]`` (open-instruct's label boundaries)."""
    ids: list[list[int]] = [[] for _ in texts]
    lengths: list[list[int]] = [[] for _ in texts]
    clean = [i for i, t in enumerate(texts) if _ESC not in t]
    hostile = [i for i, t in enumerate(texts) if _ESC in t]
    pending: list[tuple[int, int, int]] = []  # (row, cut index, position): prefix to encode
    encodings = _encode_whole(tokenizer, [texts[i] for i in clean])
    for row, enc in zip(clean, encodings, strict=True):
        ids[row] = enc if isinstance(enc, list) else enc.ids
        lengths[row] = [-1] * len(cuts[row])
        for k, pos in enumerate(cuts[row]):
            n = None if isinstance(enc, list) else _tokens_before(enc, pos, len(texts[row]))
            if n is None:
                pending.append((row, k, pos))
            else:
                lengths[row][k] = n
    prefixes = [texts[row][:pos] for row, _, pos in pending]
    for (row, k, _), enc in zip(pending, _encode_whole(tokenizer, prefixes), strict=True):
        lengths[row][k] = len(enc)
    if hostile:
        whole = encode_escaped(tokenizer, [texts[i] for i in hostile], specials)
        heads = [texts[i][:pos] for i in hostile for pos in cuts[i]]
        head_ids = iter(encode_escaped(tokenizer, heads, specials))
        for row, row_ids in zip(hostile, whole, strict=True):
            ids[row] = row_ids
            lengths[row] = [len(next(head_ids)) for _ in cuts[row]]
    return ids, lengths


def _tokens_before(enc: Any, pos: int, n_chars: int) -> int | None:
    """How many of ``enc``'s tokens lie before character ``pos``, when a token starts
    exactly there (and the one before ends by then); ``None`` when the offsets cannot say."""
    if pos >= n_chars:
        return len(enc.ids)
    idx = enc.char_to_token(pos)
    if idx is None or enc.token_to_chars(idx)[0] != pos:
        return None
    if idx and enc.token_to_chars(idx - 1)[1] > pos:
        return None
    return idx


def _fast_backend(tokenizer: Any) -> Any:
    """The tokenizer's Rust backend when it can be called directly (a fast tokenizer with
    no truncation or padding configured), else ``None``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if getattr(backend, "encode_special_tokens", None) is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    return backend


@contextlib.contextmanager
def _special_parsing(backend: Any, parse: bool) -> Iterator[None]:
    """Sets the backend's ``encode_special_tokens`` (the inverse of ``parse``) for the
    block and restores it (transformers also leaves ``split_special_tokens`` set on it)."""
    before = backend.encode_special_tokens
    backend.encode_special_tokens = not parse
    try:
        yield
    finally:
        backend.encode_special_tokens = before


def _encode_whole(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Each text encoded as ``tokenizer(text, add_special_tokens=False)`` would (special
    tokens parsed), in one batched call: Rust encodings with offsets for a fast tokenizer
    (its backend called directly, no Python wrapper objects), id lists otherwise."""
    if not texts:
        return []
    backend = _fast_backend(tokenizer)
    if backend is None:
        kwargs = {"add_special_tokens": False, "split_special_tokens": False, "verbose": False}
        return list(tokenizer(texts, **kwargs)["input_ids"])
    with _special_parsing(backend, parse=True):
        return backend.encode_batch(texts, add_special_tokens=False)


def encode_plain(tokenizer: Any, texts: list[str], at_start: bool = True) -> list[list[int]]:
    """Token ids of each text as plain text (no special tokens added, none parsed), in one
    batched call. ``at_start=False`` encodes each text as the tokenizer encodes a piece
    that follows an added token inside a longer text (a ``Metaspace`` pre-tokenizer with
    ``prepend_scheme="first"`` then adds no ``▁``)."""
    if not texts:
        return []
    backend = _fast_backend(tokenizer)
    if backend is None:
        kwargs = {"add_special_tokens": False, "split_special_tokens": True, "verbose": False}
        return tokenizer(texts, **kwargs)["input_ids"]
    with _special_parsing(backend, parse=False), _no_first_prepend(backend, not at_start):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


@contextlib.contextmanager
def _no_first_prepend(backend: Any, active: bool) -> Iterator[None]:
    """Turns ``prepend_scheme="first"`` Metaspace pre-tokenizers to ``never`` for the block
    (restored after): what "first" does to a piece not at the start of the text."""
    pre = backend.pre_tokenizer if active else None
    found = []
    for part in _pre_tokenizer_parts(pre):
        if getattr(part, "prepend_scheme", None) == "first":
            part.prepend_scheme = "never"
            found.append(part)
    try:
        yield
    finally:
        for part in found:
            part.prepend_scheme = "first"


def _pre_tokenizer_parts(pre: Any) -> list[Any]:
    if pre is None:
        return []
    if type(pre).__name__ != "Sequence":
        return [pre]
    parts = []
    with contextlib.suppress(IndexError, TypeError):
        for i in range(1_000):
            parts.append(pre[i])
    return parts


def encode_escaped(tokenizer: Any, texts: list[str], specials: SpecialStrings) -> list[list[int]]:
    """Token ids of escaped texts: plain pieces (unescaped) encoded with special-token
    parsing off, as the pieces the tokenizer would split the text into at its markers (two
    batched calls: pieces at a text's start, and pieces after a marker), the format's
    markers as their ids."""
    plans = [specials.plan(text) for text in texts]
    firsts = {p[0] for p in plans if p and isinstance(p[0], str)}
    later = {s for p in plans for s in p[1:] if isinstance(s, str)}
    encoded = {}
    for at_start, group in ((True, list(firsts)), (False, list(later))):
        for text, piece in zip(group, encode_plain(tokenizer, group, at_start), strict=True):
            encoded[text, at_start] = piece
    out = []
    for plan in plans:
        ids: list[int] = []
        for k, p in enumerate(plan):
            ids.extend(encoded[p, k == 0] if isinstance(p, str) else [p])
        out.append(ids)
    return out
