"""``less-lab demo``: LESS end to end on the embedded offline pool with SmolLM2-135M.

The demo pool (``demo_data``) has ten skills in four surface forms each; the targets ask
for three of those skills in forms the pool never uses (BBH-style chain of thought,
MMLU-style multiple choice). A selection that concentrates on the targets' skills, above
their 30% share of the pool, is LESS finding capability rather than surface form.

CPU-sized overrides of the paper defaults (all printed, all overridable with ``--set``):
short sequences, LoRA r=8, a larger warmup share with small batches and a higher learning
rate so a short warmup moves the adapter, and a 10% selection so shares are readable.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from less_lab.data.demo_pool import DEMO_SKILLS, demo_pool, demo_targets, write_demo
from less_lab.lab import Lab
from less_lab.overrides import PRESETS, build_configs

PRESET = "cpu-demo"


def demo_configs(overrides: list[str] | None = None) -> dict:
    """Paper defaults + the ``cpu-demo`` preset (``config.PRESETS``) + the user's
    overrides."""
    return build_configs(list(overrides or []), preset=PRESET)


def _share(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    return (
        frame.group_by(col)
        .len()
        .with_columns((pl.col("len") / frame.height * 100).round(1).alias("pct"))
    )


def _print_shares(top: pl.DataFrame, pool: pl.DataFrame, col: str) -> None:
    table = (
        _share(top, col)
        .rename({"len": "selected", "pct": "selected_%"})
        .join(_share(pool, col).rename({"len": "pool", "pct": "pool_%"}), on=col, how="right")
        .fill_null(0)
        .sort("selected_%", descending=True)
        .select(col, "selected", "selected_%", "pool", "pool_%")
    )
    print(table)


def planted_skill_shares(
    long: pl.DataFrame, pool: pl.DataFrame, targets: pl.DataFrame, k: int
) -> pl.DataFrame:
    """For each target subtask, the share of ITS top ``k`` that has the skill the subtask
    tests (``own_share``) against that skill's share of the pool (``pool_share``), and the
    range of cosines in that top ``k``: whether LESS recovers the planted skills."""
    skill_of = dict(targets.select("subtask", "skill").unique().iter_rows())
    base = pool.group_by("skill").len()
    base = dict(zip(base["skill"], base["len"] / pool.height, strict=True))
    rows = []
    for sub in sorted(skill_of):
        # a one-ranking scorer (loss_drop's subtask "all") ranks the pool once for all
        ranked_by = sub if sub in set(long["subtask"]) else "all"
        ranked = long.filter(pl.col("subtask") == ranked_by).sort("score", descending=True).head(k)
        ranked = ranked.join(pool.select("example_id", "skill"), on="example_id")
        own = ranked.filter(pl.col("skill") == skill_of[sub]).height
        rows.append(
            {
                "subtask": sub,
                "skill": skill_of[sub],
                "own": own,
                "k": k,
                "own_share": own / k,
                "pool_share": float(base.get(skill_of[sub], 0.0)),
                "min_score": float(ranked["score"].min()),
                "max_score": float(ranked["score"].max()),
            }
        )
    return pl.DataFrame(rows)


DEMO_REMEDIES = (
    "zscore",
    "rank",
    "round_robin",
    "length_matched",
    "dedup",
    "content_targets",
    "zscore+content_targets",
    "zscore+length_matched",
    "subspace",
    "content_targets+subspace",
)
"""The remedies the demo tries on its own stores (seconds each; ``content_targets``
re-extracts only the 12 target examples). ``content_tokens`` (pool stores rebuilt) and
``loss_drop`` are measured by ``benchmarks/remedies_demo.py``."""


def target_skill_share(frame: pl.DataFrame, targets: pl.DataFrame) -> float:
    """Share of a selection's rows whose ``skill`` is one the targets test."""
    skills = targets["skill"].unique().implode()
    return float(frame["skill"].is_in(skills).mean() or 0.0)


def remedy_row(lab: Lab, name: str, target: str = "demo") -> dict:
    """One remedy's (``"paper"``: none) selection on the lab's warmup: its share of
    target-skill picks and, per target subtask, own-skill share in that subtask's top k
    over the skill's pool share (the issue's two demo targets)."""
    variant = lab if name == "paper" else lab.with_remedies(*name.split("+"))
    sel = variant.select(target)
    shares = planted_skill_shares(
        variant.subtask_scores(target), lab.pool, lab.targets[target], len(sel)
    )
    ratios = shares.with_columns((pl.col("own_share") / pl.col("pool_share")).alias("ratio"))
    top_sub = sel.frame.group_by("subtask").len().sort("len", descending=True).row(0)
    return {
        "remedy": name,
        "target_skill_share": target_skill_share(sel.frame, lab.targets[target]),
        "min_subtask_ratio": float(ratios["ratio"].min()),
        **{f"ratio_{r['subtask']}": r["ratio"] for r in ratios.iter_rows(named=True)},
        "top_subtask": f"{top_sub[0]} {top_sub[1]}/{len(sel)}",
    }


def remedy_report(lab: Lab, remedies=DEMO_REMEDIES, target: str = "demo") -> pl.DataFrame:
    """``remedy_row`` for the paper and every remedy, best first (target-skill share,
    then the weakest subtask's ratio)."""
    rows = [remedy_row(lab, name, target) for name in ("paper", *remedies)]
    return pl.DataFrame(rows).sort(
        ["target_skill_share", "min_subtask_ratio"], descending=True, maintain_order=True
    )


def why_line(long: pl.DataFrame, top: pl.DataFrame, k: int) -> str:
    """One line on why the paper's max picks what it picks: the subtask whose top-k
    scores run highest, how much higher than the others', and how many picks it took."""
    means = (
        long.sort("score", descending=True)
        .group_by("subtask")
        .agg(pl.col("score").head(k).mean())
        .sort("score", descending=True)
    )
    lead, lead_mean = means.row(0)
    rest = float(means["score"][1:].median() or 0.0)
    took = top.filter(pl.col("subtask") == lead).height
    ratio = f"{lead_mean / rest:.1f}x higher" if rest > 0 else "far higher"
    return (
        f"{lead} cosines run {ratio} than the other subtasks' (mean of each top {k}: "
        f"{lead_mean:.3f} vs {rest:.3f}): the max hands it {took} of {top.height} picks"
    )


def _print_remedies(report: pl.DataFrame, why: str) -> None:
    print("\nRemedies on the same warmup (share of the headline picks with a target skill;")
    print("per subtask: own skill in its top k over the skill's pool share, want >= 2):")
    for r in report.iter_rows(named=True):
        ratios = "  ".join(
            f"{k[len('ratio_') :]} {v:4.1f}x" for k, v in r.items() if k.startswith("ratio_")
        )
        print(
            f"  {r['remedy']:28s} {r['target_skill_share']:4.0%}   {ratios}   ({r['top_subtask']})"
        )
    paper = report.filter(pl.col("remedy") == "paper").row(0, named=True)
    best = report.filter(pl.col("remedy") != "paper").row(0, named=True)
    print(
        f"\nPaper LESS: {paper['target_skill_share']:.0%} target-skill picks. "
        f"Why: {why}.\nBest remedy: {best['remedy']} ({'--remedy ' + best['remedy']}): "
        f"{best['target_skill_share']:.0%} target-skill picks, weakest subtask "
        f"{best['min_subtask_ratio']:.1f}x its pool share."
    )


def _print_per_subtask(shares: pl.DataFrame) -> None:
    k = shares["k"][0]
    print(f"\nPer subtask: share of the subtask's own skill in its top {k} vs the pool:")
    for r in shares.iter_rows(named=True):
        print(
            f"  {r['subtask']:15s} ({r['skill']:10s}) {r['own']:3d}/{k} = {r['own_share']:4.0%} "
            f"vs {r['pool_share']:.0%} of the pool; cosine "
            f"{r['min_score']:.3f}..{r['max_score']:.3f}"
        )


def demo_lab(
    out_dir: str | Path = "runs/demo", overrides: list[str] | None = None, progress: bool = True
) -> Lab:
    """A Lab on the demo pool and targets with the ``cpu-demo`` settings (nothing run yet);
    the pool and target files are written under the run's ``data/`` folder."""
    c = demo_configs(overrides)
    lab = Lab(
        out_dir,
        data=c["data"],
        warmup=c["warmup"],
        gradients=c["gradients"],
        scoring=c["scoring"],
        select=c["select"],
        progress=progress,
    )
    write_demo(lab.layout.data_dir)
    lab.set_pool(demo_pool())
    lab.add_target("demo", demo_targets())
    return lab


def _print_inputs(lab: Lab, overrides: list[str] | None) -> None:
    data = lab.layout.data_dir
    print(f"Demo pool: {lab.pool.height} examples ({data}), skills:")
    for skill, text in DEMO_SKILLS.items():
        print(f"  {skill:12s} {text}")
    counts = lab.targets["demo"].group_by("subtask").len().sort("subtask").iter_rows()
    print("Targets: " + ", ".join(f"{s} ({n} shots)" for s, n in counts))
    print(
        f"Settings: {', '.join(PRESETS[PRESET] + list(overrides or []))}; "
        f"projection {lab.grad_cfg.projection} d={lab.grad_cfg.proj_dim}\n"
    )


def _print_top(top: pl.DataFrame) -> None:
    print(f"\nTop 10 of {top.height} selected (score = max over subtasks of lr-weighted cosine):")
    for row in top.head(10).iter_rows(named=True):
        prompt = row["messages"][0]["content"].replace("\n", " ")[:70]
        print(
            f"  {row['rank']:2d}. {row['score']:+.4f} {row['subtask']:15s} "
            f"{row['skill']:11s} {row['source']:10s} {prompt}"
        )


def run_demo(
    out_dir: str | Path = "runs/demo", overrides: list[str] | None = None, progress: bool = True
):
    """Run the whole pipeline on the demo data, print what was selected and why."""
    start = time.time()
    lab = demo_lab(out_dir, overrides, progress)
    _print_inputs(lab, overrides)
    for ckpt in lab.warmup():
        print(f"warmup epoch {ckpt.epoch}: mean lr {ckpt.lr:.2e}, train loss {ckpt.train_loss:.3f}")
    sel = lab.select("demo")
    top = sel.frame.join(lab.pool.select("example_id", "messages"), on="example_id", how="left")
    _print_top(top)
    print("\nShare of each skill in the selection vs the pool:")
    _print_shares(top, lab.pool, "skill")
    print("Share of each source:")
    _print_shares(top, lab.pool, "source")
    shares = planted_skill_shares(
        lab.subtask_scores("demo"), lab.pool, lab.targets["demo"], len(sel)
    )
    _print_per_subtask(shares)
    report = remedy_report(lab)
    _print_remedies(report, why_line(lab.subtask_scores("demo"), top, len(sel)))
    print(f"\nOutputs in {lab.run_dir.resolve()}:")
    for name, path in sel.paths.items():
        print(f"  {name:10s} {path}")
    print(f"  stores     {lab.run_dir / 'stores'}\n  warmup     {lab.layout.warmup_dir}")
    print(f"Done in {time.time() - start:.0f} s.")
    return lab, top
