"""Target-task metrics after fine-tuning: MMLU, BBH, span QA (TydiQA/SQuAD), GSM8K,
TruthfulQA MC2, and the held-out completion loss every run records.

Prompts are those of :mod:`less_lab.evalsets` (open-instruct's, appendix B, with the
answer cue ending the *user* turn), tokenized by :func:`less_lab.formatting.tokenize`,
i.e. in the training chat format with the training truncation. Every evaluator returns
one row per subtask and an ``average`` row computed as open-instruct computes it: the
macro mean over subtasks for BBH and TydiQA, the micro mean over all questions for MMLU
(``average="macro"`` is the option). Scores are percentages; losses are nats per
completion token. ``task_eval`` scores target-format rows (the few-shot validation set)
with their task's metric: what fine-tuning picks its best epoch by.

The test sets are read by :mod:`less_lab.evalsets` (span QA and GSM8K prompts are put
together from its pieces, span QA contexts cut with the model's tokenizer); the metrics
themselves are in :mod:`less_lab.metrics` and the model calls in :mod:`less_lab.inference`.

This module holds the registry (:func:`make_eval`), the held-out loss and the
validation-set task metric (:func:`task_eval`); the evaluators
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
from less_lab.data.evalsets import LETTERS, bbh_examples, mmlu_examples
from less_lab.data.formatting import tokenize
from less_lab.data.targets import TARGET_SCHEMA
from less_lab.evaluate.choice_evals import evaluate_mmlu, evaluate_truthfulqa_mc2
from less_lab.evaluate.generation_evals import (
    evaluate_bbh,
    evaluate_gsm8k,
    evaluate_squad,
    generate_column,
)
from less_lab.evaluate.inference import choice_logliks, encode_prompts, heldout_loss
from less_lab.evaluate.metrics import bbh_match, parse_bbh_answer, squad_f1, summarize

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


def target_questions(targets: pl.DataFrame) -> pl.DataFrame:
    """Target-format rows as questions: ``example_id, subtask, source, prompt`` (the first
    user turn) and ``answer`` (the last assistant turn)."""

    def turn(msgs, role: str, pick: int) -> str:
        texts = [m["content"] for m in msgs if m["role"] == role]
        return texts[pick] if texts else ""

    source = pl.col("source") if "source" in targets.columns else pl.lit("", pl.String)
    return targets.select("example_id", "subtask", source.alias("source")).with_columns(
        prompt=pl.Series([turn(m, "user", 0) for m in targets["messages"]], dtype=pl.String),
        answer=pl.Series([turn(m, "assistant", -1) for m in targets["messages"]], dtype=pl.String),
    )


def _task_scores(model, tokenizer, ex: pl.DataFrame, source: str, kw: dict) -> list[float]:
    """Per-question score in [0, 1] by the task's own metric: MMLU, the most likely letter
    (as ``evaluate_mmlu``); BBH, open-instruct's exact match of the answer parsed from a
    greedy chain of thought (512 tokens) against the one parsed from the gold; any other
    task (TydiQA, your own), SQuAD F1 of a greedy short answer (50 tokens, one line)."""
    if source == "mmlu":
        prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, kw["data_cfg"])
        letters = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LETTERS]
        lls = choice_logliks(
            model, prompts, [letters] * len(prompts), token_budget=kw["token_budget"]
        )
        pred = [LETTERS[max(range(len(ll)), key=ll.__getitem__)] for ll in lls]
        return [float(p == a.strip()) for p, a in zip(pred, ex["answer"], strict=True)]
    bbh = source == "bbh"
    ex = generate_column(
        model,
        tokenizer,
        ex,
        max_new_tokens=512 if bbh else 50,
        stop=("\n\n",) if bbh else ("\n",),
        **kw,
    )
    pairs = zip(ex["generation"], ex["answer"], strict=True)
    if bbh:
        return [float(bbh_match(parse_bbh_answer(g), parse_bbh_answer(a))) for g, a in pairs]
    return [squad_f1(g.strip(), [a.strip()]) for g, a in pairs]


def task_eval(
    targets: pl.DataFrame,
    *,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    progress: bool = False,
) -> EvalFn:
    """An ``EvalFn`` scoring target-format rows (a few-shot validation set) with their
    task's metric (``_task_scores``, chosen by each row's ``source``): one ``score`` row
    per subtask (percent) and their macro ``average``. This is the validation
    *performance* of appendix B that picks the best fine-tuning epoch."""
    questions = target_questions(targets)
    kw = {"data_cfg": data_cfg, "token_budget": token_budget, "progress": progress}

    def run(model, tokenizer) -> pl.DataFrame:
        parts = []
        for source in sorted(set(questions["source"])):
            ex = questions.filter(pl.col("source") == source)
            scores = _task_scores(model, tokenizer, ex, source, kw)
            parts.append(ex.select("subtask").with_columns(score=pl.Series(scores)))
        return summarize(pl.concat(parts), ["score"])

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
