"""What every baseline shares: the text and words of an example, the target subtasks and
the long score frame.

Why its own module: each baseline family (``baseline_bm25``, ``baseline_dsir``,
``baseline_rds``) and the registry in ``baselines`` need these.

Text for the lexical baselines (BM25, DSIR) is the example's message contents joined by
newlines (no chat markers), lower-cased and split into words: maximal runs of Unicode
letters, combining marks and digits, so Bengali or Telugu words keep their vowel signs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from less_lab.core.scoring import long_frame

Tokenizer = Callable[[str], list[str]]


class _WordChars(dict):
    """``str.translate`` table built lazily: letters, marks and digits stay, anything else
    becomes a space. Caching per code point keeps it C-speed after the first sighting."""

    def __missing__(self, code: int) -> int:
        keep = unicodedata.category(chr(code))[0] in "LMN"
        self[code] = value = code if keep else 32
        return value


_WORD_CHARS = _WordChars()


def word_tokens(text: str) -> list[str]:
    """Default tokenizer: lower-cased runs of letters, combining marks and digits."""
    return text.translate(_WORD_CHARS).lower().split()


def example_text(messages: Sequence[dict[str, str]]) -> str:
    """All message contents of an example, joined by newlines (prompt and completion)."""
    return "\n".join(m["content"] for m in messages)


def frame_texts(frame: pl.DataFrame) -> list[str]:
    """``example_text`` of every row of a pool or target frame."""
    return [example_text(m) for m in frame["messages"].to_list()]


def target_subtasks(targets: pl.DataFrame) -> list[str]:
    """The sorted distinct subtasks of the targets: the columns every baseline scores."""
    if "subtask" not in targets.columns or targets.height == 0:
        raise ValueError("targets must be a non-empty frame with a 'subtask' column")
    return sorted(targets["subtask"].unique().to_list())


def score_frame(matrix: np.ndarray, subtasks: list[str], pool: pl.DataFrame) -> pl.DataFrame:
    """The long score frame (``scoring.long_frame``) of a (pool rows, subtasks) matrix."""
    ids = pool["example_id"].to_list()
    sources = None
    if "source" in pool.columns:
        sources = dict(zip(ids, pool["source"].to_list(), strict=True))
    return long_frame(np.asarray(matrix, dtype=np.float64), subtasks, ids, sources)
