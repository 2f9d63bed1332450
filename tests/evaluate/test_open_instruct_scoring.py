"""Every evaluator against a hand-built case whose expected number follows open-instruct's
own scoring (eval/bbh, eval/mmlu, eval/tydiqa, eval/truthfulqa run_eval.py) line by line;
the model's generations and choice log-likelihoods are scripted, so only the prompt,
parsing, comparison and averaging are under test."""

from __future__ import annotations

import json

import polars as pl
import pytest

from less_lab.data import tydiqa
from less_lab.data.targets import TARGET_SCHEMA
from less_lab.evaluate import evaluators as ev
from less_lab.evaluate import generation_evals

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class ScriptedGenerate:
    """Stands in for ``inference.generate``: the reply to each prompt is looked up by a
    substring of the decoded prompt; records every call's keyword arguments."""

    def __init__(self, replies: dict[str, str]):
        self.replies, self.calls = replies, []

    def __call__(self, model, tokenizer, prompts, **kw):
        self.calls.append(kw)
        out = []
        for ids in prompts:
            text = tokenizer.decode(ids)
            (reply,) = [r for key, r in self.replies.items() if key in text]
            out.append(reply)
        return out


def _write_bbh(root, examples):
    (root / "test").mkdir(parents=True, exist_ok=True)
    prompt = "Do it.\n\nQ: s1?\nA: So the answer is (A).\n\nQ: s2?\nA: So the answer is (B)."
    (root / "bbh-three-shot.json").write_text(json.dumps({"task": prompt + "\n\nQ: s3?\nA: x"}))
    (root / "test" / "task.json").write_text(json.dumps({"examples": examples}))


def test_bbh_as_open_instruct_scores_it(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    cases = [  # (question, generation, target, right by open-instruct's logic)
        ("q1", "Step. So the answer is (a). Then So the answer is (B).", "(A)", True),
        ("q2", "So the answer is 3.5.", "3.5", False),  # (.*?)\. stops at the first period
        ("q3", "  No marker here\n\nQ: next", "no marker here", True),  # first block
        ("q4", "So the answer is valid", "valid", False),  # no period: the whole output
        ("q5", "Hmm. So the answer is Yes, sure.", "yes sure", True),  # punctuation, case
        ("q6", "So the answer is ] ).", "]  )", False),  # whitespace is compared as is
    ]
    _write_bbh(tmp_path, [{"input": f"{q}?", "target": t} for q, _, t, _ in cases])
    gen = ScriptedGenerate({f"Q: {q}?": g for q, g, _, _ in cases})
    monkeypatch.setattr(generation_evals, "generate", gen)
    out = ev.evaluate_bbh(tiny_model, tiny_tokenizer, tmp_path, progress=False,
                          return_examples=True)  # fmt: skip
    assert out["exact_match"].to_list() == [c[3] for c in cases]
    assert out["prediction"].to_list() == [
        "(a)", "3", "No marker here", "So the answer is valid", "Yes, sure", "] )"
    ]  # fmt: skip
    assert gen.calls[0]["max_new_tokens"] == 512  # open-instruct's budget
    summary = ev.evaluate_bbh(tiny_model, tiny_tokenizer, tmp_path, progress=False)
    assert summary["exact_match"].to_list() == pytest.approx([50.0, 50.0])
    strict = ev.evaluate_bbh(tiny_model, tiny_tokenizer, tmp_path, progress=False, strict=True)
    assert strict["exact_match"][-1] == pytest.approx(100 / 6)  # only q6 (whitespace) passes


def test_tydiqa_prompt_is_open_instructs_per_language():
    shots = [("Kappale yksi.", "Mikä?", "Yksi")]
    got = tydiqa.tydiqa_prompt("finnish", "Koira juoksee.", "Kuka juoksee?", shots)
    # open-instruct: prompt + "\n\n" + "\n\n".join(demos) + "\n\n" + p c \n q x \n + a_template
    assert got == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
        "Kappale: Kappale yksi.\nKysymys: Mikä?\nVastaus: Yksi\n\n"
        "Kappale: Koira juoksee.\nKysymys: Kuka juoksee?\nVastaus:"
    )
    assert tydiqa.tydiqa_prompt("swahili", "c", "q").startswith(
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.\n\nKifungu: c"
    )
    english = tydiqa.tydiqa_prompt("finnish", "c", "q", per_language=False)
    assert english.endswith("\n\nPassage: c\nQuestion: q\nAnswer:")
    assert tydiqa.tydiqa_prompt("all", "c", "q") == english  # SQuAD sets: English
    assert sorted(tydiqa.TYDIQA_TEMPLATES) == sorted(
        ["english", "arabic", "bengali", "finnish", "indonesian", "korean", "russian",
         "swahili", "telugu"]
    )  # fmt: skip


def test_tydiqa_f1_macro_over_languages(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    qas = {  # id -> (question, golds, generation); squad's max-over-golds F1 and EM
        "english-1": ("Who reads?", ["the cat"], "The cat"),  # F1 1, EM 1
        "english-2": ("What?", ["a red book"], "red book now"),  # P 2/3, R 1: F1 0.8
        "finnish-1": ("Kuka?", ["ystäväni"], "joku"),  # 0
    }
    data = {"data": [{"paragraphs": [{"context": "Text.", "qas": [
        {"id": i, "question": q, "answers": [{"text": g} for g in golds]}
        for i, (q, golds, _) in qas.items()]}]}]}  # fmt: skip
    (tmp_path / "dev.json").write_text(json.dumps(data))
    gen = ScriptedGenerate({f"{q}\n": g for q, _, g in qas.values()})
    monkeypatch.setattr(generation_evals, "generate", gen)
    out = generation_evals.evaluate_tydiqa(
        tiny_model, tiny_tokenizer, tmp_path / "dev.json", progress=False
    )
    assert out["subtask"].to_list() == ["english", "finnish", "average"]
    assert out["f1"].to_list() == pytest.approx([90.0, 0.0, 45.0])  # per language, then mean
    assert out["exact_match"].to_list() == pytest.approx([50.0, 0.0, 25.0])
    assert gen.calls[0]["max_new_tokens"] == 50 and gen.calls[0]["stop"] == ("\n",)


def _target(example_id, source, subtask, prompt, answer):
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"example_id": example_id, "source": source, "subtask": subtask,
            "messages": msgs, "raw": "{}"}  # fmt: skip


def test_task_eval_scores_validation_rows_by_their_task(tiny_model, tiny_tokenizer, monkeypatch):
    targets = pl.DataFrame(
        [
            _target("m1", "mmlu", "algebra", "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer:", "B"),
            _target("m2", "mmlu", "algebra", "Q2?\nA. a\nB. b\nC. c\nD. d\nAnswer:", "C"),
            _target("b1", "bbh", "dates", "Q: d1?\nA:", " Think. So the answer is (A)."),
            _target("b2", "bbh", "dates", "Q: d2?\nA:", " So the answer is False."),
            _target("t1", "tydiqa", "english", "Question: Who?\nAnswer:", "the cat"),
            _target("t2", "tydiqa", "finnish", "Kysymys: Kuka?\nVastaus:", "ystäväni"),
        ],
        schema=TARGET_SCHEMA,
        orient="row",
    )
    logliks = []

    def scripted_logliks(model, prompts, choices, **kw):
        logliks.append(len(prompts))
        return [[-2.0, -1.0, -3.0, -4.0]] * len(prompts)  # always "B"

    gen = ScriptedGenerate({"d1?": "So the answer is (a).", "d2?": "So the answer is True.",
                            "Who?": "The cat sat", "Kuka?": "ystäväni"})  # fmt: skip
    monkeypatch.setattr(ev, "choice_logliks", scripted_logliks)
    monkeypatch.setattr(generation_evals, "generate", gen)
    out = ev.task_eval(targets)(tiny_model, tiny_tokenizer)
    assert out["subtask"].to_list() == ["algebra", "dates", "english", "finnish", "average"]
    # algebra 1 of 2; dates: "(a)" matches "(A)", "True" not "False"; english F1 2/3
    want = [50.0, 50.0, 200 / 3, 100.0]
    assert out["score"].to_list() == pytest.approx([*want, sum(want) / 4])
    assert logliks == [2]
    by_len = {c["max_new_tokens"] for c in gen.calls}
    assert by_len == {512, 50}  # BBH: chain of thought; others: a short answer
