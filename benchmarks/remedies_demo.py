"""Every remedy on the demo's own warmup: does the selection find the target skills?

Runs (or reuses) ``less-lab demo``'s run directory, then selects with the paper's method
and with each named remedy (``overrides.REMEDIES``, some combined) on the same warmup, and
prints, per remedy: the share of the headline picks (28 = 10% of the 280-example pool)
that have a skill the targets test (pool share 30%), and for each target subtask the
share of its own skill in that subtask's top 28 over the skill's pool share (the
issue's targets: >= 50% and >= 2x). Every remedy is reported, failures included.

    .venv/bin/python benchmarks/remedies_demo.py [--out runs/demo] [--warmup-seeds 1 2]
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from less_lab.demo import DEMO_REMEDIES, demo_lab, remedy_report, why_line

EXTRA = (
    "content_tokens",
    "zscore+content_tokens",
    "round_robin+content_tokens",
    "loss_drop",
    "zscore+length_matched",
    "zscore+dedup",
    "zscore+content_targets+subspace",
    "round_robin+content_targets+subspace",
    "content_targets+subspace+length_matched",
    "content_tokens+subspace",
)


def seed_table(lab, remedies: list[str]) -> pl.DataFrame:
    """Every remedy's row (and the paper's) on one warmup, best first."""
    lab.warmup()
    paper = lab.select("demo")
    print("why (paper):", why_line(lab.subtask_scores("demo"), paper.frame, len(paper)))
    rows = []
    for name in remedies:
        t0 = time.time()
        rows.append(remedy_report(lab, (name,)).filter(pl.col("remedy") == name))
        print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
    table = pl.concat([remedy_report(lab, ()), *rows], how="diagonal")
    return table.sort(["target_skill_share", "min_subtask_ratio"], descending=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--remedies", nargs="+", default=[*DEMO_REMEDIES, *EXTRA])
    p.add_argument(
        "--warmup-seeds",
        type=int,
        nargs="*",
        default=[],
        help="also on these warmup subsets (each its own warmup and stores, ~10 min)",
    )
    args = p.parse_args()
    start = time.time()
    lab = demo_lab(args.out, progress=False)
    for seed in [lab.warmup_cfg.seed, *args.warmup_seeds]:
        print(f"\n== warmup seed {seed}", flush=True)
        table = seed_table(lab.for_warmup_seed(seed), args.remedies)
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_float="mixed"):
            print(table)
        both = (pl.col("target_skill_share") >= 0.5) & (pl.col("min_subtask_ratio") >= 2.0)
        ok = table.filter(both)["remedy"].to_list()
        print(f"meet both targets (>= 50% target-skill picks, every subtask >= 2x): {ok or 'none'}")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
