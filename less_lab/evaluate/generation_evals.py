"""Evaluators that generate an answer greedily and match it: BBH (chain of thought), span
QA (TydiQA GoldP or any SQuAD-format JSON) and GSM8K.

Why its own module: one task family per module, the registry being ``evaluators``; these
all go through ``inference.generate`` and differ in how prompts are put together and
answers parsed. See ``evaluators`` for the prompt format and what every evaluator returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from less_lab.config import DataConfig
from less_lab.data.evalsets import (
    GSM_INSTRUCTION,
    bbh_examples,
    gsm_shot,
    json_records,
    question_frame,
    squad_rows,
    subsample,
)
from less_lab.data.tydiqa import tydiqa_prompt
from less_lab.errors import DataError
from less_lab.evaluate.inference import encode_prompts, generate
from less_lab.evaluate.metrics import (
    bbh_match,
    gsm8k_gold,
    parse_bbh_answer,
    parse_last_number,
    squad_exact_match,
    squad_f1,
    summarize,
)

DEFAULT_DATA = DataConfig()


def generate_column(
    model,
    tokenizer,
    ex: pl.DataFrame,
    *,
    max_new_tokens: int,
    stop: Sequence[str],
    data_cfg: DataConfig,
    token_budget: int,
    progress: bool,
) -> pl.DataFrame:
    """``ex`` with a ``generation`` column: the greedy continuation of each ``prompt``."""
    prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, data_cfg)
    text = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        stop=stop,
        token_budget=token_budget,
        progress=progress,
    )
    return ex.with_columns(generation=pl.Series(text, dtype=pl.String))


def evaluate_bbh(
    model,
    tokenizer,
    bbh_dir,
    *,
    max_per_task: int | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    max_new_tokens: int = 512,
    strict: bool = False,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """3-shot chain-of-thought exact match as open-instruct scores it: greedy, up to 512
    new tokens, cut at a blank line; the answer parsed by ``metrics.parse_bbh_answer``
    (the text between the first "So the answer is" and the next period) and compared
    ignoring case and punctuation (``strict``: exact, whitespace collapsed)."""
    ex = bbh_examples(bbh_dir, max_per_task=max_per_task, tasks=tasks, seed=seed)
    ex = generate_column(
        model,
        tokenizer,
        ex,
        max_new_tokens=max_new_tokens,
        stop=("\n\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [parse_bbh_answer(g) for g in ex["generation"]]
    em = [bbh_match(p, t, strict=strict) for p, t in zip(pred, ex["answer"], strict=True)]
    ex = ex.with_columns(prediction=pl.Series(pred, dtype=pl.String), exact_match=pl.Series(em))
    return ex if return_examples else summarize(ex, ["exact_match"])


def evaluate_squad(
    model,
    tokenizer,
    path,
    *,
    shots: str | Path | dict | None = None,
    n_shot: int = 1,
    max_per_subtask: int | None = None,
    seed: int = 0,
    max_context_tokens: int | None = 512,
    max_new_tokens: int = 50,
    per_language: bool = True,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """Span QA in the gold-passage setup (TydiQA GoldP or any SQuAD-format JSON): F1 and
    exact match, max over gold answers. Subtask = the id's prefix before ``-`` (TydiQA
    ids start with the language), else ``all``. ``shots``: ``tydiqa-one-shot.json`` or
    ``{subtask: [{context, question, answers}]}``; a subtask without shots is zero-shot.
    Contexts are cut to ``max_context_tokens`` as open-instruct does; each language gets
    open-instruct's template in that language (``per_language=False``: English for all)."""
    if isinstance(shots, (str, Path)):
        shots = json.loads(Path(shots).read_text(encoding="utf-8"))
    shots = shots or {}
    ex = squad_examples(
        tokenizer, path, shots, n_shot, max_per_subtask, seed, max_context_tokens, per_language
    )
    ex = generate_column(
        model,
        tokenizer,
        ex,
        max_new_tokens=max_new_tokens,
        stop=("\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [g.strip() for g in ex["generation"]]
    golds = ex["golds"].to_list()
    ex = ex.with_columns(
        prediction=pl.Series(pred, dtype=pl.String),
        f1=pl.Series([squad_f1(p, g) for p, g in zip(pred, golds, strict=True)]),
        exact_match=pl.Series([squad_exact_match(p, g) for p, g in zip(pred, golds, strict=True)]),
    )
    return ex if return_examples else summarize(ex, ["f1", "exact_match"])


def squad_examples(
    tokenizer,
    path,
    shots: dict[str, list[dict[str, Any]]],
    n_shot: int,
    max_per_subtask: int | None,
    seed: int,
    max_context_tokens: int | None,
    per_language: bool = True,
) -> pl.DataFrame:
    """The span QA questions (``example_id, subtask, prompt, answer, golds``) in
    open-instruct's prompt (``data.tydiqa.tydiqa_prompt``: the subtask language's template,
    up to ``n_shot`` shots of the subtask, then the passage and question), every passage
    cut to ``max_context_tokens`` tokens."""

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_context_tokens is None or len(ids) <= max_context_tokens:
            return text
        return tokenizer.decode(ids[:max_context_tokens])

    by_sub: dict[str, list] = {}
    for r in squad_rows(Path(path)):
        by_sub.setdefault(r["id"].split("-")[0] if "-" in r["id"] else "all", []).append(r)
    rows = []
    for sub in sorted(by_sub):
        demo = [
            (cut(s["context"]), s["question"], s["answers"][0]["text"])
            for s in shots.get(sub, [])[:n_shot]
        ]
        for r in subsample(by_sub[sub], max_per_subtask, seed, sub):
            prompt = tydiqa_prompt(
                sub, cut(r["context"]), r["question"], demo, per_language=per_language
            )
            rows.append(
                {
                    "example_id": r["id"],
                    "subtask": sub,
                    "prompt": prompt,
                    "answer": r["golds"][0] if r["golds"] else "",
                    "golds": r["golds"],
                }
            )
    return question_frame(rows, {"golds": pl.List(pl.String)})


def evaluate_tydiqa(model, tokenizer, dev_json, *, shots_json=None, **kw) -> pl.DataFrame:
    """TydiQA GoldP 1-shot F1 (shots from the LESS ``tydiqa-one-shot.json``)."""
    return evaluate_squad(model, tokenizer, dev_json, shots=shots_json, n_shot=1, **kw)


def evaluate_gsm8k(
    model,
    tokenizer,
    path,
    *,
    shots_path=None,
    n_shot: int = 8,
    max_examples: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """GSM8K n-shot chain-of-thought exact match on the last number generated. Shots are
    the first ``n_shot`` records of ``shots_path`` (e.g. the train split), else of
    ``path`` itself, which are then not evaluated."""
    path = Path(path)
    recs = []
    for line, r in json_records(path):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise DataError("needs 'question' and 'answer' strings", path=path, line=line)
        recs.append(r)
    shot_recs = [r for _, r in json_records(Path(shots_path))] if shots_path else recs
    demo = "".join(gsm_shot(r["question"], r["answer"]) for r in shot_recs[:n_shot])
    if not shots_path:
        recs = recs[n_shot:]
    recs = subsample(list(enumerate(recs)), max_examples, seed, "gsm8k")
    rows = [
        {
            "example_id": f"gsm8k_{i}",
            "subtask": "gsm8k",
            "prompt": f"{GSM_INSTRUCTION}{demo}Question: {r['question'].strip()}\nAnswer:",
            "answer": repr(gsm8k_gold(r["answer"])),
        }
        for i, r in recs
    ]
    ex = generate_column(
        model,
        tokenizer,
        question_frame(rows),
        max_new_tokens=max_new_tokens,
        stop=("\n\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [parse_last_number(g) for g in ex["generation"]]
    em = [
        p is not None and math.isclose(p, float(a), abs_tol=1e-6)
        for p, a in zip(pred, ex["answer"], strict=True)
    ]
    ex = ex.with_columns(prediction=pl.Series(pred, dtype=pl.Float64), exact_match=pl.Series(em))
    return ex if return_examples else summarize(ex, ["exact_match"])
