"""Rerun the pilot that found LESS selecting noise, and print every reliability diagnostic.

Setting (DESIGN §2 pilot): SmolLM2-135M-Instruct, a 600-example pool drawn from
``../shared/data/pool`` stratified by source, LoRA r=8 (alpha 32), a warmup of 2 epochs
(2 checkpoints) on 5% of it, max_length 256 (prompt cut from the left), BBH (27 x 3 shots)
and MMLU (57 x 5) targets, k=60 selected, a fresh LoRA fine-tuned on each selection and its
answer loss measured on held-out *test* questions of the target (never the shots LESS
selected with). Methods: LESS with the paper's max over subtasks, LESS balanced (round
robin over subtasks), LESS exact (unprojected features, max), random and BM25.

Text goes through SmolLM2's own chat template (``--chat-format template``): in the tulu
format the untrained model's answer loss is >10 nats, so a held-out loss would measure how
fast each selection teaches the format, not the task. Target and held-out answers carry
no leading space for the same reason (see :mod:`less_lab.targets`).

Seeds: each seed is a fine-tuning seed (LoRA init, data order, dropout) and, for random,
the draw. The warmup, hence every LESS selection, is shared: one warmup per seed would
triple the gradient work this 2-core budget cannot afford, so the spread shown is that of
fine-tuning (and of the random draw), not of the warmup.

Exact and projected features come from ONE gradient pass: the exact (``projection="none"``)
store is built first, and the d=2048 Rademacher store is its projection. The projection is
linear, so this equals projecting on the fly (checked on a few examples, printed).

Every stage is cached under ``--out``; rerunning the same command resumes. Others share
these cores: always run it under the lock::

    flock /tmp/less_lab_cpu.lock .venv/bin/python benchmarks/reliability_pilot.py \\
        --out /tmp/reliability_pilot
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from less_lab.checks.adam_health import adam_health  # noqa: E402
from less_lab.checks.diagnostics import summary, truncation_report  # noqa: E402
from less_lab.checks.reliability import agreement, split_half  # noqa: E402
from less_lab.config import (  # noqa: E402
    DataConfig,
    GradientConfig,
    LoraSettings,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.core import baselines, pipeline  # noqa: E402
from less_lab.core.datastore import build_store  # noqa: E402
from less_lab.core.projection import make_projector  # noqa: E402
from less_lab.core.scoring import aggregate  # noqa: E402
from less_lab.core.selection import select_balanced, select_top, selection_report  # noqa: E402
from less_lab.core.training import train_lora  # noqa: E402
from less_lab.data import evalsets  # noqa: E402
from less_lab.data.batching import collate, token_budget_batches  # noqa: E402
from less_lab.data.formatting import tokenize  # noqa: E402
from less_lab.data.pool import read_pool  # noqa: E402
from less_lab.data.targets import read_targets  # noqa: E402
from less_lab.evaluate import evaluators as evaluation  # noqa: E402
from less_lab.evaluate.finetune import clean_copy  # noqa: E402
from less_lab.evaluate.inference import inference  # noqa: E402
from less_lab.model.loading import load_model, model_fingerprint  # noqa: E402
from less_lab.model.lora import add_lora, completion_token_losses  # noqa: E402

TARGETS = ("bbh", "mmlu")
METHODS = ("less_max", "less_balanced", "less_exact", "random", "bm25")
T0 = time.time()
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% t critical values by degrees of freedom (seeds - 1)."""


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def stratified(pool: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """``n`` examples, each source getting its share of the pool (largest remainder)."""
    counts = pool["source"].value_counts().sort("source")
    quota = counts["count"].to_numpy() * n / pool.height
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    parts = [
        pool.filter(pl.col("source") == s).sample(int(t), seed=seed)
        for s, t in zip(counts["source"], take, strict=True)
    ]
    return pl.concat(parts).sort("example_id")


def derive_projected(exact, path: Path, projector, settings: dict, batch: int = 150):
    """The projected store of an exact store: same rows, same stats, features projected."""
    sizes = list(projector.block_sizes)

    def compute(rows):
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            x = torch.from_numpy(np.asarray(exact.features[part], dtype=np.float32))
            feats = projector.project(list(torch.split(x, sizes, dim=1)))
            stats = torch.tensor(exact.stats[part].to_numpy(), dtype=torch.float32)
            yield SimpleNamespace(
                rows=part,
                features=feats,
                loss=stats[:, 0],
                grad_norm=stats[:, 1],
                feature_norm=stats[:, 2],
            )

    return build_store(path, settings, exact.ids, compute, progress=False)


def cached_frame(path: Path, make) -> pl.DataFrame:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make().write_parquet(path)
    return pl.read_parquet(path)


def setup(args):
    model, tok = load_model()
    fp = model_fingerprint(model)
    data = Path(args.data)
    pool = stratified(read_pool(data / "pool"), args.pool_size, seed=0)
    dcfg = DataConfig(max_length=args.max_length, chat_format=args.chat_format)
    tok_pool, dropped = tokenize(pool, tok, dcfg)
    targets = {
        "bbh": read_targets(data / "eval" / "bbh"),
        "mmlu": read_targets(data / "eval" / "mmlu"),
    }
    keep = {
        t: sorted(f["subtask"].unique().to_list())[: args.target_subtasks]
        for t, f in targets.items()
    }  # all unless --target-subtasks (smoke runs)
    targets = {t: f.filter(pl.col("subtask").is_in(keep[t])) for t, f in targets.items()}
    tok_targets = {t: tokenize(f, tok, dcfg)[0] for t, f in targets.items()}
    heldout = {
        "bbh": evalsets.bbh_examples(
            data / "eval" / "bbh", max_per_task=args.heldout_bbh, tasks=keep["bbh"]
        ),
        "mmlu": evalsets.mmlu_examples(
            data / "eval" / "mmlu", max_per_subject=args.heldout_mmlu, subjects=keep["mmlu"]
        ),
    }
    tok_heldout = {t: tokenize(evaluation.as_targets(f), tok, dcfg)[0] for t, f in heldout.items()}
    lora = LoraSettings(r=8, alpha=32, dropout=0.1)
    warm = WarmupConfig(
        fraction=0.05,
        seed=0,
        train=TrainConfig(epochs=2, learning_rate=args.lr, batch_size=8, lora=lora),
    )
    ft = TrainConfig(epochs=args.ft_epochs, learning_rate=args.ft_lr, batch_size=8, lora=lora)
    return SimpleNamespace(
        model=model,
        tok=tok,
        fp=fp,
        pool=pool,
        tok_pool=tok_pool,
        dropped=dropped,
        targets=targets,
        tok_targets=tok_targets,
        tok_heldout=tok_heldout,
        warm=warm,
        ft=ft,
        dcfg=dcfg,
    )


def build_stores(s, args, out: Path):
    """Warmup, exact stores (one gradient pass), projected stores derived from them."""
    peft = add_lora(clean_copy(s.model), s.warm.train.lora, seed=0)
    ckpts = pipeline.warmup(
        peft,
        s.tok_pool,
        s.warm,
        out / "warmup",
        pad_id=s.tok.pad_token_id,
        model_fingerprint=s.fp,
        progress=False,
    )
    log(f"warmup done: {len(ckpts)} checkpoints, lrs {[f'{c.lr:.2g}' for c in ckpts]}")
    # ~2.3 MB of activations per token: a 3072-token budget keeps a batch near 7 GB
    exact_cfg = GradientConfig(projection="none", token_budget=3072, max_batch_examples=16)
    proj_cfg = GradientConfig(projection="rademacher", proj_dim=args.d, proj_seed=0)
    splits = {"pool": (s.tok_pool, "adam"), **{t: (s.tok_targets[t], "sgd") for t in TARGETS}}
    stores = {"exact": {}, "proj": {}}
    for split, (tokd, feature) in splits.items():
        stores["exact"][split], stores["proj"][split] = [], []
        for c in ckpts:
            ex = pipeline.extract_store(
                peft,
                tokd,
                out / "stores" / split / c.path.name / "exact",
                split=split,
                feature=feature,
                cfg=exact_cfg,
                checkpoint=c,
                pad_id=s.tok.pad_token_id,
                model_fingerprint=s.fp,
                progress=False,
            )
            sizes = ex.meta["projection"]["block_sizes"]
            projector = make_projector("rademacher", sizes, args.d, 0)
            settings = pipeline.store_settings(
                split,
                feature,
                proj_cfg,
                projector,
                model_fp=s.fp,
                checkpoint=c,
                data_fp=pipeline.data_fingerprint(tokd),
            )
            pr = derive_projected(
                ex, out / "stores" / split / c.path.name / f"rad{args.d}", projector, settings
            )
            stores["exact"][split].append(ex)
            stores["proj"][split].append(pr)
        log(f"stores of {split} ready ({len(tokd)} examples)")
    check = out / "projection_check.json"
    if not check.exists():  # the derived store equals on-the-fly projection
        small = s.tok_pool[:4]
        direct = pipeline.extract_store(
            peft,
            small,
            out / "check",
            split="pool",
            feature="adam",
            cfg=proj_cfg,
            checkpoint=ckpts[-1],
            pad_id=s.tok.pad_token_id,
            model_fingerprint=s.fp,
            progress=False,
        )
        a = np.asarray(direct.features)
        b = np.asarray(stores["proj"]["pool"][-1].features[:4])
        check.write_text(json.dumps({"max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max())}))
    return peft, ckpts, stores


def score_all(s, args, out, ckpts, stores):
    lrs = [c.lr for c in ckpts]
    scores = {}
    for t in TARGETS:
        for kind, cfg in (("proj", ScoreConfig()), ("exact", ScoreConfig(chunk_rows=32))):
            path = out / "scores" / f"{t}-{kind}.parquet"
            long = cached_frame(
                path,
                lambda kind=kind, cfg=cfg, t=t: pipeline.score(
                    stores[kind]["pool"], stores[kind][t], s.targets[t], lrs, cfg, s.pool
                )[0],
            )
            scores[t, kind] = (long, aggregate(long))
        long = cached_frame(
            out / "scores" / f"{t}-bm25.parquet",
            lambda t=t: baselines.baseline_scores("bm25", s.pool, s.targets[t]),
        )
        scores[t, "bm25"] = (long, aggregate(long))
    return scores, lrs


def selections(s, args, scores, t: str, seed: int) -> dict[str, pl.DataFrame]:
    cfg = SelectConfig(k=args.k)
    rand = baselines.random_scores(s.pool, s.targets[t], seed=seed)
    return {
        "less_max": select_top(scores[t, "proj"][1], cfg),
        "less_balanced": select_balanced(scores[t, "proj"][0], cfg),
        "less_exact": select_top(scores[t, "exact"][1], cfg),
        "random": select_top(aggregate(rand), cfg),
        "bm25": select_top(scores[t, "bm25"][1], cfg),
    }


def heldout_losses(model, tokd: pl.DataFrame, pad_id: int) -> dict[str, float]:
    """Mean over held-out questions of the completion loss, and of the *answer* loss: the
    completion without its final end-of-turn token. The latter is the metric: SmolLM2 never
    saw the tulu format's EOS after an answer, so that one token costs ~18 nats before any
    fine-tuning and would swamp every difference between selections."""
    full, answer = np.zeros(tokd.height), np.zeros(tokd.height)
    ids, labels = tokd["input_ids"].to_list(), tokd["labels"].to_list()
    with inference(model):
        for group in token_budget_batches(tokd["n_tokens"].to_list(), 4096):
            batch = collate([ids[i] for i in group], [labels[i] for i in group], pad_id)
            losses, rows = completion_token_losses(model, batch)
            for r, i in enumerate(group):
                mine = losses[rows == r].double()
                full[i] = float(mine.mean())
                answer[i] = float(mine[:-1].mean()) if len(mine) > 1 else float(mine[0])
    return {"loss": float(answer.mean()), "loss_with_eos": float(full.mean())}


def finetune_run(s, sel: pl.DataFrame, t: str, seed: int, run_dir: Path) -> dict:
    """Fresh LoRA on the selection for ``ft.epochs``; held-out loss of the final model."""
    result = run_dir / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    train = sel.select("example_id").join(s.tok_pool, on="example_id", how="inner")
    cfg = replace(s.ft, seed=seed)
    model = add_lora(clean_copy(s.model), cfg.lora, seed=seed)
    train_lora(model, train, cfg, run_dir / "train", pad_id=s.tok.pad_token_id, progress=False)
    losses = heldout_losses(model, s.tok_heldout[t], s.tok.pad_token_id)
    result.write_text(json.dumps({**losses, "n_train": train.height}))
    return losses


def print_diagnostics(s, args, out, peft, ckpts, stores, scores, lrs):
    health = adam_health(
        ckpts,
        GradientConfig(),
        model=peft,
        tokenized=s.tok_pool,
        pad_id=s.tok.pad_token_id,
        sample=8,
    )  # 8 examples: ~16 passes
    print("\n" + "=" * 88)
    print("TRUNCATION (pool, max_length", args.max_length, ", prompt_left)")
    print(truncation_report(s.tok_pool, s.dropped, s.pool))
    check = json.loads((out / "projection_check.json").read_text())
    print(f"derived vs on-the-fly projection: max relative difference {check['max_rel_diff']:.1e}")
    for t in TARGETS:
        sel = selections(s, args, scores, t, 0)
        subtasks = sorted(s.targets[t]["subtask"].unique().to_list())
        rep = selection_report(sel["less_max"], s.pool, s.tok_pool, subtasks=subtasks)
        diag = summary(
            stores["proj"]["pool"],
            stores["proj"][t],
            s.targets[t],
            lrs,
            select_cfg=SelectConfig(k=args.k),
            selection=rep,
            adam=health,
            tokenized_pool=s.tok_pool,
            dropped=s.dropped,
            pool=s.pool,
        )
        print("\n" + "=" * 88 + f"\nDIAGNOSTICS  target={t}  (LESS max, d={args.d} rademacher)")
        print(diag.text())
        proj, exact = scores[t, "proj"][1], scores[t, "exact"][1]
        ag = agreement(proj, exact, args.k)
        ex = exact["score"].to_numpy()
        noise = proj.join(exact, on="example_id")
        noise_sd = float((noise["score"] - noise["score_right"]).std())
        print(
            f"exact scores: mean {ex.mean():.4f}, spread (sd) {ex.std():.4f}; projection "
            f"noise sd at d={args.d}: {noise_sd:.4f}"
        )
        print(
            f"exact vs projected: pearson {ag['pearson']:.3f} -> ACTUAL reliability "
            f"{ag['pearson'] ** 2:.2f} (split-half predicted {diag.reliability.r_full:.2f}); "
            f"top-{args.k} overlap {ag['overlap']} (chance {ag['chance']:.1f})"
        )
        pairs = scores[t, "proj"][0].join(scores[t, "exact"][0], on=["example_id", "subtask"])
        per = pairs.group_by("subtask").agg(pl.corr("score", "score_right").pow(2).alias("r2"))
        print(
            f"per-subtask reliability: ACTUAL median {per['r2'].median():.2f}, split-half "
            f"predicted median {diag.reliability.r_full_subtasks:.2f}"
        )
        rank_rel = split_half(
            stores["proj"]["pool"],
            stores["proj"][t],
            s.targets[t],
            lrs,
            select=SelectConfig(k=args.k),
            method="spearman",
        )
        print(
            f"split-half with Spearman (rank) correlation: r_full {rank_rel.r_full:.2f}; "
            f"exact vs projected Spearman {ag['spearman']:.3f}"
        )
        print("selection shape per method (seed 0):")
        for name, frame in sel.items():
            r = selection_report(frame, s.pool, s.tok_pool, subtasks=subtasks)
            top = r.subtasks.row(0, named=True)
            length = r.lengths.filter(pl.col("stat") == "n_completion_tokens mean").row(0)
            mix = ", ".join(
                f"{a} {b:.0%}"
                for a, b in r.sources.select("source", "share_selected").iter_rows()
                if b > 0
            )
            print(
                f"  {name:<14} top subtask {top['subtask'][:28]:<28} {top['n']:>3}/{args.k}"
                f"  completion tokens {length[2]:6.1f} (pool {length[1]:.1f})  {mix}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--pool-size", type=int, default=600)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument(
        "--chat-format",
        default="template",
        choices=["template", "tulu"],
        help="template: SmolLM2's own (its tulu answer loss is >10 nats untrained)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=1e-4, help="warmup peak learning rate")
    ap.add_argument("--ft-lr", type=float, default=2e-4, help="fine-tuning peak learning rate")
    ap.add_argument("--ft-epochs", type=int, default=1, help="1 keeps the run near 40 min")
    ap.add_argument("--heldout-bbh", type=int, default=2, help="test questions per BBH task")
    ap.add_argument("--heldout-mmlu", type=int, default=1, help="test questions per subject")
    ap.add_argument(
        "--target-subtasks",
        type=int,
        default=None,
        help="use only the first N subtasks of each target (smoke runs)",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()
    torch.manual_seed(0)
    s = setup(args)
    log(
        f"pool {s.tok_pool.height} (dropped {s.dropped.height}), targets "
        f"{ {t: f.height for t, f in s.tok_targets.items()} }, held-out "
        f"{ {t: f.height for t, f in s.tok_heldout.items()} }"
    )
    peft, ckpts, stores = build_stores(s, args, args.out)
    scores, lrs = score_all(s, args, args.out, ckpts, stores)
    log("scores ready")
    print_diagnostics(s, args, args.out, peft, ckpts, stores, scores, lrs)
    rows = []
    for t in TARGETS:
        base_file = args.out / f"base-{t}.json"
        if not base_file.exists():
            base = heldout_losses(s.model, s.tok_heldout[t], s.tok.pad_token_id)
            base_file.write_text(json.dumps(base))
        base = json.loads(base_file.read_text())
        rows.append({"target": t, "method": "no fine-tuning", "seed": 0, **base})
        for seed in args.seeds:
            sel = selections(s, args, scores, t, seed)
            for method in args.methods:
                run = args.out / "finetune" / t / method / f"seed-{seed}"
                losses = finetune_run(s, sel[method], t, seed, run)
                rows.append({"target": t, "method": method, "seed": seed, **losses})
                log(f"{t} {method} seed {seed}: held-out answer loss {losses['loss']:.4f}")
    report(pl.DataFrame(rows), args)


def report(runs: pl.DataFrame, args) -> None:
    """Mean +- std over seeds, each method minus random paired by seed, and a verdict:
    a difference counts only when a paired t-test would call it (95%, two-sided)."""
    print("\n" + "=" * 88)
    print(
        f"HELD-OUT ANSWER LOSS (nats/token, EOS excluded; lower is better) after fine-tuning "
        f"on k={args.k}, seeds {args.seeds}; last column: with the EOS token"
    )
    rand = runs.filter(pl.col("method") == "random").select(
        "target", "seed", pl.col("loss").alias("rand")
    )
    verdicts = []
    for t in TARGETS:
        print(f"\n  {t}:")
        sub = runs.filter(pl.col("target") == t)
        for method in sub["method"].unique(maintain_order=True):
            r = sub.filter(pl.col("method") == method)
            line = f"    {method:<15} {r['loss'].mean():.4f} +- {r['loss'].std() or 0:.4f}"
            line += "  [" + " ".join(f"{x:.3f}" for x in r["loss"]) + "]"
            if method not in ("random", "no fine-tuning"):
                diff = (
                    r.join(rand, on=["target", "seed"])
                    .select(pl.col("loss") - pl.col("rand"))
                    .to_series()
                    .to_numpy()
                )
                se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                line += f"  vs random {diff.mean():+.4f} +- {se:.4f} (paired s.e.)"
                if method.startswith("less"):
                    m, crit = diff.mean(), T95.get(len(diff) - 1, 2.0) * se
                    word = "beats" if m < -crit else "is worse than" if m > crit else "ties"
                    verdicts.append(f"{t}: {method} {word} random ({diff.mean():+.4f} +- {se:.4f})")
            line += f"  | {r['loss_with_eos'].mean():.3f}"
            print(line)
    print("\nVERDICT (paired t-test over seeds, 95% two-sided: 3 seeds need |diff| > 4.3 s.e.):")
    for v in verdicts:
        print("  " + v)
    runs.write_parquet(args.out / "runs.parquet")
    log("done")


if __name__ == "__main__":
    main()
