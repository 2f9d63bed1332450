"""Dataset text never becomes a special token; the format's own markers stay special."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest

from less_lab.config import DataConfig
from less_lab.data.formatting import IGNORE_INDEX, format_segments, tokenize


def _special_strings(tokenizer) -> list[str]:
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens))


def _special_ids(tokenizer) -> set[int]:
    return {tokenizer.convert_tokens_to_ids(s) for s in _special_strings(tokenizer)}


def _conversation(user: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "sys " + user},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "again " + user},
        {"role": "assistant", "content": answer + " bye"},
    ]


def _tokenize_one(messages, tokenizer, chat_format: str) -> tuple[list[int], list[int]]:
    frame = pl.DataFrame({"example_id": ["x"], "messages": [messages]})
    out, dropped = tokenize(frame, tokenizer, DataConfig(chat_format=chat_format, max_length=8192))
    assert dropped.height == 0
    return out["input_ids"][0].to_list(), out["labels"][0].to_list()


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from less_lab.model.loading import SMOLLM2_CACHE_NAME, cache_root

    path = cache_root() / "models" / SMOLLM2_CACHE_NAME
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no converted SmolLM2 tokenizer at {path} (load_model() once makes it)")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(params=["tiny", "smollm2"])
def tokenizer(request, tiny_tokenizer):
    return tiny_tokenizer if request.param == "tiny" else _smollm2_tokenizer()


@pytest.mark.parametrize("chat_format", ["tulu", "template"])
def test_special_token_strings_in_dataset_text_stay_plain_text(tokenizer, chat_format) -> None:
    specials = _special_strings(tokenizer)
    assert tokenizer.eos_token in specials and len(specials) >= 3
    hostile = "look: " + " ".join(specials) + " " + "".join(specials) + " end"
    messages = _conversation(hostile, "ans " + "".join(reversed(specials)))
    plain = _conversation("look end", "ans")
    ids, labels = _tokenize_one(messages, tokenizer, chat_format)
    plain_ids, plain_labels = _tokenize_one(plain, tokenizer, chat_format)
    special = _special_ids(tokenizer)
    # Only the format's own markers are special ids, exactly as many (and the same ones, in
    # the same order) as for the same conversation with harmless text.
    assert [i for i in ids if i in special] == [i for i in plain_ids if i in special]
    assert sum(i in special for i in plain_ids) >= 2  # eos per answer (template: + markers)
    # The whole conversation still decodes to the formatted text, hostile strings included.
    whole = "".join(t for t, _ in format_segments(messages, tokenizer, chat_format))
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == whole
    # Labels cover exactly the completions, each ending with the real eos id.
    labels_arr, ids_arr = np.array(labels), np.array(ids)
    mask = labels_arr != IGNORE_INDEX
    assert (labels_arr[mask] == ids_arr[mask]).all()
    completions = [t for t, is_comp in format_segments(messages, tokenizer, chat_format) if is_comp]
    decoded = tokenizer.decode(ids_arr[mask].tolist(), clean_up_tokenization_spaces=False)
    assert decoded == "".join(completions)
    assert np.count_nonzero(np.diff(np.r_[0, mask.astype(int)]) == 1) == 2
    eos = tokenizer.eos_token_id
    for run_end in np.flatnonzero(np.diff(np.r_[mask.astype(int), 0]) == -1):
        assert ids[run_end] == eos  # tulu appends eos; both templates end a turn with it
    assert [i for i in plain_labels if i != IGNORE_INDEX][-1] == eos


def test_hostile_content_is_the_plain_encoding_of_its_text(tiny_tokenizer) -> None:
    """A user turn ``<s></s>`` becomes the byte tokens of that text, the ids an ordinary
    encoding without special-token parsing gives (not ids 1 and 2)."""
    tok = copy.deepcopy(tiny_tokenizer)  # split_special_tokens=True below sticks to it
    content = "<s></s><pad><unk>"
    ids, _ = _tokenize_one(
        [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}],
        tok,
        "tulu",
    )
    as_text = tok(
        "<|user|>\n" + content + "\n", add_special_tokens=False, split_special_tokens=True
    )
    assert ids[: len(as_text["input_ids"])] == as_text["input_ids"]
    assert not _special_ids(tok) & set(ids[: len(as_text["input_ids"])])
    assert ids.count(tok.eos_token_id) == 1 and ids[-2] == tok.eos_token_id


def test_tokenizer_is_left_as_it_was(tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    backend = tok.backend_tokenizer
    assert backend.encode_special_tokens is False
    _tokenize_one(_conversation("</s>", "a</s>"), tok, "tulu")
    assert backend.encode_special_tokens is False
    assert backend.encode("a</s>", add_special_tokens=False).ids[-1] == tok.eos_token_id


def test_escape_character_in_content_round_trips(tiny_tokenizer) -> None:
    """Private-use characters in the data are kept as they are (no escaping leaks)."""
    text = "\ue000 \ue000\ue000 \ue100 </s>\ue000</s>"
    messages = _conversation(text, text)
    for chat_format in ("tulu", "template"):
        ids, _ = _tokenize_one(messages, tiny_tokenizer, chat_format)
        whole = "".join(t for t, _ in format_segments(messages, tiny_tokenizer, chat_format))
        assert tiny_tokenizer.decode(ids, clean_up_tokenization_spaces=False) == whole
        assert ids.count(tiny_tokenizer.eos_token_id) == 2
