"""Which labelled tokens are answer content, end markers or template filler, and the
content-only labels of the ``content_tokens`` remedy."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from less_lab.config import DataConfig
from less_lab.data.batching import IGNORE
from less_lab.data.formatting import tokenize
from less_lab.data.token_kinds import content_labels, token_kinds


def _frame(answers: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "example_id": [f"x{i}" for i in range(len(answers))],
            "source": "t",
            "messages": [
                [
                    {"role": "user", "content": "Capital of France? A) Paris B) Rome"},
                    {"role": "assistant", "content": a},
                ]
                for a in answers
            ],
        }
    )


@pytest.mark.parametrize("chat_format", ["tulu", "template"])
def test_one_token_answer_ends_with_its_marker(tiny_tokenizer, chat_format):
    tok, _ = tokenize(
        _frame(["A", "Paris is the capital."]), tiny_tokenizer, DataConfig(chat_format=chat_format)
    )
    for ids, labels in tok.select("input_ids", "labels").iter_rows():
        kinds = token_kinds(ids, labels, tiny_tokenizer)
        labelled = kinds[np.asarray(labels) != IGNORE]
        assert (kinds[np.asarray(labels) == IGNORE] == "prompt").all()
        assert "eos" in labelled and labelled[0] == "content"
        last_content = np.flatnonzero(labelled == "content").max()
        assert set(labelled[last_content + 1 :]) <= {"eos", "template"}  # markers end it
        eos_pos = np.flatnonzero(np.asarray(ids) == tiny_tokenizer.eos_token_id)
        assert set(eos_pos) & set(np.flatnonzero(kinds == "eos"))


def test_content_labels_keep_only_the_answer(tiny_tokenizer):
    tok, _ = tokenize(_frame(["A", "Paris is the capital."]), tiny_tokenizer, DataConfig())
    out = content_labels(tok, tiny_tokenizer)
    assert out["input_ids"].to_list() == tok["input_ids"].to_list()  # ids untouched
    for before, after, ids in zip(tok["labels"], out["labels"], tok["input_ids"], strict=True):
        before, after = np.asarray(before), np.asarray(after)
        kinds = token_kinds(ids, before, tiny_tokenizer)
        assert ((after != IGNORE) == (kinds == "content")).all()
        assert (after[after != IGNORE] == before[after != IGNORE]).all()
    answer = tiny_tokenizer.decode([t for t in out["labels"][1] if t != IGNORE])
    assert answer.strip() == "Paris is the capital."
    assert out["n_loss_tokens"].to_list()[0] < tok["n_completion_tokens"].to_list()[0]


def test_marker_only_answer_keeps_its_labels_with_a_warning(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    ids = [5, 6, 7, eos, newline]
    labels = [IGNORE, IGNORE, IGNORE, eos, newline]  # an answer of nothing but its markers
    assert token_kinds(ids, labels, tiny_tokenizer).tolist() == [
        "prompt", "prompt", "prompt", "eos", "template"
    ]  # fmt: skip
    tok = pl.DataFrame({"example_id": ["x"], "input_ids": [ids], "labels": [labels]})
    with pytest.warns(UserWarning, match="no content token"):
        out = content_labels(tok, tiny_tokenizer)
    assert out["labels"].to_list() == [labels] and out["n_loss_tokens"].to_list() == [2]
