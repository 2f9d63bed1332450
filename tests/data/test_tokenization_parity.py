"""Token ids are open-instruct's: the whole formatted example encoded once, labels masked
by the token length of each prompt prefix. Checked with the byte-level BPE tokenizer and
with SentencePiece-style tokenizers (``▁`` word boundaries, byte fallback) trained here:
Llama-2's (a ``▁`` prepended to every split) and transformers 5's ``LlamaTokenizer``
(``prepend_scheme="first"``: only at the start of the text)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import LlamaTokenizer, PreTrainedTokenizerFast

from less_lab.config import DataConfig
from less_lab.data.formatting import IGNORE_INDEX, format_segments, tokenize
from less_lab.model.tiny import CHAT_TEMPLATE

WORDS = (
    "the quick brown fox jumps over the lazy dog what is two plus two it is four "
    "answer question please write a short poem about rain and sun in the morning "
    "system you are helpful assistant user tell me more then again yes no maybe"
).split()


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=12)) + rng.choice([".", "?", ","]) for _ in range(400)]


def _bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A SentencePiece-style BPE (``▁`` marks a word start) trained on plain sentences, with
    the 256 byte-fallback tokens: ``\\n``, ``<`` and ``|`` become ``<0x..>`` tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=260, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    vocab = dict(spec["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    return vocab, merges


def _llama2(vocab, merges) -> PreTrainedTokenizerFast:
    """As Llama-2's tokenizer.json: normalizer prepends ``▁`` to every split and turns
    spaces into ``▁``; BOS added by the post-processor."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module", params=["byte_bpe", "llama2_sp", "llama_v5_sp"])
def tok(request, tiny_tokenizer):
    if request.param == "byte_bpe":
        return tiny_tokenizer
    vocab, merges = _bpe_vocab()
    if request.param == "llama2_sp":
        out = _llama2(vocab, merges)
    else:
        out = LlamaTokenizer(vocab=vocab, merges=merges)
        assert out.backend_tokenizer.pre_tokenizer.prepend_scheme == "first"
    out.chat_template = CHAT_TEMPLATE
    return out


def _is_sentencepiece(tokenizer) -> bool:
    return "▁" in "".join(tokenizer.convert_ids_to_tokens(tokenizer("a b")["input_ids"]))


CONVERSATIONS = [
    [
        {"role": "user", "content": "what is two plus two?"},
        {"role": "assistant", "content": "it is four."},
    ],
    [
        {"role": "system", "content": "you are helpful."},
        {"role": "user", "content": " tell me a short poem"},
        {"role": "assistant", "content": " rain and sun\nin the morning"},
        {"role": "user", "content": "\nagain, please"},
        {"role": "assistant", "content": "yes: the lazy dog ü 雨 "},
    ],
    [{"role": "user", "content": "question"}, {"role": "assistant", "content": ""}],
]  # fmt: skip


def _decoded(tokenizer, ids) -> str:
    """All ids decoded, a leading ``<s>`` and the space a SentencePiece decoder may leave
    after it removed."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.removeprefix("<s>").removeprefix(" ")


def _whole_text(messages, tokenizer, chat_format) -> str:
    return "".join(text for text, _ in format_segments(messages, tokenizer, chat_format))


def _encode(tokenizer, text: str) -> list[int]:
    """``tokenizer(text)`` as open-instruct calls it, with one BOS (a template that renders
    ``<s>`` itself gets no second one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    adds_bos = tokenizer("a")["input_ids"][0] == bos
    return [bos] + ids if adds_bos and (not ids or ids[0] != bos) else ids


def _open_instruct_labels(messages, tokenizer, chat_format) -> tuple[list[int], list[int]]:
    """open-instruct's ``encode_with_messages_format``, generalised to any segments: the
    whole text encoded, each prompt run masked from the token length of the prefix up to
    its start to the token length of the prefix up to its end."""
    segments = format_segments(messages, tokenizer, chat_format)
    text = "".join(t for t, _ in segments)
    ids = _encode(tokenizer, text)
    labels = list(ids)
    pos = 0
    for seg, is_completion in segments:
        if not is_completion:
            start = len(_encode(tokenizer, text[:pos])) if pos else 0
            stop = len(_encode(tokenizer, text[: pos + len(seg)]))
            labels[start:stop] = [IGNORE_INDEX] * (stop - start)
        pos += len(seg)
    return ids, labels


def _tokenize(messages, tokenizer, chat_format, **cfg) -> pl.DataFrame:
    frame = pl.DataFrame({"example_id": ["x"], "messages": [messages]})
    kwargs = {"chat_format": chat_format, "max_length": 8192, **cfg}
    out, dropped = tokenize(frame, tokenizer, DataConfig(**kwargs))
    assert dropped.height == 0
    return out


@pytest.mark.parametrize("chat_format", ["tulu", "template"])
@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_ids_and_labels_are_open_instructs(tok, chat_format, case) -> None:
    messages = CONVERSATIONS[case]
    out = _tokenize(messages, tok, chat_format)
    want_ids, want_labels = _open_instruct_labels(messages, tok, chat_format)
    assert out["input_ids"][0].to_list() == want_ids
    assert out["labels"][0].to_list() == want_labels


@pytest.mark.parametrize("chat_format", ["tulu", "template"])
def test_labels_cover_exactly_the_assistant_turns(tok, chat_format) -> None:
    messages = CONVERSATIONS[1]
    out = _tokenize(messages, tok, chat_format)
    ids, labels = np.array(out["input_ids"][0].to_list()), np.array(out["labels"][0].to_list())
    mask = labels != IGNORE_INDEX
    assert (labels[mask] == ids[mask]).all()
    runs = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    decoded = [
        tok.decode(ids[a:b].tolist(), clean_up_tokenization_spaces=False)
        for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    want = [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]
    assert [d.lstrip(" ") for d in decoded] == [w.lstrip(" ") for w in want]
    assert all(ids[b - 1] == tok.eos_token_id for b in runs[1::2])
    if tok.backend_tokenizer.normalizer is None:  # Llama-2's puts a "▁" after each </s>
        whole = _whole_text(messages, tok, chat_format).removeprefix("<s>")
        assert _decoded(tok, ids.tolist()) == whole


def test_segment_wise_ids_differ_for_sentencepiece(tok) -> None:
    """The bug fixed: encoding each segment on its own puts a ``▁`` at every segment start
    of a SentencePiece tokenizer (never for the byte-level one)."""
    messages = CONVERSATIONS[1]
    segments = format_segments(messages, tok, "tulu")
    segment_wise = [
        i for text, _ in segments for i in tok(text, add_special_tokens=False)["input_ids"]
    ]
    whole = tok(_whole_text(messages, tok, "tulu"), add_special_tokens=False)["input_ids"]
    ids = _tokenize(messages, tok, "tulu")["input_ids"][0].to_list()
    assert ids[len(ids) - len(whole) :] == whole
    if _is_sentencepiece(tok):
        assert segment_wise != whole
        assert len(segment_wise) > len(whole)  # the extra "▁"s
    else:
        assert segment_wise == whole


@pytest.mark.parametrize("mode", ["prompt_left", "prompt_middle", "right"])
def test_truncation_keeps_the_answer(tok, mode) -> None:
    long_user = " ".join(WORDS * 3)
    messages = [
        {"role": "user", "content": long_user},
        {"role": "assistant", "content": "it is four."},
    ]
    full = _tokenize(messages, tok, "tulu")
    full_ids = full["input_ids"][0].to_list()
    n_comp = full["n_completion_tokens"][0]
    cfg = DataConfig(max_length=n_comp + 12, truncation=mode)
    frame = pl.DataFrame({"example_id": ["x"], "messages": [messages]})
    if mode == "right":  # the reference's cut: the end goes, here the whole answer
        with pytest.warns(UserWarning, match="no completion tokens left after 'right'"):
            out, dropped = tokenize(frame, tok, cfg)
        assert out.height == 0 and dropped["n_tokens"].to_list() == [len(full_ids)]
        return
    out, _ = tokenize(frame, tok, cfg)
    ids, labels = out["input_ids"][0].to_list(), out["labels"][0].to_list()
    assert len(ids) == n_comp + 12
    head = 1 if full_ids[0] == tok.bos_token_id else 0
    assert ids[:head] == full_ids[:head]
    kept = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    want = [i for i, lab in zip(full_ids, full["labels"][0], strict=True) if lab != IGNORE_INDEX]
    assert kept == want and out["n_completion_tokens_cut"][0] == 0
    assert out["n_prompt_tokens_cut"][0] == len(full_ids) - len(ids)
    assert ids[-len(want) - 1 :] == full_ids[-len(want) - 1 :]  # answer + trailing newline
    if mode == "prompt_left":
        assert ids[head:] == full_ids[len(full_ids) - len(ids) + head :]
    else:  # prompt_middle keeps both ends of the prompt
        assert ids[head : head + 3] == full_ids[head : head + 3]


def test_hostile_text_after_a_marker_keeps_whole_text_ids(tok) -> None:
    """Special strings in dataset text stay plain; the text around them still gets the
    whole-text ids, also after an EOS with ``prepend_scheme="first"`` (no extra ``▁``)."""
    hostile = [
        {"role": "user", "content": "what is two"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "again </s> <s> please"},
        {"role": "assistant", "content": "yes"},
    ]
    ids = _tokenize(hostile, tok, "tulu")["input_ids"][0].to_list()
    assert ids.count(tok.eos_token_id) == 2
    clean = [dict(m, content=m["content"].replace("</s> <s> ", "")) for m in hostile]
    clean_ids = _tokenize(clean, tok, "tulu")["input_ids"][0].to_list()
    eos_at = ids.index(tok.eos_token_id)
    assert ids[: eos_at + 3] == clean_ids[: eos_at + 3]  # "\n<|user|>..." after the eos
    tail = len(tok("\n<|assistant|>\nyes</s>\n", add_special_tokens=False)["input_ids"])
    assert ids[-tail:] == clean_ids[-tail:]
    want = _decoded(tok, clean_ids).replace("again please", "again </s> <s> please")
    assert _decoded(tok, ids) == want
    if not _is_sentencepiece(tok) or tok.backend_tokenizer.normalizer is None:
        assert want == _whole_text(hostile, tok, "tulu")  # no "▁" added after the eos


def test_whole_text_ids_on_the_shared_pool(shared_data, tok) -> None:
    """On a sample of the real pool, ids and labels equal open-instruct's definition."""
    from less_lab.data.pool import read_pool

    pool = read_pool(shared_data / "pool").sample(60, seed=1)
    out, dropped = tokenize(pool, tok, DataConfig(max_length=100_000))
    assert dropped.height == 0
    for messages, ids, labels in zip(
        pool["messages"].to_list(), out["input_ids"].to_list(), out["labels"].to_list(), strict=True
    ):
        want_ids, want_labels = _open_instruct_labels(messages, tok, "tulu")
        assert ids == want_ids and labels == want_labels
