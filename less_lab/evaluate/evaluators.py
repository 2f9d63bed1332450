"""Target-task metrics after fine-tuning: MMLU, BBH, span QA (TydiQA/SQuAD), GSM8K,
TruthfulQA MC2, and the held-out completion loss every run records.

Prompts are those of :mod:`less_lab.evalsets` (open-instruct's, appendix B, with the
answer cue ending the *user* turn), tokenized by :func:`less_lab.formatting.tokenize`,
i.e. in the training chat format with the training truncation. Every evaluator returns
one row per subtask and an ``average`` row (the macro mean over subtasks, as the paper
reports BBH and TydiQA; with equal subtask sizes it equals open-instruct's
micro-averaged MMLU). Scores are percentages; losses are nats per completion token.

The test sets are read by :mod:`less_lab.evalsets` (span QA and GSM8K prompts are put
together from its pieces, span QA contexts cut with the model's tokenizer); the metrics
themselves are in :mod:`less_lab.metrics` and the model calls in :mod:`less_lab.inference`.

This module holds the registry (:func:`make_eval`) and the held-out loss; the evaluators
are grouped by how they score: ``choice_evals`` (log-likelihood of fixed choices: MMLU,
TruthfulQA MC2) and ``generation_evals`` (greedy generation: BBH, span QA, GSM8K).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from less_lab.config import DataConfig
from less_lab.data.evalsets import bbh_examples, mmlu_examples
from less_lab.data.formatting import tokenize
from less_lab.data.targets import TARGET_SCHEMA
from less_lab.evaluate.choice_evals import evaluate_mmlu, evaluate_truthfulqa_mc2
from less_lab.evaluate.generation_evals import evaluate_bbh, evaluate_gsm8k, evaluate_squad
from less_lab.evaluate.inference import heldout_loss

EvalFn = Callable[[Any, Any], pl.DataFrame]
"""``(model, tokenizer) -> summary frame``: what fine-tuning and ``compare`` call."""
DEFAULT_DATA = DataConfig()


def as_targets(examples: pl.DataFrame, answer_prefix: str = "") -> pl.DataFrame:
    """Test questions as target-format rows (user prompt, assistant answer) so held-out
    loss is measured on exactly the evaluation prompts."""
    msgs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": answer_prefix + a}]
        for p, a in zip(examples["prompt"], examples["answer"], strict=True)
    ]
    raw = [
        json.dumps({"id": i, "subtask": s, "messages": m}, ensure_ascii=False)
        for i, s, m in zip(examples["example_id"], examples["subtask"], msgs, strict=True)
    ]
    return pl.DataFrame(
        {
            "example_id": examples["example_id"],
            "source": ["test"] * len(raw),
            "subtask": examples["subtask"],
            "messages": msgs,
            "raw": raw,
        },
        schema=TARGET_SCHEMA,
    )


def loss_eval(
    targets: pl.DataFrame,
    *,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    progress: bool = False,
) -> EvalFn:
    """An ``EvalFn`` giving the held-out loss of target-format rows (tokenized once per
    tokenizer, then reused every epoch)."""
    cache: dict[int, pl.DataFrame] = {}

    def run(model, tokenizer) -> pl.DataFrame:
        if id(tokenizer) not in cache:
            cache[id(tokenizer)] = tokenize(targets, tokenizer, data_cfg)[0]
        return heldout_loss(
            model,
            cache[id(tokenizer)],
            token_budget,
            pad_id=tokenizer.pad_token_id or 0,
            progress=progress,
        )

    return run


EVALS = {
    "mmlu": evaluate_mmlu,
    "bbh": evaluate_bbh,
    "squad": evaluate_squad,
    "tydiqa": evaluate_squad,
    "gsm8k": evaluate_gsm8k,
    "truthfulqa": evaluate_truthfulqa_mc2,
}


def make_eval(
    kind: str,
    path: str | Path,
    *,
    max_per_subtask: int | None = None,
    data_cfg: DataConfig = DEFAULT_DATA,
    progress: bool = False,
    **kw,
) -> EvalFn:
    """An ``EvalFn`` by name: ``mmlu``, ``bbh``, ``squad``/``tydiqa``, ``gsm8k``,
    ``truthfulqa`` (accuracy-type metrics) or ``mmlu-loss``/``bbh-loss`` (held-out loss
    on the same test questions in target format) or ``loss`` (any target layout)."""
    sub = {
        "mmlu": "max_per_subject",
        "mmlu-loss": "max_per_subject",
        "bbh": "max_per_task",
        "bbh-loss": "max_per_task",
        "squad": "max_per_subtask",
        "tydiqa": "max_per_subtask",
        "gsm8k": "max_examples",
        "truthfulqa": "max_examples",
    }
    if max_per_subtask is not None and kind in sub:
        kw[sub[kind]] = max_per_subtask
    if kind in ("mmlu-loss", "bbh-loss"):
        reader = mmlu_examples if kind == "mmlu-loss" else bbh_examples
        return loss_eval(as_targets(reader(path, **kw)), data_cfg=data_cfg, progress=progress)
    if kind == "loss":
        from less_lab.data.targets import read_targets

        return loss_eval(read_targets(path), data_cfg=data_cfg, progress=progress)
    if kind not in EVALS:
        raise ValueError(
            f"unknown evaluation {kind!r}; expected one of "
            f"{sorted([*EVALS, 'mmlu-loss', 'bbh-loss', 'loss'])}"
        )
    fn = EVALS[kind]
    return lambda model, tokenizer: fn(
        model, tokenizer, path, data_cfg=data_cfg, progress=progress, **kw
    )
