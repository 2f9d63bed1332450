"""The offline demo pool/targets: deterministic, well-formed, and factually right.

Facts are re-derived from the *text* wherever possible (numbers parsed from the prompt,
answers parsed from the completion), and the word tables are spot-checked against
reference values written here independently, so a wrong template or table entry fails.
"""

from __future__ import annotations

import json
import operator
import re
from collections import Counter

import polars as pl
import pytest

from less_lab.data import demo_pool as dd
from less_lab.data import demo_words as dw

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
KNOWN_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Australia": "Canberra", "Canada": "Ottawa",
    "Brazil": "Brasilia", "Turkey": "Ankara", "Nigeria": "Abuja", "Morocco": "Rabat",
    "New Zealand": "Wellington", "Pakistan": "Islamabad", "India": "New Delhi",
    "South Korea": "Seoul", "Egypt": "Cairo", "Peru": "Lima", "Chile": "Santiago",
    "Kenya": "Nairobi", "Norway": "Oslo", "Iceland": "Reykjavik", "Ukraine": "Kyiv",
}  # fmt: skip
KNOWN_ANTONYMS = {"hot": "cold", "up": "down", "early": "late", "full": "empty",
                  "wet": "dry", "win": "lose", "buy": "sell", "true": "false"}  # fmt: skip
KNOWN_SYNONYMS = {"big": "large", "begin": "start", "sick": "ill", "gift": "present"}
KNOWN_FRENCH = {"cat": "chat", "dog": "chien", "water": "eau", "bread": "pain",
                "tree": "arbre", "horse": "cheval", "snow": "neige", "bird": "oiseau"}  # fmt: skip
FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100,
           ("kilograms", "grams"): 1000, ("liters", "milliliters"): 1000,
           ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("days", "hours"): 24,
           ("weeks", "days"): 7, ("feet", "inches"): 12, ("yards", "feet"): 3}  # fmt: skip
POSITIVE = {"great", "lovely", "superb", "wonderful", "excellent", "delightful", "fantastic"}
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def all_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


@pytest.fixture(scope="module")
def pool() -> pl.DataFrame:
    return dd.demo_pool()


@pytest.fixture(scope="module")
def targets() -> pl.DataFrame:
    return dd.demo_targets()


@pytest.fixture(scope="module")
def examples() -> list[dd.DemoExample]:
    return dd.demo_examples()


def test_deterministic_by_seed(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    assert dd.demo_pool(seed=0).equals(pool)
    assert dd.demo_targets(seed=0).equals(targets)
    assert not dd.demo_pool(seed=1)["raw"].equals(pool["raw"])
    assert not dd.demo_targets(seed=1)["raw"].equals(targets["raw"])


def test_pool_schema_and_size(pool: pl.DataFrame) -> None:
    assert 240 <= pool.height <= 320
    assert pool.columns == ["example_id", "source", "format", "messages", "raw", "file",
                            "line", "skill", "form"]  # fmt: skip
    assert pool.schema["messages"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    assert pool["example_id"].n_unique() == pool.height
    assert pool["line"].to_list() == list(range(1, pool.height + 1))
    assert set(pool["format"]) == {"messages"} and set(pool["file"]) == {"<demo>"}
    assert set(pool["source"]) == {"flan_like", "cot_like", "dolly_like", "chat_like", "noise"}
    assert set(pool["skill"]) == set(dd.DEMO_SKILLS)
    assert (pool.filter(pl.col("source") == "noise")["skill"] == "chitchat").all()
    # Skills interleave (a real pool is not sorted by skill).
    assert pool.head(20)["skill"].n_unique() >= 5


def test_every_skill_has_several_forms(pool: pl.DataFrame) -> None:
    forms = pool.group_by("skill").agg(pl.col("form").n_unique())
    assert forms["form"].min() >= 3
    counts = pool.group_by("skill", "form").len()["len"]
    assert set(counts) == {7}
    assert dd.demo_pool(n_per_form=3).height == 3 * counts.len()


def test_no_duplicate_prompts(pool: pl.DataFrame) -> None:
    prompts = pool["messages"].list.first().struct.field("content")
    assert prompts.n_unique() == pool.height


def test_too_many_per_form_fails_loudly() -> None:
    with pytest.raises(ValueError, match="distinct"):
        dd.demo_pool(n_per_form=500)


def test_messages_well_formed(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    for msgs in pool["messages"].to_list() + targets["messages"].to_list():
        assert len(msgs) % 2 == 0
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert all(m["content"].strip() == m["content"] and m["content"] for m in msgs)
        assert all_text(msgs).isascii()
    assert pool["messages"].list.len().max() > 2  # some multi-turn rows exist


def test_raw_parses_to_same_row(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    for row in pool.iter_rows(named=True):
        obj = json.loads(row["raw"])
        assert obj["messages"] == row["messages"]
        assert (obj["dataset"], obj["id"]) == (row["source"], row["example_id"])
        assert (obj["skill"], obj["form"]) == (row["skill"], row["form"])
    for row in targets.iter_rows(named=True):
        obj = json.loads(row["raw"])
        assert obj["messages"] == row["messages"]
        assert (obj["id"], obj["subtask"]) == (row["example_id"], row["subtask"])


def test_pool_matches_examples(pool: pl.DataFrame, examples: list[dd.DemoExample]) -> None:
    assert [e.messages for e in examples] == pool["messages"].to_list()
    assert [e.skill for e in examples] == pool["skill"].to_list()


def test_targets_shape(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    assert targets.columns[:5] == ["example_id", "source", "subtask", "messages", "raw"]
    assert set(targets["source"]) == {"demo_target"}
    per = Counter(targets["subtask"])
    assert len(per) == 3 and set(per.values()) == {4}
    assert set(per) == set(dd.DEMO_SUBTASKS)
    assert targets["example_id"].n_unique() == targets.height
    assert not set(targets["example_id"]) & set(pool["example_id"])
    assert set(targets["skill"]) <= set(pool["skill"]) - {"chitchat"}
    assert dd.demo_targets(n_shots=3).height == 9


def test_target_formats_absent_from_pool(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    mc_layout = re.compile(r"(?m)^[A-D]\. .+\n[A-D]\. ")

    def markers(msgs: list[dict[str, str]]) -> set[str]:
        text, prompt = all_text(msgs), msgs[0]["content"]
        found = {k for k in ("let's think step by step", "so the answer is",
                             "multiple choice", "answer:") if k in text.lower()}  # fmt: skip
        if mc_layout.search(prompt):
            found.add("mc_layout")
        if re.search(r"(?m)^(Q|A):", prompt):
            found.add("qa_prefix")
        return found

    pool_markers = set().union(*(markers(m) for m in pool["messages"].to_list()))
    assert pool_markers == set()
    for row in targets.iter_rows(named=True):  # the check above can fail
        need = {"mc_layout", "multiple choice"} if row["form"] == "mmlu_mc" else {
            "let's think step by step", "so the answer is", "qa_prefix"}  # fmt: skip
        assert need <= markers(row["messages"]), row["example_id"]


def test_lengths(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    words = [len(all_text(m).split()) for m in pool["messages"].to_list()]
    words += [len(all_text(m).split()) for m in targets["messages"].to_list()]
    assert sum(w < 70 for w in words) >= 0.95 * len(words)
    assert max(words) < 100


def test_equations_in_text_are_correct(pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    n = 0
    for msgs in pool["messages"].to_list() + targets["messages"].to_list():
        for a, op, b, r in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", all_text(msgs)):
            assert OPS[op](int(a), int(b)) == int(r)
            n += 1
    assert n >= 40  # arithmetic and unit rationales, all CoT targets


def test_tables_agree_with_reference() -> None:
    assert KNOWN_CAPITALS.items() <= dw.CAPITALS.items()
    assert KNOWN_ANTONYMS.items() <= dw.ANTONYMS.items()
    assert KNOWN_SYNONYMS.items() <= dw.SYNONYMS.items()
    assert KNOWN_FRENCH.items() <= dw.FRENCH.items()
    assert {(p, t): f for p, _, t, f in dw.UNITS} == FACTORS
    assert len(set(dw.CAPITALS.values())) == len(dw.CAPITALS)  # MC options unambiguous
    assert not set(dw.POSITIVE) & set(dw.NEGATIVE)
    assert all(w != a for w, a in dw.ANTONYMS.items())


def _check_arithmetic(prompt: str, answer: str, f: dict) -> None:
    assert ints(prompt) == [f["a"], f["b"]]
    cue = {"+": ("more", "plus"), "-": ("away", "minus"), "*": ("bags", "times")}[f["op"]]
    assert any(c in prompt for c in cue)
    assert ints(answer)[-1] == OPS[f["op"]](f["a"], f["b"]) == f["r"] > 0


def _check_weekdays(prompt: str, answer: str, f: dict, form: str) -> None:
    backwards = form in ("rationale", "chat")
    assert (" ago" in prompt or " before " in prompt) == backwards
    assert ints(prompt) == [f["n"]] and f["day"] in prompt
    res = DAYS[(DAYS.index(f["day"]) + (-1 if backwards else 1) * f["n"]) % 7]
    assert answer.endswith(f"{res}.") or answer == res
    if form == "rationale":
        chain = re.search(r": (.*)\. It was", answer).group(1).split(", ")
        want = [DAYS[(DAYS.index(f["day"]) - i) % 7] for i in range(1, f["n"] + 1)]
        assert chain == want


def _check_sorting(prompt: str, answer: str, form: str) -> None:
    nums = ints(prompt)
    assert len(set(nums)) == len(nums) >= 4
    want = {"instruction": sorted(nums), "qa": [max(nums)], "chat": [min(nums)],
            "fill_in": sorted(nums, reverse=True)}[form]  # fmt: skip
    assert ints(answer) == want


def _check_spelling(prompt: str, answer: str, form: str) -> None:
    word = re.search(r'"(\w+)"|spell (\w+)\?', prompt)
    word = word.group(1) or word.group(2)
    want = {"qa": str(len(word)), "instruction": word[::-1],
            "fill_in": f"{word[0]}, {word[-1]}",
            "chat": f"Sure, it is spelled {'-'.join(word.upper())}."}[form]  # fmt: skip
    assert answer == want


def test_pool_facts(examples: list[dd.DemoExample]) -> None:
    seen: Counter[str] = Counter()
    for ex in examples:
        prompt, answer, f = ex.turns[0], ex.turns[1], ex.facts
        seen[ex.skill] += 1
        if ex.skill == "arithmetic":
            _check_arithmetic(prompt, answer, f)
        elif ex.skill == "capitals":
            assert f["capital"] == dw.CAPITALS[f["country"]]
            assert KNOWN_CAPITALS.get(f["country"], f["capital"]) == f["capital"]
            asked, said = ("capital", "country") if ex.form == "chat" else ("country", "capital")
            assert f[asked] in prompt and f[said] in answer and f[said] not in prompt
        elif ex.skill == "weekdays":
            _check_weekdays(prompt, answer, f, ex.form)
        elif ex.skill == "antonyms":
            table = dw.SYNONYMS if ex.form == "instruction" else dw.ANTONYMS
            assert table[f["word"]] == f["answer"] and f["word"] in prompt
            assert answer.strip('."').endswith(f["answer"])
            if ex.form == "fill_in":
                assert f"{f['anchor']} is to {dw.ANTONYMS[f['anchor']]}" in prompt
        elif ex.skill == "sentiment":
            assert f["adj"] in prompt
            label = "positive" if f["adj"] in POSITIVE else "negative"
            assert f["label"] == label and label in answer.lower()
            assert ("negative" if label == "positive" else "positive") not in answer.lower()
        elif ex.skill == "units":
            v, r = f["v"], f["v"] * FACTORS[(f["frm"], f["to"])]
            assert ints(prompt) == [v] and f["frm"] in prompt and f["to"] in prompt
            assert ints(answer)[-1] == r
        elif ex.skill == "spelling":
            _check_spelling(prompt, answer, ex.form)
        elif ex.skill == "french":
            assert dw.FRENCH[f["en"]] == f["fr"] and f["en"] in prompt
            assert KNOWN_FRENCH.get(f["en"], f["fr"]) == f["fr"]
            assert answer.strip('."').endswith(f["fr"])
        elif ex.skill == "sorting":
            _check_sorting(prompt, answer, ex.form)
    assert set(seen) == set(dd.DEMO_SKILLS)


def test_target_facts(targets: pl.DataFrame) -> None:
    for row in targets.iter_rows(named=True):
        prompt, answer = (m["content"] for m in row["messages"])
        if row["subtask"] == "arithmetic_cot":
            a, b, c, d = ints(prompt)
            assert answer.endswith(f"So the answer is {a + b * c - d}.")
        elif row["subtask"] == "weekdays_cot":
            day = re.search(r"Today is (\w+)\.", prompt).group(1)
            (n,) = ints(prompt)
            assert answer.endswith(f"So the answer is {DAYS[(DAYS.index(day) + n) % 7]}.")
            q, m = divmod(n, 7)
            assert f"{n} days is {q} week" in answer and f" and {m} day" in answer
        else:
            country = re.search(r"capital of (.+)\?", prompt).group(1)
            options = dict(re.findall(r"(?m)^([A-D])\. (.+)$", prompt))
            assert sorted(options) == list("ABCD") and len(set(options.values())) == 4
            right = [k for k, v in options.items() if v == dw.CAPITALS[country]]
            assert len(right) == 1 and answer == f"{right[0]}. {dw.CAPITALS[country]}"
            assert prompt.endswith("\nAnswer:")


def test_write_demo_round_trips(tmp_path, pool: pl.DataFrame, targets: pl.DataFrame) -> None:
    pool_path, target_path = dd.write_demo(tmp_path / "demo")
    assert (pool_path.name, target_path.name) == ("pool.jsonl", "targets.jsonl")
    pool_lines = pool_path.read_text(encoding="utf-8").splitlines()
    assert pool_lines == pool["raw"].to_list()
    for line, row in zip(pool_lines, pool.iter_rows(named=True), strict=True):
        obj = json.loads(line)
        assert {"dataset", "id", "messages"} <= obj.keys()
        assert obj["messages"] == row["messages"]
    target_objs = [json.loads(x) for x in target_path.read_text().splitlines()]
    assert [o["id"] for o in target_objs] == targets["example_id"].to_list()
    assert all({"id", "subtask", "messages"} <= o.keys() for o in target_objs)
