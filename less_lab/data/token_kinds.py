"""What each labelled token is: answer content, an end marker, or chat-template filler.

Why: a multiple-choice target's completion is one answer token plus the end-of-sequence
token, and the EOS can carry most of the gradient (a 135M model is unsure where an answer
ends, not which letter it is). ``token_kinds`` names each position so that views can mark
it and ``content_labels`` can leave the markers out of a loss (the remedy
``gradients.pool_tokens/target_tokens=content``).

Kinds: ``prompt`` (not a label), ``eos`` (a labelled special token: EOS, ``<|im_end|>``),
``template`` (labelled whitespace-only tokens right after such a marker, e.g. a chat
template's newline after ``<|im_end|>``), ``content`` (every other label).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from less_lab.data.batching import IGNORE

KINDS = ("prompt", "content", "eos", "template")


class _Vocab:
    """Which ids are special and which decode to whitespace only (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        if tokenizer.eos_token_id is not None:
            self.special.add(int(tokenizer.eos_token_id))
        self._blank: dict[int, bool] = {}

    def blank(self, token_id: int) -> bool:
        if token_id not in self._blank:
            self._blank[token_id] = self.tokenizer.decode([token_id]).strip() == ""
        return self._blank[token_id]


def token_kinds(input_ids, labels, tokenizer: Any, vocab: _Vocab | None = None) -> np.ndarray:
    """The kind of each position of one example (see the module docstring)."""
    vocab = vocab or _Vocab(tokenizer)
    ids, labels = np.asarray(input_ids), np.asarray(labels)
    kinds = np.where(labels == IGNORE, "prompt", "content").astype(object)
    after_marker = False
    for pos in np.flatnonzero(labels != IGNORE):
        tok = int(ids[pos])
        if tok in vocab.special:
            kinds[pos], after_marker = "eos", True
        elif after_marker and vocab.blank(tok):
            kinds[pos] = "template"
        else:
            after_marker = False
    return kinds.astype(str)


def content_labels(tokenized: pl.DataFrame, tokenizer: Any) -> pl.DataFrame:
    """``tokenized`` with every non-``content`` label set to ``-100`` (the loss then
    covers the answer's own tokens only). An example with no content token left (an empty
    answer) keeps its labels, with a warning naming it, rather than losing its loss."""
    vocab = _Vocab(tokenizer)
    new_labels, kept = [], []
    for ex, ids, labels in tokenized.select("example_id", "input_ids", "labels").iter_rows():
        kinds = token_kinds(ids, labels, tokenizer, vocab)
        masked = np.where(kinds == "content", np.asarray(labels), IGNORE)
        if (masked != IGNORE).any():
            new_labels.append(masked.tolist())
        else:
            new_labels.append(list(labels))
            kept.append(ex)
    if kept:
        warnings.warn(
            f"{len(kept)} examples have no content token (only end markers): their loss "
            f"keeps every completion token, e.g. {kept[:5]}",
            stacklevel=2,
        )
    labels_col = pl.Series("labels", new_labels, dtype=tokenized.schema["labels"])
    n_content = [int((np.asarray(lab) != IGNORE).sum()) for lab in new_labels]
    return tokenized.with_columns(labels_col, pl.Series("n_loss_tokens", n_content))


def loss_labels(tokenized: pl.DataFrame, tokenizer: Any, tokens: str) -> pl.DataFrame:
    """``tokenized`` with the labels a gradient loss uses: unchanged for ``all`` (paper),
    ``content_labels`` for ``content`` (``GradientConfig.pool_tokens/target_tokens``)."""
    if tokens == "all":
        return tokenized
    if tokens == "content":
        return content_labels(tokenized, tokenizer)
    raise ValueError(f"unknown loss tokens {tokens!r}; expected all or content")
