"""Build every view at the paper's scale and print seconds and payload bytes per view.

An imported LESS run has 270,000 pool examples scored against up to 57 subtasks (MMLU):
a 15.4M-row score frame. This script builds that frame synthetically in the scorer's own
layout (example-major, as ``scoring.long_frame`` writes it), a pool with ``messages``, a
tokenized-lengths frame, store stats, two 5% selections and a neighbours table, then times
each view's construction (first draw included) and each static figure function, and
measures ``len(fig.to_json())``, the bytes sent to the browser. Goal: every row under
1 s and 5 MB.

    python benchmarks/views_at_scale.py                 # 270,000 x 57
    python benchmarks/views_at_scale.py --n 20000       # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from less_lab.views import plots  # noqa: E402
from less_lab.views.curves import LengthBiasView, SimilarityCurveView  # noqa: E402
from less_lab.views.frames import MAX_SUBTASK  # noqa: E402
from less_lab.views.widgets import (  # noqa: E402
    NeighborsView,
    SubsetDistributionView,
    TopExamplesView,
)

SOURCES = ("flan_v2", "cot", "dolly", "oasst1")


def synthetic(n: int, k: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Score frame (n*k rows), pool, tokenized lengths, store stats, selections."""
    rng = np.random.default_rng(seed)
    ids = pl.Series("example_id", [f"ex{i:06d}" for i in range(n)])
    source = pl.Series("source", [SOURCES[i % len(SOURCES)] for i in range(n)])
    subtasks = pl.Series("subtask", [f"subject_{j:02d}" for j in range(k)])
    rows = np.repeat(np.arange(n), k)
    scores = pl.DataFrame(
        {
            "example_id": ids.gather(rows),
            "source": source.gather(rows),
            "subtask": subtasks.gather(np.tile(np.arange(k), n)),
            "score": rng.normal(0.0, 0.05, n * k),
        }
    )
    text = [f"Question {i}: what is {i} + {i}? <b>bold</b> & more words here" for i in range(n)]
    messages = [
        [{"role": "user", "content": t}, {"role": "assistant", "content": f"It is {2 * i}."}]
        for i, t in enumerate(text)
    ]
    pool = pl.DataFrame({"example_id": ids, "source": source, "messages": messages})
    completion = rng.lognormal(3.5, 1.0, n).astype(np.int64) + 1
    tokenized = pl.DataFrame(
        {
            "example_id": ids,
            "n_tokens": completion + rng.integers(10, 400, n),
            "n_completion_tokens": completion,
        }
    )
    stats = pl.DataFrame(
        {
            "example_id": ids,
            "grad_norm": 1 / np.sqrt(completion) + rng.random(n),
            "feature_norm": 1 / np.sqrt(completion) + rng.random(n),
        }
    )
    top = max(1, n // 20)
    less = pl.DataFrame({"example_id": ids.gather(rng.permutation(n)[:top])})
    random = pl.DataFrame({"example_id": ids.gather(rng.permutation(n)[:top])})
    return dict(scores=scores, pool=pool, tokenized=tokenized, stats=stats,
                selections={"LESS": less, "random": random})  # fmt: skip


def neighbors(d: dict) -> tuple[dict, pl.DataFrame]:
    ids = d["pool"]["example_id"]
    by_method = {
        m: pl.DataFrame({"example_id": ids.gather(np.arange(j, j + 10)),
                         "score": np.linspace(1, 0.5, 10), "rank": np.arange(1, 11)})
        for j, m in enumerate(("LESS", "BM25", "RDS"))
    }  # fmt: skip
    targets = pl.DataFrame(
        {
            "example_id": ["t0"],
            "subtask": ["subject_00"],
            "messages": [
                [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]
            ],
        }
    )
    return {"t0": by_method}, targets


def cases(d: dict) -> dict:
    """Name -> function returning the figure to measure (views: the view's figure)."""
    sels, pool, tok, scores = d["selections"], d["pool"], d["tokenized"], d["scores"]
    neigh, targets = neighbors(d)
    return {
        "TopExamplesView": lambda: TopExamplesView(scores, pool, tok).fig,
        "SimilarityCurveView (all subtasks)": lambda: SimilarityCurveView(scores).fig,
        "SubsetDistributionView (+pool)": lambda: (
            SubsetDistributionView(sels, pool, include_pool=True).fig
        ),
        "LengthBiasView (+pool)": lambda: (
            LengthBiasView(sels, tok, d["stats"], include_pool=True).fig
        ),  # fmt: skip
        "NeighborsView": lambda: NeighborsView(neigh, pool, targets).fig,
        "top_examples_figure (max)": lambda: plots.top_examples_figure(scores, pool, None, 10),
        "top_examples_figure (negative)": lambda: plots.top_examples_figure(
            scores, pool, None, 10, negative=True
        ),
        "top_examples_figure (one subtask)": lambda: plots.top_examples_figure(
            scores, pool, "subject_03", 10
        ),
        "similarity_curve_figure (all)": lambda: plots.similarity_curve_figure(scores),
        "similarity_curve_figure (max)": lambda: plots.similarity_curve_figure(
            scores, [MAX_SUBTASK]
        ),
        "subset_distribution_figure": lambda: plots.subset_distribution_figure(
            sels, pool, include_pool=True
        ),
        "length_bias_figure (+pool)": lambda: plots.length_bias_figure(
            sels, tok, include_pool=True
        ),
        "norm_vs_length_figure": lambda: plots.norm_vs_length_figure(d["stats"], tok),
        "neighbors_figure": lambda: plots.neighbors_figure(neigh["t0"], pool),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=270_000, help="pool examples")
    parser.add_argument("--k", type=int, default=57, help="target subtasks")
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = synthetic(args.n, args.k)
    print(f"synthetic data: {data['scores'].height:,} scores ({args.n:,} x {args.k}), "
          f"built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    rows = []
    for name in cases(data):
        # a fresh frame object per row: nothing remembered from an earlier row (cold)
        build = cases({**data, "scores": data["scores"].clone()})[name]
        start = time.perf_counter()
        fig = build()
        seconds = time.perf_counter() - start
        payload = len(fig.to_json())
        ok = "yes" if seconds < 1 and payload < 5e6 else "NO"
        rows.append((name, seconds, payload, ok))
    print("\n| view / figure | build s | payload bytes | < 1 s and < 5 MB |")
    print("|---|---|---|---|")
    for name, seconds, payload, ok in rows:
        print(f"| {name} | {seconds:.2f} | {payload:,} | {ok} |")


if __name__ == "__main__":
    main()
