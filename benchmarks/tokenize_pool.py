"""Tokenizing the shared pool: whole-text encoding (today's ``tokenize``) against the
segment-wise encoding it replaced, side by side in one run.

The segment-wise method is kept below as it was on 2026-11-29 (each chat segment encoded
on its own, repeated segments once, all in one batched call, ids concatenated); the
whole-text method is ``less_lab.data.formatting.tokenize`` (open-instruct's: each example
encoded once, labels from prefix token lengths). Both run ``--repeats`` times, alternating,
on every tokenizer available here: the tiny in-process BPE and, when it is already
converted in the cache, SmolLM2's (nothing is converted or downloaded). Prints the best
time of each, the ratio whole/segments, and how many examples got different ids.

    python benchmarks/tokenize_pool.py --data ../shared/data --repeats 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from less_lab.config import DataConfig
from less_lab.data.batching import IGNORE
from less_lab.data.encoding import SpecialStrings, encode_plain
from less_lab.data.formatting import _adds_bos, _truncate, format_segments
from less_lab.data.formatting import tokenize as tokenize_whole
from less_lab.data.pool import read_pool
from less_lab.model.loading import SMOLLM2_CACHE_NAME, cache_root


def _encode_segments(tokenizer: Any, texts: list[str], specials: SpecialStrings) -> list[list[int]]:
    """The old per-segment encoder: plain pieces in one batched call, markers as ids."""
    plans = [specials.plan(text) for text in texts]
    pieces = list(dict.fromkeys(p for plan in plans for p in plan if isinstance(p, str)))
    encoded = dict(zip(pieces, encode_plain(tokenizer, pieces), strict=True))
    return [
        [i for p in plan for i in (encoded[p] if isinstance(p, str) else [p])] for plan in plans
    ]


def tokenize_segments(frame: pl.DataFrame, tokenizer: Any, cfg: DataConfig) -> pl.DataFrame:
    """The segment-wise ``tokenize`` as it was (dropped examples only counted here)."""
    specials = SpecialStrings(tokenizer)
    segments = [
        format_segments(specials.escape(m), tokenizer, cfg.chat_format)
        for m in frame["messages"].to_list()
    ]
    unique = list(dict.fromkeys(text for segs in segments for text, _ in segs))
    lookup = dict(zip(unique, _encode_segments(tokenizer, unique, specials), strict=True))
    bos = tokenizer.bos_token_id
    prefix = [bos] if _adds_bos(tokenizer) else []
    flat_ids: list[int] = []
    flat_labels: list[int] = []
    lengths, rows, dropped = [], [], []
    for row, segs in enumerate(segments):
        ids: list[int] = []
        labels: list[int] = []
        for text, is_completion in segs:
            piece = lookup[text]
            ids.extend(piece)
            labels.extend(piece if is_completion else [IGNORE] * len(piece))
        if prefix and (not ids or ids[0] != bos):
            ids, labels = prefix + ids, [IGNORE] + labels
        head = 1 if ids and bos is not None and ids[0] == bos else 0
        comp = np.asarray(labels, dtype=np.int64) != IGNORE
        keep = _truncate(comp, head, cfg.max_length, cfg.truncation)
        if not keep.all():
            kept = np.flatnonzero(keep)
            ids, labels = [ids[i] for i in kept], [labels[i] for i in kept]
        if not (comp & keep).any():
            dropped.append({"example_id": row, "reason": "empty", "n_tokens": len(comp)})
            continue
        flat_ids.extend(ids)
        flat_labels.extend(labels)
        lengths.append(len(ids))
        rows.append(row)
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int64))
    return pl.DataFrame(
        {
            "row": rows,
            "input_ids": pa.LargeListArray.from_arrays(offsets, pa.array(flat_ids, pa.int32())),
            "labels": pa.LargeListArray.from_arrays(offsets, pa.array(flat_labels, pa.int32())),
        }
    )


def _tokenizers() -> dict[str, Any]:
    from transformers import AutoTokenizer

    from less_lab.model.tiny import tiny_tokenizer

    found = {"tiny byte-level BPE": tiny_tokenizer()}
    path = cache_root() / "models" / SMOLLM2_CACHE_NAME
    if (path / "tokenizer.json").is_file():
        found["SmolLM2-135M-Instruct"] = AutoTokenizer.from_pretrained(path)
    else:
        print(f"(no converted SmolLM2 tokenizer at {path}: skipped, nothing converted)")
    return found


def compare(pool: pl.DataFrame, tokenizer: Any, cfg: DataConfig, repeats: int) -> None:
    best = {"segments": float("inf"), "whole": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        old = tokenize_segments(pool, tokenizer, cfg)
        best["segments"] = min(best["segments"], time.perf_counter() - start)
        start = time.perf_counter()
        new, dropped = tokenize_whole(pool, tokenizer, cfg)
        best["whole"] = min(best["whole"], time.perf_counter() - start)
    same_rows = old["row"].to_list() == list(range(new.height)) and dropped.height == 0
    differ = sum(
        a != b or c != d
        for a, b, c, d in zip(
            old["input_ids"].to_list(),
            new["input_ids"].to_list(),
            old["labels"].to_list(),
            new["labels"].to_list(),
            strict=False,
        )
    )
    ratio = best["whole"] / best["segments"]
    print(
        f"  segments {best['segments']:6.2f} s   whole {best['whole']:6.2f} s   "
        f"ratio {ratio:4.2f}   examples with other ids/labels: {differ}"
        + ("" if same_rows else " (kept rows differ)")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    pool = read_pool(args.data / "pool")
    print(f"{pool.height} pool examples, best of {args.repeats}")
    tokenizers = _tokenizers()
    for chat_format in ("tulu", "template"):
        cfg = DataConfig(max_length=args.max_length, chat_format=chat_format)
        for name, tokenizer in tokenizers.items():
            print(f"{name}, {chat_format}, max_length={args.max_length}:")
            compare(pool, tokenizer, cfg, args.repeats)


if __name__ == "__main__":
    main()
