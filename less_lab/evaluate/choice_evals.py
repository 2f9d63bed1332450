"""Evaluators that score fixed answer choices by their log-likelihood: MMLU (the most
likely letter) and TruthfulQA MC2 (the probability mass on the true answers).

Why its own module: one task family per module, the registry being ``evaluators``; these
run no generation, only ``inference.choice_logliks``. See ``evaluators`` for the prompt
format and what every evaluator returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from less_lab.config import DataConfig
from less_lab.data.evalsets import LETTERS, json_records, mmlu_examples, subsample
from less_lab.errors import DataError
from less_lab.evaluate.inference import choice_logliks, encode_prompts
from less_lab.evaluate.metrics import mc2_score, summarize

DEFAULT_DATA = DataConfig()


def evaluate_mmlu(
    model,
    tokenizer,
    mmlu_dir,
    *,
    k: int = 5,
    max_per_subject: int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    average: Literal["micro", "macro"] = "micro",
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """k-shot MMLU accuracy: the letter whose continuation ``X`` opening the assistant turn
    (the target format's completion, no leading space) is most likely. The ``average``
    row is ``micro`` (over all questions: open-instruct's ``average_acc``, the paper's
    number) or ``macro`` (mean of the per-subject accuracies)."""
    ex = mmlu_examples(mmlu_dir, k=k, max_per_subject=max_per_subject, subjects=subjects, seed=seed)
    prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, data_cfg)
    letters = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LETTERS]
    lls = choice_logliks(
        model, prompts, [letters] * len(prompts), token_budget=token_budget, progress=progress
    )
    pred = [LETTERS[int(np.argmax(ll))] for ll in lls]
    ex = ex.with_columns(prediction=pl.Series(pred), logliks=pl.Series(lls))
    ex = ex.with_columns(accuracy=pl.col("prediction") == pl.col("answer"))
    return ex if return_examples else summarize(ex, ["accuracy"], average=average)


def evaluate_truthfulqa_mc2(
    model,
    tokenizer,
    path,
    *,
    primer: str = "",
    max_examples: int | None = None,
    seed: int = 0,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    leading_space: bool = False,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """TruthfulQA MC2: prompt ``{primer}Q: {question}\\nA:``, each choice scored by the
    sum of its token log-probabilities as the completion opening the assistant turn,
    ``{choice}`` without a leading space (the target format's convention: the answer cue
    ends the user turn). open-instruct scores ``prompt + " " + choice`` after ``A:`` (its
    ``score_completions`` adds a space when the prompt does not end in one), i.e. with a
    leading space: ``leading_space=True`` does that. Subtask = ``category`` if present."""
    path = Path(path)
    rows = []
    for line, r in json_records(path):
        t = r.get("mc2_targets") or {}
        if (
            not isinstance(r.get("question"), str)
            or len(t.get("choices", [])) != len(t.get("labels", [None]))
            or not any(t.get("labels", []))
        ):
            raise DataError(
                "needs 'question' and mc2_targets {choices, labels} with a true label",
                path=path,
                line=line,
            )
        rows.append((line, r))
    rows = subsample(rows, max_examples, seed, "truthfulqa")
    texts = [f"{primer}Q: {r['question']}\nA:" for _, r in rows]
    prompts = encode_prompts(texts, tokenizer, data_cfg)
    choices = [
        [
            tokenizer((" " if leading_space else "") + c.strip(), add_special_tokens=False)[
                "input_ids"
            ]
            for c in r["mc2_targets"]["choices"]
        ]
        for _, r in rows
    ]
    lls = choice_logliks(model, prompts, choices, token_budget=token_budget, progress=progress)
    mc2 = [mc2_score(ll, r["mc2_targets"]["labels"]) for ll, (_, r) in zip(lls, rows, strict=True)]
    ex = pl.DataFrame(
        {
            "example_id": [f"truthfulqa_{n}" for n, _ in rows],
            "subtask": [str(r.get("category", "truthfulqa")) for _, r in rows],
            "mc2": mc2,
        }
    )
    return ex if return_examples else summarize(ex, ["mc2"])
