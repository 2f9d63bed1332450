"""Evaluation sets: the test questions of MMLU, BBH, span QA (TydiQA/SQuAD) and GSM8K,
read from the layouts the paper used, and their prompts in the paper's formats.

Why a module of its own: which questions are asked, and how their prompts read, belongs
to the test set, not to scoring it. Here they can be read and checked without a model and
reused as they are (held-out loss on the same questions, ``evaluation.as_targets``);
:mod:`less_lab.evaluation` keeps the model calls and the scores.

Prompts follow the open-instruct evaluation the paper used (appendix B) with one
deliberate change: the answer cue (``Answer:``, ``A:``) ends the *user* turn, exactly as
in :mod:`less_lab.targets`, so the examples LESS selected for are formatted like the ones
the model is tested on (open-instruct appends the cue after ``<|assistant|>``). Readers
return ``EXAMPLE_SCHEMA`` frames; ``max_per_*`` keeps a seeded subsample per subtask, in
file order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from less_lab.data.pool import DataError, iter_json_lines, load_json_object
from less_lab.data.targets import mmlu_header, mmlu_question, mmlu_records

LETTERS = ("A", "B", "C", "D")
EXAMPLE_SCHEMA = {
    "example_id": pl.String,
    "subtask": pl.String,
    "prompt": pl.String,
    "answer": pl.String,
}
"""The columns every reader returns; span QA adds its list of gold answers."""


def subsample(rows: list, n: int | None, seed: int, key: str) -> list:
    """At most ``n`` rows, drawn with a seed derived from (seed, key), in file order."""
    if n is None or len(rows) <= n:
        return rows
    rng = np.random.default_rng([seed, *key.encode()])
    keep = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
    return [rows[i] for i in keep]


def question_frame(rows: list[dict], extra: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Reader rows as a frame with ``EXAMPLE_SCHEMA`` (plus ``extra`` columns), so an
    empty selection still has every column the evaluators read."""
    return pl.DataFrame(rows, schema=EXAMPLE_SCHEMA | (extra or {}))


def mmlu_examples(
    mmlu_dir: str | Path,
    *,
    k: int = 5,
    max_per_subject: int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """MMLU test questions with their k-shot prompts (first k dev rows, as open-instruct
    and :mod:`less_lab.targets` build them): ``example_id, subtask, prompt, answer``."""
    root = Path(mmlu_dir)
    files = sorted((root / "test").glob("*_test.csv"))
    if not files:
        raise DataError("no test/*_test.csv files", path=root, expected="the MMLU layout")
    rows = []
    for test in files:
        subject = test.name[: -len("_test.csv")]
        if subjects is not None and subject not in subjects:
            continue
        dev = [f for _, f in mmlu_records(root / "dev" / f"{subject}_dev.csv")[:k]] if k else []
        header = mmlu_header(subject)
        shots = "".join(f"{mmlu_question(f)} {f[5].strip()}\n\n" for f in dev)
        records = list(enumerate(f for _, f in mmlu_records(test)))
        for i, f in subsample(records, max_per_subject, seed, subject):
            rows.append(
                {
                    "example_id": f"mmlu_{subject}_test_{i}",
                    "subtask": subject,
                    "prompt": header + shots + mmlu_question(f),
                    "answer": f[5].strip(),
                }
            )
    return question_frame(rows)


def bbh_examples(
    bbh_dir: str | Path,
    *,
    max_per_task: int | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    skip_shots: bool = True,
) -> pl.DataFrame:
    """BBH test questions under their task's 3-shot CoT prompt (``bbh-three-shot.json`` +
    ``\\n\\nQ: {input}\\nA:``). ``skip_shots`` leaves out test questions that appear
    verbatim among the prompt's own exemplars (their answer is in the prompt)."""
    root = Path(bbh_dir)
    shots_file = root / "bbh-three-shot.json"
    prompts = json.loads(shots_file.read_text(encoding="utf-8"))
    rows = []
    for task in sorted(prompts):
        if tasks is not None and task not in tasks:
            continue
        test = root / "test" / f"{task}.json"
        if not test.exists():
            raise DataError(
                f"no test file for task {task!r}",
                path=test,
                expected='{"examples": [{"input", "target"}]}',
            )
        base = prompts[task].strip()
        records = list(enumerate(json.loads(test.read_text(encoding="utf-8"))["examples"]))
        if skip_shots:
            records = [(i, r) for i, r in records if f"Q: {r['input']}\nA:" not in base]
        for i, r in subsample(records, max_per_task, seed, task):
            rows.append(
                {
                    "example_id": f"bbh_{task}_test_{i}",
                    "subtask": task,
                    "prompt": f"{base}\n\nQ: {r['input']}\nA:",
                    "answer": r["target"],
                }
            )
    return question_frame(rows)


def json_records(path: Path) -> list[tuple[int, dict]]:
    """``(line, object)`` of a JSONL file, or of a JSON array (line = 1-based index)."""
    if path.read_bytes()[:1] == b"[":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for line, text in iter_json_lines(path, 8_000_000):
        if isinstance(text, DataError):
            raise text
        out.append((line, load_json_object(text, path, line)))
    return out


def squad_rows(path: Path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    try:
        for article in data["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    golds = [a["text"] for a in qa["answers"]]
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "context": para["context"],
                            "question": qa["question"],
                            "golds": golds,
                        }
                    )
    except (KeyError, TypeError) as err:
        raise DataError(
            f"not SQuAD format (missing {err})",
            path=path,
            expected='{"data":[{"paragraphs":[{"context","qas":[...]}]}]}',
        ) from None
    return rows


GSM_INSTRUCTION = "Answer the following questions.\n\n"


def gsm_shot(question: str, answer: str) -> str:
    rationale = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    final = answer.split("####")[-1].strip()
    return f"Question: {question.strip()}\nAnswer: {rationale}\nSo the answer is {final}.\n\n"
