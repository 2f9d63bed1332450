"""Pool reading, error reporting, write-back, chat segments, labels and truncation."""

from __future__ import annotations

import copy
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tokenizers import processors

from less_lab.config import DataConfig
from less_lab.data.formatting import IGNORE_INDEX, _truncate, format_segments, tokenize
from less_lab.data.pool import DataError, read_pool, read_pool_with_report, write_jsonl

POOL_COUNTS = {"cot": 5005, "flan_v2": 5448, "dolly": 151, "oasst1": 319, "self_instruct": 427}
GOOD = json.dumps(
    {
        "id": "g{}",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    }
)


def _good(i: int) -> str:
    return GOOD.replace("g{}", f"g{i}")


def _write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def _msgs(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"] * len(turns)
    return [{"role": r, "content": c} for r, c in zip(roles, turns, strict=False)]


def _frame(rows: list[list[dict[str, str]]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"example_id": [f"e{i}" for i in range(len(rows))], "messages": rows},
        schema={
            "example_id": pl.String,
            "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        },
    )


# --------------------------------------------------------------------------- real pool


@pytest.fixture(scope="module")
def pool(shared_data: Path) -> pl.DataFrame:
    return read_pool(shared_data / "pool")


def test_real_pool_rows_sources_and_multiturn(pool: pl.DataFrame, shared_data: Path) -> None:
    assert pool.height == 11_350
    counts = dict(pool.group_by("source").len().iter_rows())
    assert counts == POOL_COUNTS
    assert pool["example_id"].n_unique() == pool.height
    assert set(pool["format"]) == {"messages"}
    n_turns = pool["messages"].list.len()
    multi = pool.filter(n_turns > 2)
    assert multi.height == 42 and set(multi["source"]) == {"oasst1"}
    roles = multi["messages"][0].struct.field("role").to_list()
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    # file/line point back at the verbatim line
    for row in pool.sample(50, seed=0).iter_rows(named=True):
        lines = Path(row["file"]).read_text(encoding="utf-8").split("\n")
        assert lines[row["line"] - 1] == row["raw"]
        assert json.loads(row["raw"])["id"] == row["example_id"]


def test_write_jsonl_round_trip_is_byte_identical(pool: pl.DataFrame, tmp_path: Path) -> None:
    for file, part in pool.group_by("file", maintain_order=True):
        out = write_jsonl(part.sort("line"), tmp_path / "sub" / Path(file[0]).name)
        assert out.read_bytes() == Path(file[0]).read_bytes()
    # a selection keeps frame order and its own format
    pick = pool.sample(7, seed=1)
    out = write_jsonl(pick, tmp_path / "pick.jsonl")
    assert out.read_text(encoding="utf-8").splitlines() == pick["raw"].to_list()
    assert read_pool(out)["example_id"].to_list() == pick["example_id"].to_list()
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- bad input

BAD_LINES = {
    "malformed": ('{"messages": [', "malformed JSON"),
    "not_object": ("[1, 2]", "not an object"),
    "missing_role": (
        '{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}',
        "no 'role'",
    ),
    "unknown_role": (
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "unknown role",
    ),
    "no_assistant": ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    "empty_assistant": (
        '{"messages": [{"role": "user", "content": "x"}, '
        '{"role": "assistant", "content": " \\n "}]}',
        "empty assistant",
    ),
    "empty_completion": ('{"prompt": "x", "completion": "  "}', "empty completion"),
    "no_fields": ('{"text": "x"}', "no 'messages'"),
    "non_utf8": (b'{"prompt": "caf\xe9", "completion": "x"}', "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_names_file_and_line(case: str, tmp_path: Path) -> None:
    bad, needle = BAD_LINES[case]
    path = _write(tmp_path / f"{case}.jsonl", [_good(1), "", _good(2), bad, _good(3)])
    with pytest.raises(DataError) as info:
        read_pool(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: "), message
    assert needle in message and "expected" in message
    assert info.value.line == 4 and info.value.path == str(path)


def test_too_long_line_is_reported_and_skipped_in_chunks(tmp_path: Path) -> None:
    long = json.dumps({"prompt": "x" * 5000, "completion": "y"})
    path = _write(tmp_path / "long.jsonl", [_good(1), long, _good(2)])
    with pytest.raises(DataError, match=r"long\.jsonl:2: line longer than 1000 bytes"):
        read_pool(path, max_line_bytes=1000)
    frame, report = read_pool_with_report(path, max_line_bytes=1000)
    assert frame["example_id"].to_list() == ["g1", "g2"]
    assert frame["line"].to_list() == [1, 3]
    assert report.rows() == [(str(path), 2, "line longer than 1000 bytes; expected shorter lines")]
    assert read_pool(path, max_line_bytes=len(long)).height == 3  # the limit is inclusive


def test_duplicate_ids_name_both_locations(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_good(1), _good(2)])
    b = _write(tmp_path / "b.jsonl", [_good(3), _good(2)])
    with pytest.raises(DataError) as info:
        read_pool([a, b])
    assert str(info.value).startswith(f"{b}:2: duplicate id 'g2' (first at {a}:2)")


def test_skip_mode_counts_and_warns(tmp_path: Path) -> None:
    lines = [_good(1), "[1]", _good(2), '{"prompt": 1}', _good(3), _good(1)]
    path = _write(tmp_path / "mixed.jsonl", lines)
    with pytest.warns(
        UserWarning, match=r"skipped 3 bad line\(s\).*mixed\.jsonl:2: .*not an object"
    ):
        frame = read_pool(path, on_error="skip")
    assert frame["example_id"].to_list() == ["g1", "g2", "g3"]
    _, report = read_pool_with_report(path)
    assert report["line"].to_list() == [2, 4, 6]
    assert "duplicate id 'g1'" in report["reason"][2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_pool(_write(tmp_path / "clean.jsonl", [_good(1)]), on_error="skip")


def test_defaults_for_id_source_and_prompt_completion(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "Q?", "completion": " A."}',
        '{"prompt": "Q2", "completion": "B", "source": "mine", "id": 7}',
        '{"dataset": "d", "messages": [{"role": "system", "content": "s"}, '
        '{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}',
    ]
    (tmp_path / "dir").mkdir()
    _write(tmp_path / "dir" / "b_file.jsonl", lines)
    _write(tmp_path / "dir" / "a_file.jsonl", [_good(1)])
    (tmp_path / "dir" / "notes.txt").write_text("ignored")
    frame = read_pool(tmp_path / "dir")
    assert frame["example_id"].to_list() == ["g1", "b_file_1", "7", "b_file_3"]
    assert frame["source"].to_list() == ["a_file", "b_file", "mine", "d"]
    assert frame["format"].to_list() == [
        "messages",
        "prompt_completion",
        "prompt_completion",
        "messages",
    ]
    assert frame["messages"][1].to_list() == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": " A."},
    ]


# --------------------------------------------------------------------------- segments and labels


def test_tulu_segments_are_the_open_instruct_format(tiny_tokenizer) -> None:
    msgs = [{"role": "system", "content": "S"}] + _msgs("U1", "A1", "U2", "A2")
    segs = format_segments(msgs, tiny_tokenizer, "tulu")
    text = "".join(t for t, _ in segs)
    assert (
        text == "<|system|>\nS\n<|user|>\nU1\n<|assistant|>\nA1</s>\n"
        "<|user|>\nU2\n<|assistant|>\nA2</s>\n"
    )
    assert [t for t, c in segs if c] == ["A1</s>", "A2</s>"]


def test_template_segments_match_the_rendered_template(tiny_tokenizer) -> None:
    msgs = _msgs("U1", "A1", "U2", "A2")
    segs = format_segments(msgs, tiny_tokenizer, "template")
    rendered = tiny_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "".join(t for t, _ in segs) == rendered
    assert [t for t, c in segs if c] == ["A1</s>", "A2</s>"]


def test_inconsistent_template_is_refused(tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="prefixes consistently"):
        format_segments(_msgs("U", "A"), tok, "template")


def _completion_text(messages: list[dict[str, str]], eos: str) -> str:
    return "".join(m["content"] + eos for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("chat_format", ["tulu", "template"])
def test_labels_cover_exactly_the_completions(pool, tiny_tokenizer, chat_format) -> None:
    sample = pl.concat([pool.filter(pl.col("messages").list.len() > 2), pool.sample(300, seed=0)])
    tok, dropped = tokenize(
        sample, tiny_tokenizer, DataConfig(chat_format=chat_format, max_length=100_000)
    )
    assert dropped.height == 0 and tok["example_id"].to_list() == sample["example_id"].to_list()
    eos = tiny_tokenizer.eos_token
    for msgs, ids, labels, n_comp in zip(
        sample["messages"].to_list(), tok["input_ids"].to_list(), tok["labels"].to_list(),
        tok["n_completion_tokens"].to_list(), strict=True,
    ):  # fmt: skip
        ids, labels = np.array(ids), np.array(labels)
        mask = labels != IGNORE_INDEX
        assert (labels[mask] == ids[mask]).all() and mask.sum() == n_comp
        decoded = tiny_tokenizer.decode(ids[mask].tolist(), clean_up_tokenization_spaces=False)
        assert decoded == _completion_text(msgs, eos)
        n_turns = sum(m["role"] == "assistant" for m in msgs)
        assert np.count_nonzero(np.diff(np.r_[0, mask.astype(int)]) == 1) == n_turns
        whole = "".join(t for t, _ in format_segments(msgs, tiny_tokenizer, chat_format))
        assert tiny_tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False) == whole


def test_fast_path_equals_per_segment_definition(pool, tiny_tokenizer) -> None:
    sample = pool.sample(200, seed=3)
    cfg = DataConfig(max_length=100_000)
    tok, _ = tokenize(sample, tiny_tokenizer, cfg)
    for msgs, ids, labels in zip(
        sample["messages"].to_list(), tok["input_ids"], tok["labels"], strict=True
    ):
        want_ids: list[int] = []
        want_labels: list[int] = []
        for text, is_comp in format_segments(msgs, tiny_tokenizer, "tulu"):
            piece = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            want_ids += piece
            want_labels += piece if is_comp else [IGNORE_INDEX] * len(piece)
        assert ids.to_list() == want_ids and labels.to_list() == want_labels


def test_segments_are_tokenized_in_one_batched_call(pool, tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    calls: list[int] = []
    real = tok.backend_tokenizer

    class Counting:
        """Delegates to the real backend, counting calls of either batch encoder."""

        def __getattr__(self, name):
            return getattr(real, name)

        def encode_batch_fast(self, texts, **kw):
            calls.append(len(texts))
            return real.encode_batch_fast(texts, **kw)

        def encode_batch(self, texts, **kw):
            calls.append(len(texts))
            return real.encode_batch(texts, **kw)

    tok._tokenizer = Counting()  # the backend_tokenizer property returns this
    if tok.backend_tokenizer is not tok._tokenizer:
        pytest.skip("this transformers version does not expose _tokenizer")
    tokenize(pool.head(500), tok, DataConfig())
    big = [n for n in calls if n > 1]  # the 1-text call is the BOS probe
    assert len(big) == 1 and big[0] >= 500 and len(calls) <= 2


def test_bos_is_prepended_once_when_the_tokenizer_adds_it(tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    frame = _frame([_msgs("Hi", "There")])
    for chat_format in ("tulu", "template"):  # the template writes "<s>" itself
        out, _ = tokenize(frame, tok, DataConfig(chat_format=chat_format))
        ids, labels = out["input_ids"][0].to_list(), out["labels"][0].to_list()
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert labels[0] == IGNORE_INDEX
    plain, _ = tokenize(frame, tiny_tokenizer, DataConfig())
    assert tiny_tokenizer.bos_token_id not in plain["input_ids"][0].to_list()


# --------------------------------------------------------------------------- truncation


def _long_example(tiny_tokenizer, prompt_words=60, answer_words=3):
    msgs = _msgs(" ".join(f"w{i}" for i in range(prompt_words)), " ".join(["ok"] * answer_words))
    full, _ = tokenize(_frame([msgs]), tiny_tokenizer, DataConfig(max_length=100_000))
    ids, labels = full["input_ids"][0].to_list(), full["labels"][0].to_list()
    start = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    return msgs, ids, labels, start


def _run(tiny_tokenizer, msgs, max_length, truncation):
    cfg = DataConfig(max_length=max_length, truncation=truncation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, dropped = tokenize(_frame([msgs]), tiny_tokenizer, cfg)
    return (out.row(0, named=True) if out.height else None), dropped


def test_prompt_left_cuts_the_earliest_prompt_tokens(tiny_tokenizer) -> None:
    msgs, ids, labels, start = _long_example(tiny_tokenizer)
    row, _ = _run(tiny_tokenizer, msgs, len(ids) - 10, "prompt_left")
    assert row["input_ids"] == ids[10:] and row["labels"] == labels[10:]
    assert (row["n_prompt_tokens_cut"], row["n_completion_tokens_cut"]) == (10, 0)
    assert row["n_tokens"] == len(ids) - 10


def test_prompt_middle_cuts_the_middle_of_the_last_prompt(tiny_tokenizer) -> None:
    msgs, ids, labels, start = _long_example(tiny_tokenizer)
    row, _ = _run(tiny_tokenizer, msgs, len(ids) - 10, "prompt_middle")
    left = (start - 10) // 2
    assert row["input_ids"] == ids[:left] + ids[left + 10 :]
    assert row["labels"] == labels[:left] + labels[left + 10 :]
    assert row["n_prompt_tokens_cut"] == 10 and row["n_completion_tokens_cut"] == 0
    # multi-turn: only the last prompt span is cut; the first answer stays whole
    first = _msgs("short q", "first answer", " ".join(f"w{i}" for i in range(60)), "ok")
    full, _ = tokenize(_frame([first]), tiny_tokenizer, DataConfig(max_length=100_000))
    n = full["n_tokens"][0]
    row, _ = _run(tiny_tokenizer, first, n - 10, "prompt_middle")
    head = full["input_ids"][0].to_list()[:12]
    assert row["input_ids"][:12] == head and row["n_completion_tokens_cut"] == 0
    decoded = tiny_tokenizer.decode(row["input_ids"])
    assert "first answer</s>" in decoded and decoded.endswith("<|assistant|>\nok</s>\n")


def test_right_cuts_the_end_and_drops_answerless_examples(tiny_tokenizer) -> None:
    msgs, ids, labels, start = _long_example(tiny_tokenizer)
    n_comp = sum(x != IGNORE_INDEX for x in labels)
    row, dropped = _run(tiny_tokenizer, msgs, start + 2, "right")
    assert row["input_ids"] == ids[: start + 2] and dropped.height == 0
    assert row["n_completion_tokens"] == 2 and row["n_completion_tokens_cut"] == n_comp - 2
    cfg = DataConfig(max_length=start, truncation="right")
    with pytest.warns(UserWarning, match="dropped 1 example"):
        out, dropped = tokenize(_frame([msgs, _msgs("a", "b")]), tiny_tokenizer, cfg)
    assert out["example_id"].to_list() == ["e1"]
    assert dropped.rows() == [
        ("e0", f"no completion tokens left after 'right' truncation to {start}", len(ids))
    ]


def test_a_too_long_completion_loses_its_tail(tiny_tokenizer) -> None:
    msgs, ids, labels, start = _long_example(tiny_tokenizer, prompt_words=5, answer_words=80)
    n_comp = len(ids) - start - 1  # minus the trailing "\n"
    for mode in ("prompt_left", "prompt_middle"):
        row, _ = _run(tiny_tokenizer, msgs, 20, mode)
        assert row["input_ids"] == ids[start : start + 20]
        assert row["labels"] == row["input_ids"] and row["n_tokens"] == 20
        assert row["n_completion_tokens_cut"] == n_comp - 20
        assert row["n_prompt_tokens_cut"] == start + 1


def _reference_keep(comp: list[bool], head: int, max_length: int, mode: str) -> list[bool]:
    """Plain definition: remove tokens one at a time in the mode's order."""
    keep = [True] * len(comp)
    if mode == "right":
        return [i < max_length for i in range(len(comp))]
    order: list[int] = []
    if mode == "prompt_middle":
        last = max(i for i, c in enumerate(comp) if c)
        stop = last
        while stop > 0 and comp[stop - 1]:
            stop -= 1
        begin = stop
        while begin > head and not comp[begin - 1]:
            begin -= 1
        excess = len(comp) - max_length
        cut = min(excess, stop - begin)
        left = begin + (stop - begin - cut) // 2
        order += list(range(left, left + cut))
    order += [i for i, c in enumerate(comp) if not c and i >= head and i not in order]
    order += [i for i in reversed(range(len(comp))) if comp[i]]
    for i in order[: max(0, len(comp) - max_length)]:
        keep[i] = False
    return keep


def test_truncation_matches_the_plain_definition() -> None:
    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(2, 40)
        comp = [rng.random() < 0.4 for _ in range(n)]
        comp[rng.randrange(1, n)] = True
        head = rng.randint(0, 1)
        comp[0] = comp[0] and not head
        max_length = rng.randint(1, n + 2)
        for mode in ("prompt_left", "prompt_middle", "right"):
            got = _truncate(np.array(comp), head, max_length, mode).tolist()
            assert got == _reference_keep(comp, head, max_length, mode), (
                comp,
                head,
                max_length,
                mode,
            )


def test_whole_pool_tokenizes_in_seconds(pool, tiny_tokenizer) -> None:
    start = time.perf_counter()
    out, dropped = tokenize(pool, tiny_tokenizer, DataConfig(max_length=512))
    elapsed = time.perf_counter() - start
    assert out.height + dropped.height == pool.height and dropped.height == 0
    assert out["n_tokens"].max() <= 512 and out["n_completion_tokens"].min() > 0
    lengths = out["input_ids"].list.len()
    assert (lengths == out["n_tokens"]).all() and (out["labels"].list.len() == lengths).all()
    assert out["source"].to_list() == pool["source"].to_list()
    assert elapsed < 60, f"tokenize took {elapsed:.1f} s for {pool.height} examples"


def test_lone_surrogate_is_a_per_line_error_and_skip_keeps_the_rest(tmp_path):
    good = '{"id": "a", "prompt": "q", "completion": "fine"}'
    bad = '{"id": "b", "prompt": "q", "completion": "broken \\ud800 text"}'
    path = tmp_path / "pool.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    with pytest.raises(DataError, match=r"pool.jsonl:2: text holds an unpaired surrogate"):
        read_pool(path)
    frame, report = read_pool_with_report(path, on_error="skip")
    assert frame["example_id"].to_list() == ["a"]
    assert report.rows() == [(str(path), 2, "text holds an unpaired surrogate '\\ud800'; "
                                            "expected valid Unicode text")]  # fmt: skip


def test_gzip_pool_is_read_and_a_truncated_archive_names_its_file(tmp_path):
    import gzip

    line = '{"id": "a", "prompt": "q", "completion": "fine"}\n'
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(line.encode()))
    assert read_pool(tmp_path)["example_id"].to_list() == ["a"]
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress((line * 200).encode())[:40])
    with pytest.raises(DataError, match=r"x.jsonl.gz: cannot read"):
        read_pool(tmp_path)
