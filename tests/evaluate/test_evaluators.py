"""Evaluation: hand-checked metric edge cases, and every model-based metric compared with
its plain definition on the tiny model (full logits, one sequence at a time)."""

from __future__ import annotations

import copy
import csv
import json
import math

import polars as pl
import pytest
import torch

from less_lab.config import DataConfig
from less_lab.data import evalsets
from less_lab.data.formatting import tokenize
from less_lab.data.targets import TYDIQA_INSTRUCTION
from less_lab.errors import DataError
from less_lab.evaluate import evaluators as ev
from less_lab.evaluate import inference, metrics
from less_lab.model.tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

# --------------------------------------------------------------------------- pure metrics


@pytest.mark.parametrize(
    ("pred", "golds", "em", "f1"),
    [
        ("The Cat!", ["cat"], 1.0, 1.0),  # case, article, punctuation
        ("U.S.A.", ["usa"], 1.0, 1.0),  # punctuation inside a word
        ("theory", ["the ory"], 0.0, 0.0),  # 'the' is removed only as a word
        ("an apple", ["apple"], 1.0, 1.0),
        ("", ["cat"], 0.0, 0.0),
        ("cat", [""], 0.0, 0.0),
        ("", [""], 1.0, 1.0),
        ("the", ["a"], 1.0, 1.0),  # both normalise to empty: SQuAD v2 convention
        ("the big red dog", ["red dog barks"], 0.0, 2 / 3),  # P = R = 2/3
        ("dog dog", ["dog"], 0.0, 2 / 3),  # counts clip: P = 1/2, R = 1
        ("Paris", ["London", "Paris, France"], 0.0, 2 / 3),  # best gold: P = 1, R = 1/2
        ("Paris", ["London", "paris"], 1.0, 1.0),
        ("Paris", [], 0.0, 0.0),
    ],
)
def test_squad_em_and_f1(pred, golds, em, f1):
    assert metrics.squad_exact_match(pred, golds) == em
    assert metrics.squad_f1(pred, golds) == pytest.approx(f1)


def test_normalize_answer():
    assert metrics.normalize_answer("  The  Quick,   brown FOX. ") == "quick brown fox"
    assert metrics.normalize_answer("A an THE") == ""


@pytest.mark.parametrize(
    ("text", "answer"),
    [  # open-instruct: re.search(r"So the answer is (.*?)\.", output), else first block
        ("Let's think step by step. 1 + 1 = 2. So the answer is (B).", "(B)"),
        ("So the answer is (A). Wait, no. So the answer is (C).", "(A)"),  # FIRST marker
        ("So the answer is True.\n\nQ: next?\nA: So the answer is False.", "True"),
        ("So the answer is 12.\nThen more text", "12"),
        ("So the answer is  ] )  . ", "] )"),
        ("So the answer is 3.5.", "3"),  # up to the first period
        ("So the answer is (A)\nSo the answer is (B).", "(B)"),  # no period on the line
        ("So the answer is valid", "So the answer is valid"),  # no period: no match
        ("valid", "valid"),  # no marker: the whole first block
        ("  -42.  \n\nQ: x", "-42."),  # the fallback keeps the period
        ("So the answer is apple banana cherry.", "apple banana cherry"),
        ("", ""),
    ],
)
def test_parse_bbh_answer(text, answer):
    assert metrics.parse_bbh_answer(text) == answer


def test_bbh_match_open_instruct_and_strict():
    # evaluate's exact_match(ignore_case=True, ignore_punctuation=True): no whitespace fix
    assert metrics.bbh_match("(A)", "(A)")
    assert metrics.bbh_match("A", "(A)") and metrics.bbh_match("true", "True")
    assert not metrics.bbh_match("]  )", "] )")  # "  " != " " once punctuation is gone
    assert not metrics.bbh_match(" valid", "valid")
    assert not metrics.bbh_match("A", "(A)", strict=True)
    assert not metrics.bbh_match("true", "True", strict=True)
    assert metrics.bbh_match("]  )", "] )", strict=True)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("So the answer is 1,234.", 1234.0),
        ("It is -5 degrees", -5.0),
        ("costs $3.50 each", 3.5),
        ("2 apples and 3 pears", 3.0),
        ("no numbers here", None),
        ("answer: .5", 0.5),
        ("", None),
    ],
)
def test_parse_last_number(text, value):
    assert metrics.parse_last_number(text) == value


def test_gsm8k_gold():
    assert metrics.gsm8k_gold("She has 3 + 4 = <<3+4=7>>7.\n#### 1,000") == 1000.0
    assert metrics.gsm8k_gold("x\n#### -3") == -3.0
    with pytest.raises(ValueError, match="####"):
        metrics.gsm8k_gold("7")


def test_mc2_score_constructed_probabilities():
    log = math.log
    assert metrics.mc2_score([log(0.5), log(0.3), log(0.2)], [1, 0, 1]) == pytest.approx(0.7)
    assert metrics.mc2_score([log(0.1), log(0.1)], [1, 0]) == pytest.approx(0.5)  # unnormalised
    assert metrics.mc2_score([log(0.2), log(0.6)], [0, 1]) == pytest.approx(0.75)
    # huge negative log-likelihoods must not underflow to 0/0
    assert metrics.mc2_score([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))
    with pytest.raises(ValueError):
        metrics.mc2_score([0.0, 0.0], [0, 0])


def test_summarize_macro_average_and_percent():
    ex = pl.DataFrame({"subtask": ["b", "a", "a", "a", "b"],
                       "accuracy": [True, True, False, False, False],
                       "loss": [1.0, 2.0, 3.0, 4.0, 5.0]})  # fmt: skip
    out = metrics.summarize(ex, ["accuracy", "loss"])
    assert out["subtask"].to_list() == ["a", "b", "average"]
    assert out["n"].to_list() == [3, 2, 5]
    assert out["accuracy"].to_list() == pytest.approx([100 / 3, 50.0, (100 / 3 + 50) / 2])
    assert out["loss"].to_list() == pytest.approx([3.0, 3.0, 3.0])
    micro = metrics.summarize(ex, ["accuracy", "loss"], average="micro")
    assert micro["accuracy"].to_list() == pytest.approx([100 / 3, 50.0, 40.0])  # 2 of 5
    assert micro["n"].to_list() == [3, 2, 5]


# --------------------------------------------------------------------------- model helpers


def _plain_loglik(model, ids: list[int], start: int) -> float:
    """sum_{t >= start} log p(ids[t] | ids[:t]) from the full logits of one sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def _tulu_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """What the tulu format gives for a user prompt, tokenized segment by segment."""
    enc = tokenizer(f"<|user|>\n{prompt}\n", add_special_tokens=False)["input_ids"]
    return enc + tokenizer("<|assistant|>\n", add_special_tokens=False)["input_ids"]


def test_encode_prompts_is_the_training_prompt(tiny_tokenizer):
    prompts = ["What is 2 + 2?", "Say hi.\nA:"]
    got = inference.encode_prompts(prompts, tiny_tokenizer, DataConfig())
    assert got == [_tulu_prompt_ids(tiny_tokenizer, p) for p in prompts]
    # and it is the prompt part of a tokenized training example with that user turn
    turns = [{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": " 4"}]
    frame = pl.DataFrame({"example_id": ["x"], "messages": [turns]})
    tok, _ = tokenize(frame, tiny_tokenizer, DataConfig())
    ids, labels = tok["input_ids"][0].to_list(), tok["labels"][0].to_list()
    assert ids[: labels.index(next(x for x in labels if x != -100))] == got[0]


def test_choice_logliks_equal_plain_definition(tiny_model, tiny_tokenizer):
    t = tiny_tokenizer
    prompts = inference.encode_prompts(["Which one?", "Pick a letter please."], t, DataConfig())
    letters = [t(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(x) == 2 for x in letters)  # " " + letter: the shared-prefix fast path
    ragged = [t(x, add_special_tokens=False)["input_ids"] for x in (" yes", " no way", " 42")]
    choices = [letters, ragged]
    got = inference.choice_logliks(tiny_model, prompts, choices, token_budget=64)
    for p, cs, row in zip(prompts, choices, got, strict=True):
        want = [_plain_loglik(tiny_model, p + c, len(p)) for c in cs]
        assert row == pytest.approx(want, abs=1e-4)
    plain = inference.continuation_logliks(tiny_model, [prompts[0]] * 4, letters, token_budget=64)
    assert got[0] == pytest.approx(plain.tolist(), abs=1e-4)


def test_choice_logliks_single_token_letters(tiny_tokenizer):
    t = copy.deepcopy(tiny_tokenizer)  # the session fixture stays untouched
    t.add_tokens([" A", " B", " C", " D"])
    model = tiny_llama(t, seed=1)
    letters = [t(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(x) == 1 for x in letters)
    prompt = inference.encode_prompts(["Answer:"], t, DataConfig())[0]
    got = inference.choice_logliks(model, [prompt], [letters])[0]
    want = [_plain_loglik(model, prompt + c, len(prompt)) for c in letters]
    assert got == pytest.approx(want, abs=1e-4)


def _write_mmlu(root, answers: dict[str, list[str]]):
    (root / "dev").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    for subj, ans in answers.items():
        with open(root / "dev" / f"{subj}_dev.csv", "w", newline="") as f:
            for i in range(6):
                csv.writer(f).writerow([f"dev {subj} {i}?", "one", "two", "3", "4", "ABCD"[i % 4]])
        with open(root / "test" / f"{subj}_test.csv", "w", newline="") as f:
            for i, a in enumerate(ans):
                csv.writer(f).writerow([f"test {i}, a question?", "x", "y, z", "w", "v", a])


def test_mmlu_prompt_and_scoring(tiny_model, tiny_tokenizer, tmp_path):
    _write_mmlu(tmp_path, {"high_school_x": list("ABCD"), "y": list("AB")})
    ex = evalsets.mmlu_examples(tmp_path, k=2)
    first = ex.row(0, named=True)
    assert first["prompt"] == (
        "The following are multiple choice questions (with answers) about high school x.\n\n"
        "dev high_school_x 0?\nA. one\nB. two\nC. 3\nD. 4\nAnswer: A\n\n"
        "dev high_school_x 1?\nA. one\nB. two\nC. 3\nD. 4\nAnswer: B\n\n"
        "test 0, a question?\nA. x\nB. y, z\nC. w\nD. v\nAnswer:"
    )
    out = ev.evaluate_mmlu(tiny_model, tiny_tokenizer, tmp_path, k=2, progress=False,
                           return_examples=True)  # fmt: skip
    for row in out.iter_rows(named=True):  # log-likelihoods from the plain definition
        p = _tulu_prompt_ids(tiny_tokenizer, row["prompt"])
        want = [_plain_loglik(tiny_model, p + tiny_tokenizer(x, add_special_tokens=False)
                              ["input_ids"], len(p)) for x in "ABCD"]  # fmt: skip
        assert row["logliks"] == pytest.approx(want, abs=1e-4)
        assert row["prediction"] == "ABCD"[max(range(4), key=want.__getitem__)]
    # rig the answers: the model's pick for the first 3 of 4 x-questions, wrong for the rest
    pred = out["prediction"].to_list()
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    _write_mmlu(tmp_path, {"high_school_x": pred[:3] + [wrong[pred[3]]],
                           "y": [wrong[pred[4]], wrong[pred[5]]]})  # fmt: skip
    summary = ev.evaluate_mmlu(tiny_model, tiny_tokenizer, tmp_path, k=2, progress=False)
    assert summary["subtask"].to_list() == ["high_school_x", "y", "average"]
    # open-instruct's average_acc: the mean over all 6 questions (3 right), not over subjects
    assert summary["accuracy"].to_list() == pytest.approx([75.0, 0.0, 50.0])
    assert summary["n"].to_list() == [4, 2, 6]
    macro = ev.evaluate_mmlu(tiny_model, tiny_tokenizer, tmp_path, k=2, progress=False,
                             average="macro")  # fmt: skip
    assert macro["accuracy"].to_list() == pytest.approx([75.0, 0.0, 37.5])


def test_mmlu_subsample_is_deterministic(tmp_path):
    _write_mmlu(tmp_path, {"s": list("ABCDABCDAB")})
    a = evalsets.mmlu_examples(tmp_path, max_per_subject=3)
    assert a.height == 3 and a.equals(evalsets.mmlu_examples(tmp_path, max_per_subject=3))
    assert not a.equals(evalsets.mmlu_examples(tmp_path, max_per_subject=3, seed=1))


def _plain_greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
    return out


def test_batched_generation_equals_plain_greedy(tiny_model, tiny_tokenizer):
    t = tiny_tokenizer
    texts = ["Hi", "What is 7 plus 5? Answer with a number.", "The cat reads a book."]
    prompts = inference.encode_prompts(texts, t, DataConfig())
    got = inference.generate(tiny_model, t, prompts, max_new_tokens=12, max_batch=3, progress=False)
    for p, g in zip(prompts, got, strict=True):
        assert g == t.decode(_plain_greedy(tiny_model, p, 12, t.eos_token_id),
                             skip_special_tokens=True)  # fmt: skip
    assert inference.generate(tiny_model, t, prompts, max_new_tokens=12, max_batch=1,
                              progress=False) == got  # fmt: skip
    # a stop string cuts each row's text before its first occurrence
    stop = next(g[2:4] for g in got if len(g) >= 4)
    cut = inference.generate(
        tiny_model, t, prompts, max_new_tokens=12, stop=(stop,), progress=False
    )
    assert cut == [g.split(stop)[0] for g in got]
    assert any(c != g for c, g in zip(cut, got, strict=True))


def _write_bbh(root, targets: list[str]):
    (root / "test").mkdir(parents=True, exist_ok=True)
    prompt = ("Answer it.\n\nQ: 1?\nA: Think. So the answer is (A).\n\n"
              "Q: 2?\nA: So the answer is (B).\n\nQ: 3?\nA: So the answer is (C).\n")  # fmt: skip
    (root / "bbh-three-shot.json").write_text(json.dumps({"task": prompt}))
    examples = [{"input": "2?", "target": "(B)"}]  # a shot: skipped
    examples += [{"input": f"q{i}?", "target": tg} for i, tg in enumerate(targets)]
    (root / "test" / "task.json").write_text(json.dumps({"examples": examples}))


def test_bbh_prompt_and_exact_match(tiny_model, tiny_tokenizer, tmp_path):
    _write_bbh(tmp_path, ["x", "y"])
    ex = evalsets.bbh_examples(tmp_path)
    assert ex["answer"].to_list() == ["x", "y"]  # the shot question is left out
    assert ex["prompt"][0].endswith("So the answer is (C).\n\nQ: q0?\nA:")
    out = ev.evaluate_bbh(tiny_model, tiny_tokenizer, tmp_path, max_new_tokens=6,
                          progress=False, return_examples=True)  # fmt: skip
    gens = out["generation"].to_list()
    assert out["prediction"].to_list() == [metrics.parse_bbh_answer(g) for g in gens]
    _write_bbh(tmp_path, [metrics.parse_bbh_answer(gens[0]), "surely not generated"])
    summary = ev.evaluate_bbh(tiny_model, tiny_tokenizer, tmp_path, max_new_tokens=6,
                              progress=False)  # fmt: skip
    assert summary["exact_match"].to_list() == pytest.approx([50.0, 50.0])


def test_squad_span_qa(tiny_model, tiny_tokenizer, tmp_path):
    data = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "The cat reads a book.",
                        "qas": [
                            {
                                "id": "english-1",
                                "question": "Who reads?",
                                "answers": [{"text": "the cat"}],
                            },
                            {
                                "id": "english-2",
                                "question": "What?",
                                "answers": [{"text": "a book"}, {"text": "book"}],
                            },
                        ],
                    },
                    {
                        "context": "My friend counts.",
                        "qas": [
                            {
                                "id": "finnish-1",
                                "question": "Who?",
                                "answers": [{"text": "my friend"}],
                            }
                        ],
                    },
                ]
            }
        ]
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    shots = {"english": [{"context": "A dog writes.", "question": "Who writes?",
                          "answers": [{"text": "A dog"}]}]}  # fmt: skip
    out = ev.evaluate_squad(tiny_model, tiny_tokenizer, path, shots=shots, max_new_tokens=5,
                            progress=False, return_examples=True)  # fmt: skip
    assert out["subtask"].to_list() == ["english", "english", "finnish"]
    assert out["prompt"][0] == (
        f"{TYDIQA_INSTRUCTION}\n\nPassage: A dog writes.\nQuestion: Who writes?\nAnswer: "
        "A dog\n\nPassage: The cat reads a book.\nQuestion: Who reads?\nAnswer:"
    )
    # each language in open-instruct's template for it (finnish has no shot: zero-shot)
    assert out["prompt"][2] == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
        "Kappale: My friend counts.\nKysymys: Who?\nVastaus:"
    )
    english = ev.evaluate_squad(tiny_model, tiny_tokenizer, path, shots=shots,
                                max_new_tokens=1, per_language=False, progress=False,
                                return_examples=True)  # fmt: skip
    assert english["prompt"][2] == (
        f"{TYDIQA_INSTRUCTION}\n\nPassage: My friend counts.\nQuestion: Who?\nAnswer:"
    )
    for row in out.iter_rows(named=True):
        assert "\n" not in row["prediction"]
        assert row["f1"] == metrics.squad_f1(row["prediction"], row["golds"])
    # rig: make the model's own answer a gold of english-2
    pred = out["prediction"][1]
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"].append({"text": pred})
    path.write_text(json.dumps(data))
    summary = ev.evaluate_squad(tiny_model, tiny_tokenizer, path, shots=shots,
                                max_new_tokens=5, progress=False)  # fmt: skip
    eng = summary.filter(pl.col("subtask") == "english").row(0, named=True)
    want = (metrics.squad_f1(out["prediction"][0], ["the cat"]) * 100 + 100) / 2
    assert eng["f1"] == pytest.approx(want)
    assert summary.filter(pl.col("subtask") == "average")["f1"][0] == pytest.approx(
        (want + summary["f1"][1]) / 2
    )


def test_gsm8k(tiny_model, tiny_tokenizer, tmp_path):
    rows = [
        {
            "question": f"Q{i}: 3 + {i}?",
            "answer": f"3 + {i} = <<3+{i}={3 + i}>>{3 + i}\n#### {3 + i}",
        }
        for i in range(5)
    ]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = ev.evaluate_gsm8k(tiny_model, tiny_tokenizer, path, n_shot=2, max_new_tokens=6,
                            progress=False, return_examples=True)  # fmt: skip
    assert out.height == 3  # the two shots are not evaluated
    prompt = out["prompt"][0]
    assert prompt.startswith("Answer the following questions.\n\nQuestion: Q0: 3 + 0?\n"
                             "Answer: 3 + 0 = 3\nSo the answer is 3.\n\n")  # fmt: skip
    assert "<<" not in prompt and prompt.endswith("Question: Q2: 3 + 2?\nAnswer:")
    for row in out.iter_rows(named=True):
        num = metrics.parse_last_number(row["generation"])
        assert row["exact_match"] == (num is not None and num == float(row["answer"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        ev.evaluate_gsm8k(tiny_model, tiny_tokenizer, bad, n_shot=0, progress=False)


@pytest.mark.parametrize("space", [False, True])
def test_truthfulqa_mc2(tiny_model, tiny_tokenizer, tmp_path, space):
    rows = [
        {
            "question": "Is the sky green?",
            "category": "Science",
            "mc2_targets": {
                "choices": ["No.", "Yes, always.", "No, it is blue."],
                "labels": [1, 0, 1],
            },
        },
        {"question": "2 + 2?", "mc2_targets": {"choices": ["4", "5"], "labels": [1, 0]}},
    ]
    path = tmp_path / "tqa.json"
    path.write_text(json.dumps(rows))  # a JSON array (JSONL also accepted)
    out = ev.evaluate_truthfulqa_mc2(tiny_model, tiny_tokenizer, path, progress=False,
                                     leading_space=space, return_examples=True)  # fmt: skip
    assert out["subtask"].to_list() == ["Science", "truthfulqa"]
    for r, got in zip(rows, out["mc2"], strict=True):
        p = _tulu_prompt_ids(tiny_tokenizer, f"Q: {r['question']}\nA:")
        # default: "{choice}" opens the assistant turn; open-instruct's " {choice}" on request
        enc = [tiny_tokenizer(" " * space + c, add_special_tokens=False)["input_ids"]
               for c in r["mc2_targets"]["choices"]]  # fmt: skip
        ll = [_plain_loglik(tiny_model, p + c, len(p)) for c in enc]
        probs = [math.exp(x) for x in ll]
        true = sum(q for q, lab in zip(probs, r["mc2_targets"]["labels"], strict=True) if lab)
        assert got == pytest.approx(true / sum(probs), rel=1e-4)


def _targets_frame(n: int = 6) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
             {"role": "assistant", "content": f"The answer is {2 * i}." + " ok" * (i % 3)}]
            for i in range(n)]  # fmt: skip
    return pl.DataFrame({"example_id": [f"t{i}" for i in range(n)],
                         "subtask": ["a" if i % 3 else "b" for i in range(n)],
                         "messages": msgs})  # fmt: skip


def test_heldout_loss_equals_plain_mean_loss(tiny_model, tiny_tokenizer):
    tok, _ = tokenize(_targets_frame(), tiny_tokenizer, DataConfig())
    out = inference.heldout_loss(tiny_model, tok, token_budget=40,
                                 pad_id=tiny_tokenizer.pad_token_id, progress=False)  # fmt: skip
    per = {}
    for row in tok.iter_rows(named=True):
        ids, labels = row["input_ids"], row["labels"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0], -1)
        comp = [t for t, x in enumerate(labels) if x != -100]  # completion + EOS, not "\n"
        assert len(comp) == row["n_completion_tokens"] < len(ids) - comp[0]
        loss = -sum(logp[t - 1, ids[t]].item() for t in comp) / len(comp)
        per.setdefault(row["subtask"], []).append(loss)
    means = {k: sum(v) / len(v) for k, v in per.items()}
    assert out["subtask"].to_list() == ["a", "b", "average"]
    assert out["loss"].to_list() == pytest.approx(
        [means["a"], means["b"], (means["a"] + means["b"]) / 2], rel=1e-5
    )


def test_inference_restores_mode_and_never_changes_weights(tiny_model, tiny_tokenizer, tmp_path):
    _write_mmlu(tmp_path, {"s": list("AB")})
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.train()
    ev.evaluate_mmlu(tiny_model, tiny_tokenizer, tmp_path, k=1, progress=False)
    assert tiny_model.training
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_make_eval_by_name(tiny_model, tiny_tokenizer, tmp_path):
    _write_mmlu(tmp_path, {"s": list("ABCD")})
    acc = ev.make_eval("mmlu", tmp_path, max_per_subtask=2, k=1)(tiny_model, tiny_tokenizer)
    assert acc["n"].to_list() == [2, 2]
    loss = ev.make_eval("mmlu-loss", tmp_path, max_per_subtask=2, k=1)(tiny_model, tiny_tokenizer)
    assert loss.columns == ["subtask", "n", "loss"] and loss["loss"][0] > 0
    with pytest.raises(ValueError, match="unknown evaluation"):
        ev.make_eval("nope", tmp_path)
