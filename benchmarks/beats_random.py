"""Does any LESS variant beat random selection on real data? Paired over >= 3 seeds.

For each target (MMLU, BBH, TydiQA from ``../shared/data``), a stratified pool of 600
examples, and the methods: random, paper LESS, LESS with each named remedy
(``overrides.REMEDIES``; ``content_targets`` rather than ``content_tokens``: the pool
stores are reused), the demo's best remedy (``content_targets+subspace``), BM25 and RDS.
For every (method, seed): select 5% (30), fine-tune a fresh LoRA on it, keep the best
epoch by loss on the target's examples, then measure held-out loss and the task metric
on test questions never used as targets. A LESS seed is a warmup-subset seed (its own
warmup, stores and selection), paired with the random draw of the same seed.
``compare.beats_random`` gives the paired difference against random with a 95% Student-t
interval; the table and a plotly figure are written under ``--out/<target>/``.

Conditions (all flags), sized for about an hour on 2 CPU cores: SmolLM2-135M-Instruct in
its chat template, fp32, max_length 128 (targets, training, held-out loss; prompt-side
truncation), LoRA r=8/alpha=32 on the attention projections, warmup 5% (30 examples) x
1 epoch (one checkpoint; the paper's 4 are 4x the store cost) at lr 3e-4, batch 4;
d=8192 sparse sign sketch; pool: 120 per source (``stratified_sample``); fine-tuning 2
epochs with the warmup's settings, best epoch by target loss. Test: MMLU accuracy
(5-shot prompts cut to 512 tokens) and loss on 3 questions per subject (4 subjects);
BBH loss on 3 questions per task and CoT exact match on 1 per task (4 tasks, 96 new
tokens); TydiQA: no test set exists offline, so its metrics (``val_loss``, ``val_score``
= F1) are measured on the 9 target examples themselves: in-sample, an optimistic bound,
labelled as such.

Two phases: first the main methods (``--first``) on every target, so that a run stopped
early still answers the main question everywhere; then every method. Resumable: every
cell is cached under ``--out``; a finished run reprints its tables. At these settings the
whole run is about 4 hours of 2 CPU cores (a pool store build is 15-20 min per warmup
seed, a fine-tune cell 1-2 min).

    .venv/bin/python benchmarks/beats_random.py            # ~4 h on 2 cores
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch
from compare_methods import BBH, DATA, MMLU  # the same subtasks as the Table 3 pilot
from compare_methods import test_evals as mmlu_bbh_evals

from less_lab.compare import beats_random, compare, load_runs
from less_lab.config import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.data.pool import read_pool, stratified_sample
from less_lab.data.targets import read_targets
from less_lab.lab import Lab
from less_lab.views.paired import paired_figure

REMEDIES = (
    "zscore",
    "rank",
    "round_robin",
    "content_targets",
    "length_matched",
    "dedup",
    "subspace",
    "loss_drop",
)
BEST_ON_DEMO = "less+content_targets+subspace"
"""The remedy that meets both demo targets (``remedies_demo.py``)."""
METHODS = ("random", "less", *(f"less+{r}" for r in REMEDIES), BEST_ON_DEMO, "bm25", "rds")
FIRST = ("random", "less", "less+zscore", "less+content_targets", "less+length_matched",
         BEST_ON_DEMO, "bm25", "rds")  # fmt: skip
"""Run first for every target (``--first``), so that a run stopped early still answers
the main question on every target; then every method."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=Path("runs/beats_random"))
    p.add_argument("--pool-size", type=int, default=600)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-max-length", type=int, default=512)
    p.add_argument("--proj-dim", type=int, default=8192)
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--first", nargs="*", default=list(FIRST), help="methods run first")
    p.add_argument("--targets", nargs="+", default=["mmlu", "tydiqa", "bbh"])
    p.add_argument("--test-per-subtask", type=int, default=3)
    p.add_argument("--bbh-gen-per-task", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def build_lab(args) -> Lab:
    train = TrainConfig(
        epochs=args.warmup_epochs,
        learning_rate=3e-4,
        batch_size=4,
        token_budget=2048,
        lora=LoraSettings(r=8, alpha=32),
    )
    lab = Lab(
        args.out / "lab",
        data=DataConfig(max_length=args.max_length, chat_format="template"),
        warmup=WarmupConfig(fraction=0.05, seed=args.seeds[0], train=train),
        gradients=GradientConfig(proj_dim=args.proj_dim, token_budget=2048),
        select=SelectConfig(fraction=args.fraction),
    )
    pool = read_pool(args.data / "pool")
    lab.set_pool(stratified_sample(pool, args.pool_size, seed=0))
    ev = args.data / "eval"
    lab.add_target("mmlu", read_targets(ev / "mmlu").filter(pl.col("subtask").is_in(MMLU)))
    lab.add_target("bbh", read_targets(ev / "bbh").filter(pl.col("subtask").is_in(BBH)))
    lab.add_target("tydiqa", read_targets(ev / "tydiqa"))
    return lab


def test_evals(args, target: str, data_cfg: DataConfig) -> dict:
    """Held-out test evaluations, as ``compare_methods.py`` builds them for MMLU and BBH
    (the same flags); none for TydiQA: no test set offline."""
    return {} if target == "tydiqa" else mmlu_bbh_evals(args, target, data_cfg)


def report(out: Path, target: str) -> None:
    """The paired table, the selected completion lengths, and the figure."""
    runs = load_runs(out)
    metrics = [c for c in runs.columns if c == "val_loss" or c.startswith(f"{target}_")]
    metrics += ["val_score"] if target == "tydiqa" else []
    table, diffs = beats_random(runs, metrics)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=30):
        print(f"\n== {target}: paired differences against random (95% t interval)")
        print(table)
        print(
            diffs.select("method", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high", "better")
        )
    diffs.write_parquet(out / "paired.parquet")
    title = f"{target}: method - random, paired by seed"
    paired_figure(diffs, title).write_html(out / "beats_random.html", include_plotlyjs="directory")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    lab = build_lab(args)
    sources = lab.pool["source"].value_counts(sort=True).iter_rows()
    print(f"pool {lab.pool.height}: " + ", ".join(f"{s} {n}" for s, n in sources), flush=True)
    phases = [[m for m in args.methods if m in args.first], list(args.methods)]
    for methods in [p for i, p in enumerate(phases) if p and (i == 0 or p != phases[0])]:
        for target in args.targets:
            t0 = time.time()
            out = args.out / target
            finetune = replace(lab.warmup_cfg.train, epochs=args.finetune_epochs)
            compare(
                lab,
                target,
                methods=methods,
                fraction=args.fraction,
                seeds=args.seeds,
                train_cfg=finetune,
                evals=test_evals(args, target, lab.data_cfg),
                val_metric="val_loss",
                val_score=target == "tydiqa",
                out_dir=out,
            )
            report(out, target)
            print(f"{target} ({len(methods)} methods): {time.time() - t0:.0f} s", flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
