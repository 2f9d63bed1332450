"""Baselines (random, BM25, DSIR, RDS): hand-computed formulas, shared frame schema, and a
sanity run on real data."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from less_lab.config import DataConfig, LoraSettings, SelectConfig
from less_lab.core import baselines as B
from less_lab.core.baseline_common import frame_texts, word_tokens
from less_lab.core.baseline_dsir import ALL_TARGETS, dsir_resample, gumbel_top_k, hashed_ngrams
from less_lab.core.baseline_rds import last_token_states
from less_lab.core.scoring import SCORE_SCHEMA, aggregate
from less_lab.core.selection import select_top

REPO = Path(__file__).resolve().parents[2]
CFG = DataConfig(max_length=128)


def frame(texts, subtasks=None, answers=None, prefix="x") -> pl.DataFrame:
    """Examples with one user turn (and an assistant turn when ``answers`` is given)."""
    rows = []
    for i, text in enumerate(texts):
        msgs = [{"role": "user", "content": text}]
        if answers is not None:
            msgs.append({"role": "assistant", "content": answers[i]})
        row = {"example_id": f"{prefix}{i}", "source": f"src{i % 2}", "messages": msgs}
        if subtasks is not None:
            row["subtask"] = subtasks[i]
        rows.append(row)
    return pl.DataFrame(rows)


def matrix(scores: pl.DataFrame, ids, subtasks) -> np.ndarray:
    """(example, subtask) score matrix from a long frame, in the given orders."""
    lookup = {(e, s): v for e, s, v in scores.select("example_id", "subtask", "score").iter_rows()}
    return np.array([[lookup[(e, s)] for s in subtasks] for e in ids])


# ----------------------------------------------------------------------------- BM25

DOCS = ["the cat sat on the mat", "the dog sat", "a cat and the dog ran far away", "birds fly"]


def hand_bm25(docs, query, k1=1.5, b=0.75, eps=0.25):
    """BM25Okapi written out: idf = ln(N - df + .5) - ln(df + .5), negative idf floored
    at eps * (mean idf over the corpus vocabulary); query tokens counted with repeats."""
    n = len(docs)
    df = Counter(t for d in docs for t in set(d))
    idf = {t: math.log(n - f + 0.5) - math.log(f + 0.5) for t, f in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    floored = sorted(t for t, v in idf.items() if v < 0)
    idf = {t: (floor if v < 0 else v) for t, v in idf.items()}
    avgdl = sum(map(len, docs)) / n
    out = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for q in query:
            f = tf.get(q, 0)
            s += idf.get(q, 0.0) * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return np.array(out), floor, floored


def test_bm25_matches_hand_computation_and_subtask_mean() -> None:
    pool = frame(DOCS)
    queries = ["the cat", "dog dog sat zebra", "a cat ran"]
    targets = frame(queries, subtasks=["A", "A", "B"], prefix="t")
    got = B.bm25_scores(pool, targets, tokenizer=str.split)
    docs = [d.split() for d in DOCS]
    per_query = [hand_bm25(docs, q.split())[0] for q in queries]
    _, floor, floored = hand_bm25(docs, [])
    assert floor > 0 and floored == ["the"]  # the epsilon floor is exercised, non-zero
    expected = np.stack([(per_query[0] + per_query[1]) / 2, per_query[2]], 1)
    np.testing.assert_allclose(matrix(got, pool["example_id"], ["A", "B"]), expected, rtol=1e-12)
    # aggregation keeps each example's best subtask (Eq. 2's max)
    agg = aggregate(got)
    np.testing.assert_allclose(agg["score"].to_numpy(), expected.max(1), rtol=1e-12)
    assert agg["subtask"].to_list() == [["A", "B"][j] for j in expected.argmax(1)]


def test_bm25_fast_path_equals_rank_bm25_get_scores() -> None:
    from rank_bm25 import BM25Okapi

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(40)]
    docs = [" ".join(rng.choice(words, rng.integers(1, 30))) for _ in range(60)]
    queries = [" ".join(rng.choice(words + ["unseen"], rng.integers(1, 20))) for _ in range(7)]
    subs = ["p", "q", "p", "r", "q", "p", "r"]
    got = B.bm25_scores(frame(docs), frame(queries, subs, prefix="t"), k1=1.2, b=0.6)
    index = BM25Okapi([word_tokens(d) for d in docs], k1=1.2, b=0.6)
    ref = [
        np.mean(
            [
                index.get_scores(word_tokens(q))
                for q, s in zip(queries, subs, strict=True)
                if s == name
            ],
            0,
        )
        for name in ["p", "q", "r"]
    ]
    ids = [f"x{i}" for i in range(60)]
    np.testing.assert_allclose(matrix(got, ids, ["p", "q", "r"]), np.stack(ref, 1), rtol=1e-10)


def test_word_tokens_keeps_marks_and_splits_punctuation() -> None:
    words = ["hello", "world", "don", "t", "x", "3", "14"]
    assert word_tokens("Hello, World! don't_x 3.14") == words
    assert word_tokens("বাংলা ভাষা।") == ["বাংলা", "ভাষা"]  # vowel signs stay inside words


# ----------------------------------------------------------------------------- DSIR


def test_dsir_prefers_the_example_sharing_target_ngrams() -> None:
    filler = [
        "the weather today is mild and sunny",
        "stock prices rose on monday morning",
        "she plays the violin every evening",
        "repair the bicycle chain with oil",
    ]
    on = "quantum photon entanglement experiment measures spin"
    off = "bake the chocolate cake batter for an hour"
    pool = frame([off, on, *filler])
    targets = frame(
        ["a quantum photon entanglement experiment", "photon entanglement spin"],
        ["physics", "physics"],
        prefix="t",
    )
    for normalize in (False, True):
        got = B.dsir_scores(pool, targets, length_normalize=normalize)
        s = dict(zip(got["example_id"], got["score"], strict=True))
        assert s["x1"] > s["x0"] and s["x1"] == max(s.values())


def test_dsir_hashing_is_deterministic_across_processes() -> None:
    docs = [["alpha", "beta", "gamma"], ["beta", "gamma", "delta", "alpha"]]
    rows, buckets = hashed_ngrams(docs, 1000, 2, seed=7)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1]  # 7 unigrams + 5 bigrams
    again = hashed_ngrams(docs, 1000, 2, seed=7)[1]
    np.testing.assert_array_equal(buckets, again)
    code = (
        "from less_lab.core.baseline_dsir import hashed_ngrams;"
        "print(hashed_ngrams([['alpha','beta','gamma'],['beta','gamma','delta','alpha']],"
        " 1000, 2, seed=7)[1].tolist())"
    )
    for salt in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=salt)
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == str(buckets.tolist())
    # a unigram and the same words as a bigram land in the same buckets in every document
    assert buckets[1] == buckets[3] and buckets[8] == buckets[9]  # "beta", "beta gamma"
    assert buckets[0] == buckets[6]  # "alpha" in both documents
    swapped = hashed_ngrams([["x", "y"], ["y", "x"]], 2**20, 2)[1]
    assert swapped[4] != swapped[5]  # bigrams "x y" and "y x" differ: order matters
    other = hashed_ngrams(docs, 1000, 2, seed=8)[1]
    assert (other != buckets).any()


def test_dsir_log_weight_formula_by_hand() -> None:
    alpha, nb = 0.5, 3
    pool_docs = ["a b c", "c c", "d a"]
    target_docs = ["a a c", "b", "d d d e"]
    subs = ["s1", "s1", "s2"]
    bucket = {w: int(hashed_ngrams([[w]], nb, 1)[1][0]) for w in "abcde"}
    assert len(set(bucket.values())) > 1  # the case exercises more than one bucket

    def dist(texts):
        c = np.zeros(nb)
        for t in texts:
            for w in t.split():
                c[bucket[w]] += 1
        return (c + alpha) / (c.sum() + alpha * nb)

    raw = dist(pool_docs)
    got = B.dsir_scores(
        frame(pool_docs),
        frame(target_docs, subs, prefix="t"),
        n_buckets=nb,
        ngrams=1,
        smoothing=alpha,
        tokenizer=str.split,
    )
    for j, name in enumerate(["s1", "s2"]):
        tgt = dist([t for t, s in zip(target_docs, subs, strict=True) if s == name])
        for i, doc in enumerate(pool_docs):
            hand = sum(math.log(tgt[bucket[w]]) - math.log(raw[bucket[w]]) for w in doc.split())
            value = got.filter((pl.col("example_id") == f"x{i}") & (pl.col("subtask") == name))
            assert value["score"].item() == pytest.approx(hand, rel=1e-12, abs=1e-12), (i, j)
    pooled = B.dsir_scores(
        frame(pool_docs),
        frame(target_docs, subs, prefix="t"),
        n_buckets=nb,
        ngrams=1,
        smoothing=alpha,
        tokenizer=str.split,
        per_subtask=False,
        length_normalize=True,
    )
    tgt = dist(target_docs)
    hand = [
        np.mean([math.log(tgt[bucket[w]] / raw[bucket[w]]) for w in d.split()]) for d in pool_docs
    ]
    assert pooled["subtask"].unique().to_list() == [ALL_TARGETS]
    np.testing.assert_allclose(pooled["score"].to_numpy(), hand, rtol=1e-12)


def test_gumbel_top_k_samples_in_proportion_to_weights() -> None:
    lw = np.log([3.0, 1.0])
    first = [gumbel_top_k(lw, 1, seed=s)[0] for s in range(4000)]
    assert np.mean(np.array(first) == 0) == pytest.approx(0.75, abs=0.025)
    lw = np.array([0.0, np.nan, 1.0, -50.0])
    assert sorted(gumbel_top_k(lw, 10, seed=0).tolist()) == [0, 2, 3]  # NaN never drawn
    np.testing.assert_array_equal(gumbel_top_k(lw, 2, seed=5), gumbel_top_k(lw, 2, seed=5))


def test_dsir_resample_draws_k_seeded() -> None:
    pool = frame([f"word{i} common text here" for i in range(30)] + ["target words exactly"])
    targets = frame(["target words exactly"], ["t"], prefix="t")
    a = dsir_resample(pool, targets, SelectConfig(k=5), seed=1)
    b = dsir_resample(pool, targets, SelectConfig(k=5), seed=1)
    assert a.equals(b) and a.height == 5 and a["example_id"].n_unique() == 5
    assert a["rank"].to_list() == [1, 2, 3, 4, 5] and "x30" in a["example_id"].to_list()


# ----------------------------------------------------------------------------- RANDOM


def test_random_is_seeded_and_equal_across_subtasks() -> None:
    pool, targets = frame(["a", "b", "c", "d"]), frame(["q", "r"], ["s1", "s2"], prefix="t")
    a, b = B.random_scores(pool, targets, seed=4), B.random_scores(pool, targets, seed=4)
    assert a.equals(b) and not a.equals(B.random_scores(pool, targets, seed=5))
    m = matrix(a, pool["example_id"], ["s1", "s2"])
    np.testing.assert_array_equal(m[:, 0], m[:, 1])
    np.testing.assert_array_equal(aggregate(a)["score"].to_numpy(), m[:, 0])


# ----------------------------------------------------------------------------- RDS

PROMPTS = [
    "What is 3 plus 4?",
    "Explain why 9 is larger than 2 and say it twice.",
    "Hi",
    "Write a sentence about the number 7 and a dog who reads a book.",
]
ANSWERS = ["The answer is 7.", "Because it is.", "Hello there, my friend!", "A dog reads."]


def test_rds_states_do_not_depend_on_padding(tiny_model, tiny_tokenizer) -> None:
    pool = frame(PROMPTS, answers=ANSWERS)
    kw = dict(data_cfg=CFG, progress=False)
    ids, batched = last_token_states(tiny_model, tiny_tokenizer, pool, token_budget=4096, **kw)
    ids1, single = last_token_states(tiny_model, tiny_tokenizer, pool, max_batch_examples=1, **kw)
    assert ids == ids1 == pool["example_id"].to_list()
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    # the plain definition: full forward of one unpadded example, last hidden layer, last token
    from less_lab.data.formatting import tokenize

    tok, _ = tokenize(pool, tiny_tokenizer, CFG)
    assert tok["n_tokens"].n_unique() == len(PROMPTS)  # lengths differ: padding happened
    for row, input_ids in enumerate(tok["input_ids"].to_list()):
        with torch.no_grad():
            out = tiny_model(torch.tensor([input_ids]), output_hidden_states=True)
        np.testing.assert_allclose(batched[row], out.hidden_states[-1][0, -1].numpy(), atol=1e-5)


def test_rds_identical_example_scores_one(tiny_model, tiny_tokenizer) -> None:
    pool = frame(PROMPTS, answers=ANSWERS)
    targets = frame(PROMPTS[:2], ["a", "b"], ANSWERS[:2], prefix="t")
    got = B.rds_scores(tiny_model, tiny_tokenizer, pool, targets, data_cfg=CFG, progress=False)
    m = matrix(got, pool["example_id"], ["a", "b"])
    assert m[0, 0] == pytest.approx(1.0, abs=1e-6) and m[1, 1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(m < 1 + 1e-6) and m[0, 1] < 0.9999
    # a subtask's target is the mean of its (normalised) states: cosine with that mean
    two = frame(PROMPTS[:2], ["ab", "ab"], ANSWERS[:2], prefix="t")
    got2 = B.rds_scores(tiny_model, tiny_tokenizer, pool, two, data_cfg=CFG, progress=False)
    _, s = last_token_states(tiny_model, tiny_tokenizer, pool, data_cfg=CFG, progress=False)
    u = s / np.linalg.norm(s, axis=1, keepdims=True)
    mean = (u[0] + u[1]) / 2
    np.testing.assert_allclose(got2["score"].to_numpy(), u @ mean / np.linalg.norm(mean), atol=1e-6)


def test_rds_on_peft_model_uses_lora_in_eval_mode(tiny_model, tiny_tokenizer) -> None:
    from less_lab.model.lora import add_lora

    pool = frame(PROMPTS, answers=ANSWERS)
    kw = dict(data_cfg=CFG, progress=False)
    _, base = last_token_states(tiny_model, tiny_tokenizer, pool, **kw)
    peft = add_lora(tiny_model, LoraSettings(r=4, alpha=8, dropout=0.5), seed=0)
    peft.train()
    _, fresh = last_token_states(peft, tiny_tokenizer, pool, **kw)
    np.testing.assert_allclose(fresh, base, atol=1e-6)  # lora_B starts at zero
    assert peft.training  # the caller's mode is restored
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    _, a = last_token_states(peft, tiny_tokenizer, pool, **kw)
    _, b = last_token_states(peft, tiny_tokenizer, pool, **kw)
    np.testing.assert_array_equal(a, b)  # dropout off: eval mode during extraction
    assert np.abs(a - base).max() > 1e-3  # the adapter is part of the representation


def test_rds_dropped_pool_example_scores_nan(tiny_model, tiny_tokenizer) -> None:
    long = "one two three " * 40
    pool = frame([PROMPTS[0], long], answers=ANSWERS[:2])
    targets = frame(PROMPTS[:1], ["a"], ANSWERS[:1], prefix="t")
    cfg = DataConfig(max_length=48, truncation="right")  # cuts the long one's completion
    with pytest.warns(UserWarning, match="tokenize dropped 1 example"):
        got = B.rds_scores(tiny_model, tiny_tokenizer, pool, targets, data_cfg=cfg, progress=False)
    assert got["score"][0] == pytest.approx(1.0, abs=1e-6) and np.isnan(got["score"][1])
    assert select_top(aggregate(got), SelectConfig(k=2))["example_id"].to_list() == ["x0"]


# ----------------------------------------------------------------------------- shared


def test_every_scorer_returns_the_shared_frame(tiny_model, tiny_tokenizer) -> None:
    pool = frame(PROMPTS, answers=ANSWERS)
    targets = frame(PROMPTS[:3], ["s2", "s1", "s2"], ANSWERS[:3], prefix="t")
    for method in B.SCORERS:
        extra = (
            dict(model=tiny_model, tokenizer=tiny_tokenizer, data_cfg=CFG, progress=False)
            if method == "rds"
            else {}
        )
        got = B.baseline_scores(method, pool, targets, seed=1, **extra)
        assert got.schema == pl.Schema(SCORE_SCHEMA), method
        assert got.height == pool.height * 2, method
        assert got.select("example_id", "subtask").n_unique() == got.height, method
        assert set(got["subtask"]) == {"s1", "s2"} and got["score"].is_finite().all(), method
        assert got["source"].to_list()[:2] == ["src0", "src0"], method
        assert select_top(aggregate(got), SelectConfig(k=2)).height == 2
    with pytest.raises(ValueError, match="unknown baseline"):
        B.baseline_scores("tfidf", pool, targets)
    with pytest.raises(ValueError, match="model"):
        B.baseline_scores("rds", pool, targets)


# ----------------------------------------------------------------------------- real data


def test_bm25_and_dsir_on_real_pool_slice(shared_data: Path) -> None:
    from less_lab.data.pool import read_pool
    from less_lab.data.targets import read_targets

    pool = read_pool(shared_data / "pool").sample(500, seed=0)
    targets = read_targets(shared_data / "eval", task="mmlu")
    bm25 = B.bm25_scores(pool, targets)
    dsir = B.dsir_scores(pool, targets)
    n_sub = targets["subtask"].n_unique()
    assert bm25.height == dsir.height == 500 * n_sub == 500 * 57
    # Sanity of BM25's best example per subject, by idf-weighted shared distinct words:
    # (a) it shares more of the subject's vocabulary than the median pool example does;
    # (b) it shares more with its own subject than with most other subjects (wiring the
    #     columns to the wrong subjects drops the mean below 0.5; measured here: 0.82).
    docs = [set(word_tokens(t)) for t in frame_texts(pool)]
    df = Counter(w for d in docs for w in d)
    ids = pool["example_id"].to_list()
    subjects = sorted(targets["subtask"].unique())
    vocab = {
        s: set(word_tokens(" ".join(frame_texts(targets.filter(pl.col("subtask") == s)))))
        for s in subjects
    }

    def shared(doc: set[str], subject: str) -> float:
        return sum(math.log(500 / df[w]) for w in doc & vocab[subject])

    beats_others = []
    for name in subjects:
        col = bm25.filter(pl.col("subtask") == name).sort("score", descending=True)
        top = docs[ids.index(col["example_id"][0])]
        assert shared(top, name) > np.median([shared(d, name) for d in docs]), name
        others = [shared(top, s) for s in subjects if s != name]
        beats_others.append(np.mean(np.array(others) < shared(top, name)))
    assert np.mean(beats_others) > 0.7, np.mean(beats_others)
