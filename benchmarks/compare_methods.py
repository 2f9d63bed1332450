"""LESS vs random, BM25, DSIR and RDS on real data at a CPU-feasible scale (Table 3).

What it runs (every number is a flag; defaults sized for ~30 min on 2 busy shared cores,
where one torch thread beats two: OpenMP threads spin against other people's jobs):

* model: SmolLM2-135M-Instruct (embedded), fp32, for selection *and* fine-tuning; text in
  its own chat template (``--chat-format template``: under the Tulu format the untrained
  model answered 7 of 12 cut BBH prompts with a bare "A:");
* pool: a stratified 200-example sample of ``/work/shared/data/pool`` (each source file
  keeps its share; seed 0); ``max_length`` 160 tokens with prompt-side truncation, which
  applies to targets and held-out loss prompts too (MMLU's 5-shot and BBH's 3-shot
  contexts are mostly cut: effectively 0-1 shots; answers are never cut). Accuracy and
  exact match read the full prompts (``--eval-max-length`` 1024): cut to 160 tokens the
  base model's BBH exact match was 0/12, with the full 3-shot prompt 3/12;
* targets: 4 MMLU subjects x 5 dev shots and 4 BBH tasks x 3 CoT shots (subsets, so that
  target gradients and the per-epoch validation loss stay cheap); each target is compared
  separately, as in the paper;
* LESS: warmup on 5% of the pool (10 examples) for 2 epochs (2 checkpoints), LoRA
  r=8/alpha=32 on q,k,v,o, lr 3e-4, batch 4; Adam features projected to d=2048 (sparse
  sign sketch); scores as Eq. 2 (cosine to each subtask's mean target gradient, max);
* selection: 10% of the pool (20 examples) per method (DSIR resampled by importance
  weight; RDS from the base model's last-token states); fine-tuning: a fresh LoRA with
  the warmup's settings for 2 epochs, best epoch by loss on the target's shots;
* seeds: 1 (seed 0) by default -- a second LESS seed needs a second warmup and datastore,
  which this budget does not hold; stds are then empty. ``--seeds 0 1 2`` adds them;
* test (never the shots): held-out loss on 3 test questions per subject/task formatted
  like the targets (completion = the answer letter / the BBH target), MMLU accuracy on the
  same questions, BBH CoT exact match on 2 questions per task (greedy, 128 new tokens).

At this scale differences between methods are mostly noise (20 fine-tuning examples, 10
optimizer steps, a 135M model, 3 test questions per subtask); the run shows the pipeline
end to end and the selection diagnostics the paper discusses (completion length, source
concentration, subtasks covered).

    flock /tmp/less_lab_cpu.lock .venv/bin/python benchmarks/compare_methods.py

(run without ``flock`` the script takes that lock itself; under ``flock`` it sees the
inherited lock descriptor and does not wait for itself). Stages are cached under
``--out``: a killed run resumes where it stopped; a finished one reprints its table.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch

from less_lab.compare import compare, paper_table
from less_lab.config import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.data.pool import read_pool
from less_lab.data.targets import read_targets
from less_lab.evaluate.evaluators import make_eval
from less_lab.lab import Lab

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MMLU = ["high_school_geography", "marketing", "us_foreign_policy", "nutrition"]
BBH = ["boolean_expressions", "navigate", "sports_understanding", "web_of_lies"]
LOCK = "/tmp/less_lab_cpu.lock"


def stratified_pool(pool_dir: Path, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` examples, each source keeping its share of the pool (at least one)."""
    pool = read_pool(pool_dir)
    parts = []
    for _, group in pool.group_by("source", maintain_order=True):
        k = max(1, round(n * group.height / pool.height))
        parts.append(group.sample(min(k, group.height), seed=seed))
    return pl.concat(parts).sort("file", "line")


@contextmanager
def cpu_lock(path: str = LOCK):
    """Hold the shared benchmark lock, unless an ancestor (``flock path cmd``) holds it
    already: flock(1) passes its locked descriptor down, and locking a second descriptor
    of the same file would wait forever."""
    inherited = False
    for fd in os.listdir("/proc/self/fd"):
        try:
            inherited |= os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            continue
    if inherited:
        yield
        return
    with open(path, "a") as fh:
        print(f"waiting for {path} ...", flush=True)
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=Path("/tmp/less_lab_compare"))
    p.add_argument("--pool-size", type=int, default=200)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--chat-format", choices=["template", "tulu"], default="template")
    p.add_argument("--eval-max-length", type=int, default=1024)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--proj-dim", type=int, default=2048)
    p.add_argument("--fraction", type=float, default=0.10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["less", "random", "bm25", "dsir", "rds"])
    p.add_argument("--targets", nargs="+", default=["mmlu", "bbh"], choices=["mmlu", "bbh"])
    p.add_argument("--test-per-subtask", type=int, default=3)
    p.add_argument("--bbh-gen-per-task", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def build_lab(args) -> Lab:
    train = TrainConfig(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch,
        token_budget=2048,
        lora=LoraSettings(r=args.lora_r, alpha=4 * args.lora_r),
    )
    lab = Lab(
        args.out / "lab",
        data=DataConfig(max_length=args.max_length, chat_format=args.chat_format),
        warmup=WarmupConfig(fraction=0.05, seed=args.seeds[0], train=train),
        gradients=GradientConfig(proj_dim=args.proj_dim, token_budget=2048),
        scoring=ScoreConfig(),
        select=SelectConfig(fraction=args.fraction),
    )
    lab.set_pool(stratified_pool(args.data / "pool", args.pool_size))
    eval_dir = args.data / "eval"
    mmlu = read_targets(eval_dir / "mmlu")
    lab.add_target("mmlu", mmlu.filter(pl.col("subtask").is_in(MMLU)))
    bbh = read_targets(eval_dir / "bbh")
    lab.add_target("bbh", bbh.filter(pl.col("subtask").is_in(BBH)))
    return lab


def test_evals(args, target: str, data_cfg: DataConfig) -> dict:
    """Accuracy / exact match see the full few-shot prompt (``--eval-max-length``); the
    held-out losses use the training length, like the targets."""
    eval_dir, n = args.data / "eval", args.test_per_subtask
    full = replace(data_cfg, max_length=args.eval_max_length)
    if target == "mmlu":
        kw = dict(subjects=MMLU, max_per_subtask=n)
        return {
            "mmlu": make_eval("mmlu", eval_dir / "mmlu", data_cfg=full, **kw),
            "mmlu_test": make_eval("mmlu-loss", eval_dir / "mmlu", data_cfg=data_cfg, **kw),
        }
    gen = dict(
        tasks=BBH,
        data_cfg=full,
        max_per_subtask=args.bbh_gen_per_task,
        max_new_tokens=args.max_new_tokens,
    )
    return {
        "bbh": make_eval("bbh", eval_dir / "bbh", **gen),
        "bbh_test": make_eval(
            "bbh-loss", eval_dir / "bbh", tasks=BBH, data_cfg=data_cfg, max_per_subtask=n
        ),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with cpu_lock():
        start = time.time()
        lab = build_lab(args)
        print(
            f"pool {lab.pool.height} examples: "
            + ", ".join(
                f"{s} {n}" for s, n in lab.pool["source"].value_counts(sort=True).iter_rows()
            )
            + "; targets "
            + ", ".join(f"{k} {v.height}" for k, v in lab.targets.items()),
            flush=True,
        )
        for target in args.targets:
            t0 = time.time()
            evals = test_evals(args, target, lab.data_cfg)
            table = compare(
                lab,
                target,
                methods=args.methods,
                fraction=args.fraction,
                seeds=args.seeds,
                evals=evals,
                out_dir=args.out / "compare" / target,
            )
            metric_cols = [c[:-5] for c in table.columns if c.endswith("_mean")]
            shown = [
                "val_loss",
                *[m for m in metric_cols if m.startswith(f"{target}_")],
                "best_epoch",
                "sel_completion_tokens",
                "sel_top_source_share",
                "sel_n_subtasks",
            ]
            with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
                print(f"\n== target {target} ({time.time() - t0:.0f} s)")
                print(paper_table(table, shown, digits=3))
        print(
            f"\nsettings: pool {args.pool_size}, max_length {args.max_length}, LoRA r "
            f"{args.lora_r}, epochs {args.epochs}, lr {args.lr}, batch {args.batch}, d "
            f"{args.proj_dim}, selection {args.fraction:.0%}, seeds {args.seeds}, test "
            f"{args.test_per_subtask}/subtask (BBH EM {args.bbh_gen_per_task}/task)"
        )
        print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
