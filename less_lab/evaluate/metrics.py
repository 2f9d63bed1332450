"""The pure text and number metrics behind every evaluator: SQuAD exact match and F1, BBH
answer parsing and matching (open-instruct's), GSM8K numbers, TruthfulQA MC2, and the
per-subtask summary (macro or micro average).

Why apart from the model calls: these decide what counts as a right answer, so they are
hand-checked on edge cases (articles, punctuation, "1,234.5", log-space MC2) without a
model, and a change to one is visible on its own. Scores are percentages (``PERCENT``);
losses are nats per completion token.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl

PERCENT = ("accuracy", "exact_match", "f1", "mc2", "score")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the,
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # SQuAD v2 convention; v1 gives 0 even when both are empty
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-overlap F1 against the best-matching gold answer."""
    return max((_f1(prediction, g) for g in golds), default=0.0)


_BBH_ANSWER = re.compile(r"So the answer is (.*?)\.")


def parse_bbh_answer(generation: str) -> str:
    """The answer of a BBH chain of thought, as open-instruct (and the LESS copy of its
    ``eval/bbh/run_eval.py``) extracts it: ``re.search(r"So the answer is (.*?)\\.")``,
    i.e. the FIRST "So the answer is" followed, on the same line, by a period, and the
    text up to that first period, stripped; without such a match, the first
    blank-line-separated block of the stripped generation, stripped."""
    found = _BBH_ANSWER.search(generation)
    if found:
        return found.group(1).strip()
    return generation.strip().split("\n\n")[0].strip()


def exact_match_open_instruct(prediction: str, target: str) -> bool:
    """HF ``evaluate``'s ``exact_match`` with ``ignore_case=True, ignore_punctuation=True``
    (open-instruct's BBH score): lowercase both, delete ``string.punctuation``, compare.
    Whitespace is neither stripped nor collapsed."""
    drop = str.maketrans("", "", string.punctuation)
    return prediction.lower().translate(drop) == target.lower().translate(drop)


def bbh_match(prediction: str, target: str, *, strict: bool = False) -> bool:
    """Whether a parsed BBH answer is right. Default: open-instruct's comparison
    (``exact_match_open_instruct``: case and punctuation ignored, so "a" matches "(A)");
    ``strict``: exact string equality after collapsing whitespace."""
    if strict:
        return " ".join(prediction.split()) == " ".join(target.split())
    return exact_match_open_instruct(prediction, target)


_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def parse_last_number(text: str) -> float | None:
    """The last number in ``text`` ("1,234.5" -> 1234.5, "-3" -> -3), or None."""
    found = [m.replace(",", "") for m in _NUMBER.findall(text)]
    found = [m for m in found if m not in ("-", "", ".")]
    return float(found[-1]) if found else None


def gsm8k_gold(answer: str) -> float:
    """The number after ``####`` in a GSM8K answer."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####': {answer[-60:]!r}")
    value = parse_last_number(answer.split("####")[-1])
    if value is None:
        raise ValueError(f"GSM8K answer has no number after '####': {answer[-60:]!r}")
    return value


def mc2_score(logliks: Sequence[float], labels: Sequence[int]) -> float:
    """TruthfulQA MC2: probability mass of the true answers, normalised over all answers
    (sequence probabilities exp(sum log p), combined in log space for stability)."""
    ll, lab = np.asarray(logliks, dtype=np.float64), np.asarray(labels, dtype=bool)
    if ll.shape != lab.shape or not lab.any():
        raise ValueError("mc2 needs one label per choice and at least one true answer")
    total = np.logaddexp.reduce(ll)
    return float(np.exp(np.logaddexp.reduce(ll[lab]) - total))


def summarize(
    examples: pl.DataFrame,
    metrics: Sequence[str],
    by: str = "subtask",
    *,
    average: Literal["macro", "micro"] = "macro",
) -> pl.DataFrame:
    """Per-subtask means (``PERCENT`` metrics x100) with ``n``, then an ``average`` row:
    ``macro``, the mean over subtasks (the paper's BBH and TydiQA numbers, as
    open-instruct computes them); ``micro``, the mean over all examples (open-instruct's
    MMLU ``average_acc``: ``np.mean(np.concatenate(all_cors))``)."""
    scale = [pl.col(m).cast(pl.Float64).mean() * (100 if m in PERCENT else 1) for m in metrics]
    rows = examples.group_by(by).agg(pl.len().alias("n"), *scale).sort(by)
    rows = rows.rename({by: "subtask"}).with_columns(pl.col("n").cast(pl.Int64))
    if average == "micro":
        avg = examples.select(
            pl.lit("average").alias("subtask"), pl.len().cast(pl.Int64).alias("n"), *scale
        )
    else:
        avg = rows.select(
            pl.lit("average").alias("subtask"),
            pl.col("n").sum(),
            *[pl.col(m).mean() for m in metrics],
        )
    return pl.concat([rows, avg.cast(rows.schema)])
