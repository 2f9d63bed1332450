"""Target-task metrics after fine-tuning: MMLU, BBH, span QA (TydiQA/SQuAD), GSM8K,
TruthfulQA MC2, and the held-out completion loss every run records.

Prompts are those of :mod:`less_lab.evalsets` (open-instruct's, appendix B, with the
answer cue ending the *user* turn), tokenized by :func:`less_lab.formatting.tokenize`,
i.e. in the training chat format with the training truncation. Every evaluator returns
one row per subtask and an ``average`` row (the macro mean over subtasks, as the paper
reports BBH and TydiQA; with equal subtask sizes it equals open-instruct's
micro-averaged MMLU). Scores are percentages; losses are nats per completion token.

The test sets are read by :mod:`less_lab.evalsets` (span QA and GSM8K prompts are put
together here from its pieces, span QA contexts cut with the model's tokenizer); the
metrics themselves are in :mod:`less_lab.metrics` and the model calls in
:mod:`less_lab.inference`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import DataConfig
from less_lab.data.evalsets import (
    GSM_INSTRUCTION,
    LETTERS,
    bbh_examples,
    gsm_shot,
    json_records,
    mmlu_examples,
    question_frame,
    squad_rows,
    subsample,
)
from less_lab.data.formatting import tokenize
from less_lab.data.pool import DataError
from less_lab.data.targets import TARGET_SCHEMA, TYDIQA_INSTRUCTION, qa_block
from less_lab.evaluate.inference import choice_logliks, encode_prompts, generate, heldout_loss
from less_lab.evaluate.metrics import (
    bbh_match,
    gsm8k_gold,
    mc2_score,
    parse_bbh_answer,
    parse_last_number,
    squad_exact_match,
    squad_f1,
    summarize,
)

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


# --------------------------------------------------------------------------- evaluators


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
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """k-shot MMLU accuracy: the letter whose continuation ``X`` opening the assistant turn
    (the target format's completion, no leading space) is most likely."""
    ex = mmlu_examples(mmlu_dir, k=k, max_per_subject=max_per_subject, subjects=subjects, seed=seed)
    prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, data_cfg)
    letters = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LETTERS]
    lls = choice_logliks(
        model, prompts, [letters] * len(prompts), token_budget=token_budget, progress=progress
    )
    pred = [LETTERS[int(np.argmax(ll))] for ll in lls]
    ex = ex.with_columns(prediction=pl.Series(pred), logliks=pl.Series(lls))
    ex = ex.with_columns(accuracy=pl.col("prediction") == pl.col("answer"))
    return ex if return_examples else summarize(ex, ["accuracy"])


def _generative(
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
    max_new_tokens: int = 256,
    lenient: bool = False,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """3-shot chain-of-thought exact match (greedy; the answer follows the last
    "So the answer is")."""
    ex = bbh_examples(bbh_dir, max_per_task=max_per_task, tasks=tasks, seed=seed)
    ex = _generative(
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
    em = [bbh_match(p, t, lenient=lenient) for p, t in zip(pred, ex["answer"], strict=True)]
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
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """Span QA in the gold-passage setup (TydiQA GoldP or any SQuAD-format JSON): F1 and
    exact match, max over gold answers. Subtask = the id's prefix before ``-`` (TydiQA
    ids start with the language), else ``all``. ``shots``: ``tydiqa-one-shot.json`` or
    ``{subtask: [{context, question, answers}]}``; a subtask without shots is zero-shot.
    Contexts are cut to ``max_context_tokens`` as open-instruct does."""
    if isinstance(shots, (str, Path)):
        shots = json.loads(Path(shots).read_text(encoding="utf-8"))
    shots = shots or {}

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
        demo = "".join(
            f"{qa_block(cut(s['context']), s['question'])} {s['answers'][0]['text']}\n\n"
            for s in shots.get(sub, [])[:n_shot]
        )
        for r in subsample(by_sub[sub], max_per_subtask, seed, sub):
            prompt = f"{TYDIQA_INSTRUCTION}\n\n{demo}{qa_block(cut(r['context']), r['question'])}"
            rows.append(
                {
                    "example_id": r["id"],
                    "subtask": sub,
                    "prompt": prompt,
                    "answer": r["golds"][0] if r["golds"] else "",
                    "golds": r["golds"],
                }
            )
    ex = question_frame(rows, {"golds": pl.List(pl.String)})
    ex = _generative(
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
    ex = _generative(
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
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """TruthfulQA MC2: prompt ``{primer}Q: {question}\\nA:``, each choice scored as the
    continuation " {choice}"; subtask = ``category`` when present."""
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
            tokenizer(c.strip(), add_special_tokens=False)["input_ids"]
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
