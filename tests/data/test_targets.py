"""Target sets in the LESS evaluation layouts: counts, exact prompts, bad layouts."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import polars as pl
import pytest

from less_lab.config import DataConfig
from less_lab.data.formatting import tokenize
from less_lab.data.pool import DataError, write_jsonl
from less_lab.data.targets import read_targets


def _pair(frame: pl.DataFrame, example_id: str) -> tuple[str, str]:
    msgs = frame.filter(pl.col("example_id") == example_id)["messages"][0].to_list()
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    return msgs[0]["content"], msgs[1]["content"]


@pytest.fixture(scope="module")
def eval_dir(shared_data: Path) -> Path:
    return shared_data / "eval"


# --------------------------------------------------------------------------- real layouts


def test_bbh_three_leave_one_out_prompts_per_task(eval_dir: Path) -> None:
    frame = read_targets(eval_dir / "bbh")
    assert frame.height == 81 and frame["subtask"].n_unique() == 27
    assert set(frame["source"]) == {"bbh"}
    assert frame.group_by("subtask").len()["len"].to_list() == [3] * 27
    original = json.loads((eval_dir / "bbh" / "bbh-three-shot.json").read_text(encoding="utf-8"))
    for task, prompt in original.items():
        *desc, s0, s1, s2 = prompt.split("\n\n")
        head = "\n\n".join(desc).strip() + "\n\n"
        for i, order in enumerate([(s1, s2, s0), (s0, s2, s1), (s0, s1, s2)]):
            user, completion = _pair(frame, f"bbh_{task}_{i}")
            assert user + completion == head + "\n\n".join(order)
            assert user.endswith("\nA:") and completion == order[2].split("\nA:", 1)[1]
    # the last shot's example is the original prompt itself
    user, completion = _pair(frame, "bbh_boolean_expressions_2")
    assert user + completion == original["boolean_expressions"]
    assert completion.startswith(" Let's think step by step.")
    assert completion.endswith("So the answer is True.")


def test_mmlu_five_shot_prompts_per_subject(eval_dir: Path) -> None:
    frame = read_targets(eval_dir / "mmlu")
    assert frame.height == 285 and frame["subtask"].n_unique() == 57
    assert frame.group_by("subtask").len()["len"].to_list() == [5] * 57
    user, completion = _pair(frame, "mmlu_abstract_algebra_0")
    assert completion == "B"  # no leading space: it opens the assistant turn
    assert user.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. "
        "Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\n"
        "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n"
    )
    assert user.endswith(
        "\n\nFind all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
        "A. 0\nB. 1\nC. 2\nD. 3\nAnswer:"
    )
    assert user.count("\nAnswer:") == 5
    # answers and multi-line questions come through the csv module intact
    for subject in ("high_school_european_history", "college_medicine"):
        path = eval_dir / "mmlu" / "dev" / f"{subject}_dev.csv"
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        for i, row in enumerate(rows):
            user, completion = _pair(frame, f"mmlu_{subject}_{i}")
            assert completion == row[5]
            assert user.endswith(
                f"{row[0]}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}\nAnswer:"
            )
            assert all(f"{r[0]}\nA. {r[1]}" in user for r in rows)


def test_tydiqa_one_example_per_language(eval_dir: Path) -> None:
    frame = read_targets(eval_dir / "tydiqa" / "tydiqa-one-shot.json")
    assert frame.height == 9 and frame["subtask"].n_unique() == 9
    assert "english" in frame["subtask"] and "finnish" in frame["subtask"]
    user, completion = _pair(frame, "tydiqa_finnish_0")
    assert completion == "Kigali"
    # the record language's open-instruct template, as the reference's get_tydiqa_dataset
    assert user == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
        "Kappale:  Vuodesta 2006 alkaen Ruanda on jaettu neljään maakuntaan, Pohjoinen, Etelä, "
        "Itä ja Länsi. Lisäksi pääkaupunki Kigali muodostaa oman hallintoalueensa.[2]\n"
        "Kysymys: Mikä on Ruandan pääkaupunki?\nVastaus:"
    )
    english, _ = _pair(frame, "tydiqa_english_0")
    assert english.startswith(
        "Answer the following question based on the information in the given passage.\n\nPassage: "
    )


def test_top_eval_dir_needs_a_task(eval_dir: Path) -> None:
    sizes = {task: read_targets(eval_dir, task=task).height for task in ("bbh", "mmlu", "tydiqa")}
    assert sizes == {"bbh": 81, "mmlu": 285, "tydiqa": 9}
    with pytest.raises(DataError, match=r"several target layouts \(bbh, mmlu, tydiqa\).*task="):
        read_targets(eval_dir)
    assert read_targets(eval_dir / "mmlu" / "dev" / "anatomy_dev.csv").height == 5
    with pytest.raises(ValueError, match="task must be"):
        read_targets(eval_dir, task="gsm8k")


def test_targets_round_trip_through_jsonl_and_tokenize(eval_dir, tmp_path, tiny_tokenizer) -> None:
    frame = read_targets(eval_dir, task="mmlu")
    out = write_jsonl(frame, tmp_path / "mmlu.jsonl")
    back = read_targets(out)
    assert back["raw"].to_list() == frame["raw"].to_list()
    assert back.drop("raw").equals(frame.drop("raw"))
    tok, dropped = tokenize(frame, tiny_tokenizer, DataConfig(max_length=4096))
    assert dropped.height == 0 and tok["subtask"].to_list() == frame["subtask"].to_list()
    assert tok["n_completion_tokens"].min() >= 2  # " X" plus eos


# --------------------------------------------------------------------------- bad layouts


def test_mmlu_csv_with_five_columns_names_file_and_line(tmp_path: Path) -> None:
    dev = tmp_path / "mmlu" / "dev"
    dev.mkdir(parents=True)
    path = dev / "toy_dev.csv"
    path.write_text('"two\nlines",a,b,c,d,A\nq2,a,b,c,d,B\nq3,a,b,c,D\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_targets(tmp_path / "mmlu")
    assert str(info.value).startswith(f"{path}:4: row with 5 fields")
    path.write_text("q1,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"toy_dev\.csv:1: .*answer in A-D"):
        read_targets(path)


def _at(path: Path, line: int) -> str:
    """Regex for the start of an error message located at ``path:line``."""
    return re.escape(f"{path}:{line}: ")


def _bbh_prompt(*shots: str) -> str:
    return "\n\n".join(["Describe."] + [f"Q: {q}\nA: {a}" if a else q for q, a in shots])


def test_json_layout_errors_name_the_file(tmp_path: Path) -> None:
    bbh = tmp_path / "bbh-three-shot.json"
    bbh.write_text('["not", "an", "object"]', encoding="utf-8")
    with pytest.raises(DataError, match=_at(bbh, 1) + "top level is a JSON list"):
        read_targets(bbh)
    good = _bbh_prompt(("x", "y"), ("z", "w"), ("u", "v"))
    bad = _bbh_prompt(("x", "y"), ("no answer", ""), ("u", "v"))
    bbh.write_text(json.dumps({"a": good, "b": bad}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=_at(bbh, 3) + "task 'b': a shot has no"):
        read_targets(tmp_path)
    empty = _bbh_prompt(("x", "y"), ("z", " "), ("u", "v"))
    bbh.write_text(json.dumps({"a": good, "c": empty}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=_at(bbh, 3) + "task 'c': empty answer"):
        read_targets(bbh)
    bbh.write_text('{"a": "x",\n "b": ', encoding="utf-8")
    with pytest.raises(DataError, match=_at(bbh, 2) + "malformed JSON"):
        read_targets(bbh)
    tydi = tmp_path / "t" / "tydiqa-one-shot.json"
    tydi.parent.mkdir()
    record = {"context": "c", "question": "q", "answers": []}
    tydi.write_text(json.dumps({"english": [record]}, indent=1), encoding="utf-8")
    with pytest.raises(DataError, match=_at(tydi, 2) + "language 'english' record 0 lacks"):
        read_targets(tydi.parent)
    with pytest.raises(DataError, match=r"cannot tell the target layout"):
        read_targets(tydi.rename(tmp_path / "t" / "other.json"))


def test_generic_jsonl_targets(tmp_path: Path) -> None:
    path = tmp_path / "mytask.jsonl"
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]
    lines = [
        {"subtask": "s1", "prompt": "Q", "completion": " A"},
        {"subtask": "s2", "id": "x", "messages": turns},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    frame = read_targets(tmp_path)
    assert frame["example_id"].to_list() == ["mytask_1", "x"]
    assert frame["source"].to_list() == ["mytask", "mytask"]
    assert frame["subtask"].to_list() == ["s1", "s2"]
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"prompt": "Q", "completion": "A"}) + "\n")
    with pytest.raises(DataError, match=_at(path, 3) + "no 'subtask' field"):
        read_targets(path)
    path.write_text(json.dumps(lines[1]) + "\n" + json.dumps(lines[1]) + "\n", encoding="utf-8")
    first = re.escape(f"(first at {path}:1)")
    with pytest.raises(DataError, match=_at(path, 2) + "duplicate id 'x' " + first):
        read_targets(path)
