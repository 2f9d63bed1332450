"""``less-lab``: the pipeline stages as batch commands (same code as the ``Lab`` API).

    less-lab demo                                   # the embedded offline demo
    less-lab run --run-dir runs/x --pool data/pool --target mmlu=data/eval/mmlu \\
        --set data.max_length=512 --set warmup.train.lora.r=8 --set gradients.proj_dim=2048
    less-lab warmup | datastore | score | select    # one stage at a time, same flags
    less-lab compare ...                            # LESS vs baselines (Table 3)
    less-lab plan --model llama-2-7b                # peak memory and store size, before a run

Every config field can be set with ``--set section.field=value`` (sections: data, warmup,
gradients, scoring, select; nested fields with dots, e.g. ``warmup.train.epochs=2``), on
top of ``--preset`` (``paper``, the default, or ``cpu-demo``). Known errors (bad input,
bad settings, a run made with other settings) print as plain lines and exit 2; ``--debug``
shows the traceback.

Top of the facade: the only module that parses arguments or exits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from less_lab._io import write_parquet
from less_lab.compare import (
    METHODS,
    beats_random,
    check_method,
    compare,
    load_runs,
    metric_columns,
    paper_table,
)
from less_lab.config import TrainConfig
from less_lab.core import distributed
from less_lab.core.plan import LLAMA2_7B, ModelShape, plan
from less_lab.demo import run_demo
from less_lab.errors import ConfigError, LessLabError
from less_lab.evaluate.evaluators import EvalFn, make_eval
from less_lab.lab import Lab
from less_lab.model.device import DTYPES
from less_lab.overrides import PRESETS, REMEDIES, build_configs, parse_value, replace_path
from less_lab.views.paired import paired_figure

STAGES = ("warmup", "datastore", "score", "select", "run")


def make_lab(args: argparse.Namespace) -> Lab:
    """A Lab from the stage flags: configs (preset + ``--set``), pool and targets."""
    c = build_configs(args.set, preset=args.preset, remedies=args.remedy)
    lab = Lab(
        args.run_dir,
        model=args.model,
        data=c["data"],
        warmup=c["warmup"],
        gradients=c["gradients"],
        scoring=c["scoring"],
        select=c["select"],
        progress=not args.quiet,
        device=args.device,
        dtype=args.dtype,
    )
    lab.load_pool(args.pool, on_error=args.on_error)
    for spec in args.target:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--target {spec!r}: expected NAME=PATH", key="target")
        lab.add_target(name, path)
    return lab


def _print_top(frame, n: int = 10) -> None:
    cols = [c for c in ("rank", "example_id", "source", "subtask", "score") if c in frame.columns]
    print(frame.select(cols).head(n))


def cmd_stage(args: argparse.Namespace) -> None:
    ctx = distributed.context()  # before the model loads: NCCL binds this rank's GPU
    lab = make_lab(args)
    try:
        _run_stage(args, lab, ctx)
    finally:
        distributed.shutdown()


def _run_stage(args: argparse.Namespace, lab: Lab, ctx) -> None:
    if ctx.world > 1 and args.command != "datastore":
        raise ConfigError(
            f"{args.command} runs in one process; only 'datastore' is sharded under torchrun",
            key="command",
        )
    if args.command == "warmup":
        for ckpt in lab.warmup():
            print(
                f"epoch {ckpt.epoch}: step {ckpt.step}, mean lr {ckpt.lr:.3g}, "
                f"train loss {ckpt.train_loss:.4f} -> {ckpt.path}"
            )
        return
    if args.command == "datastore":
        with distributed.main_first(ctx):  # rank 0 trains the warmup, the others reuse it
            lab.warmup()
        for split in ["pool", *lab.targets]:
            for store in lab.datastore(split):
                if ctx.is_main:
                    print(store)
        return
    for name in lab.targets:
        if args.command == "score":
            scores = lab.scores(name)
            out = lab.layout.scores_file(name)
            write_parquet(out, scores)
            print(f"{name}: scores -> {out}")
            _print_top(scores.sort("score", descending=True))
        else:  # select / run
            sel = lab.select(name)
            print(f"{name}: selected {len(sel)} -> {sel.paths['selected']}")
            _print_top(sel.frame)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every command on a run directory takes."""
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--pool", nargs="+", required=True, help="pool files or dirs")
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="target in a LESS layout or JSONL with a subtask field",
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="'smollm2-135m' (embedded) or a local Hugging Face model dir",
    )
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="bad pool lines: stop with file:line (default) or skip and report",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda:LOCAL_RANK when CUDA is there, else cpu), cpu, cuda "
        "(this rank's GPU) or cuda:<index>; every stage runs where the model is",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="the model's dtype (features, Adam transforms and scores stay fp32)",
    )
    _add_config_flags(p)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    _add_remedy_flag(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks of known errors")


def _add_remedy_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--remedy",
        action="append",
        default=[],
        choices=sorted(REMEDIES),
        help="a named remedy on top of the preset (repeatable): "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in REMEDIES.items()),
    )


def _add_stage_commands(sub) -> None:
    for name in STAGES:
        p = sub.add_parser(name, help=f"the {name} stage" if name != "run" else "all stages")
        _add_run_flags(p)


def _add_compare_command(sub) -> None:
    """``less-lab compare``: the stage flags plus the comparison's."""
    p = sub.add_parser("compare", help="LESS vs baselines: select, fine-tune, evaluate")
    _add_run_flags(p)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        type=check_method,
        help=f"{', '.join(METHODS)}, full, or a LESS variant less+REMEDY[+REMEDY] "
        f"(remedies: {', '.join(REMEDIES)})",
    )
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--k", type=int, default=None, help="exact selection size (wins over fraction)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--include-full", action="store_true")
    p.add_argument(
        "--shared-warmup",
        action="store_true",
        help="one warmup for all LESS seeds (LESS then runs once)",
    )
    p.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="fine-tuning TrainConfig override, e.g. epochs=2 or lora.r=8 "
        "(default: the warmup's training config)",
    )
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="NAME=KIND:PATH",
        help="test evaluation; KIND: mmlu, bbh, squad, tydiqa, gsm8k, "
        "truthfulqa, mmlu-loss, bbh-loss, loss",
    )
    p.add_argument("--max-per-subtask", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None)


def train_cfg(base: TrainConfig, sets: list[str]) -> TrainConfig:
    """``base`` with ``FIELD=VALUE`` overrides (``--train-set``)."""
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--train-set {item!r}: expected FIELD=VALUE", key="train")
        base = replace_path(base, key.split("."), parse_value(raw), "train.")
    return base


def evals_from_specs(specs: list[str], max_per_subtask: int | None, data_cfg) -> dict[str, EvalFn]:
    """``NAME=KIND:PATH`` specs (``--eval``) as evaluation functions."""
    out = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        kind, sep, path = rest.partition(":")
        if not name or not sep:
            raise ConfigError(f"--eval {spec!r}: expected NAME=KIND:PATH", key="eval")
        out[name] = make_eval(kind, path, max_per_subtask=max_per_subtask, data_cfg=data_cfg)
    return out


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``compare`` for every ``--target`` and print its table."""
    lab = make_lab(args)
    train = train_cfg(lab.warmup_cfg.train, args.train_set)
    evals = evals_from_specs(args.eval, args.max_per_subtask, lab.data_cfg)
    for name in lab.targets:
        table = compare(
            lab,
            name,
            methods=args.methods,
            fraction=args.fraction,
            k=args.k,
            seeds=args.seeds,
            train_cfg=train,
            evals=evals,
            include_full=args.include_full,
            out_dir=args.out_dir / name if args.out_dir else None,
            per_seed_warmup=not args.shared_warmup,
        )
        shown = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
        metrics = ["val_loss", *[m for m in shown if any(m.startswith(f"{e}_") for e in evals)]]
        print(f"== {name}")
        print(paper_table(table, metrics))
        out = args.out_dir / name if args.out_dir else lab.layout.compare_dir(name)
        if "random" in args.methods and len(args.seeds) >= 2:
            _print_beats_random(out)
    return 0


def _print_beats_random(out: Path) -> None:
    """The paired-vs-random table, one line per method and metric, and its figure as
    ``beats_random.html`` (offline: the plotly script is written beside it)."""
    runs = load_runs(out)
    table, diffs = beats_random(runs)
    print("Paired differences against random (method - random, by seed; 95% t interval):")
    for row in table.iter_rows(named=True):
        shape = (
            f"selected completion tokens {row.get('sel_completion_tokens') or 0:.1f}, "
            f"top source share {row.get('sel_top_source_share') or 0:.2f}"
        )
        print(f"  {row['method']} ({row['n_seeds']} seeds; {shape})")
        for m in metric_columns(runs):
            print(
                f"    {m:24s} {row[m]:9.3f}  diff {row[m + '_diff'] or 0:+8.3f} "
                f"{row[m + '_ci']:>20s}  {row[m + '_verdict']}"
            )
    paired_figure(diffs).write_html(out / "beats_random.html", include_plotlyjs="directory")
    print(f"figure: {out / 'beats_random.html'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="less-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run LESS on the embedded demo pool with SmolLM2")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--debug", action="store_true", help="show tracebacks of known errors")
    _add_stage_commands(sub)
    _add_compare_command(sub)
    _add_plan_command(sub)
    return parser


def _add_plan_command(sub) -> None:
    p = sub.add_parser("plan", help="peak memory of a store build and the store size")
    p.add_argument(
        "--model",
        default="llama-2-7b",
        help="'llama-2-7b' (shape only, no weights), or a model dir with a config.json",
    )
    p.add_argument("--pool-size", type=int, default=270_679, help="pool examples (paper: 270,679)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--completion-share", type=float, default=1.0, help="1: the worst case")
    _add_config_flags(p)


def run_plan_command(args: argparse.Namespace) -> int:
    """Print the memory plan of a store build for the given model and settings."""
    c = build_configs(args.set, preset=args.preset)
    size = 4 if args.dtype == "float32" else 2
    if args.model == "llama-2-7b":
        shape = replace(LLAMA2_7B, dtype_bytes=size)
    else:
        from transformers import AutoConfig

        shape = ModelShape.from_config(AutoConfig.from_pretrained(args.model), size)
    result = plan(
        shape,
        c["warmup"].train.lora,
        c["gradients"],
        args.pool_size,
        checkpoints=c["warmup"].train.epochs,
        completion_share=args.completion_share,
    )
    print(result.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("score", "select", "run", "compare") and not args.target:
        parser.error(f"{args.command} needs at least one --target NAME=PATH")
    try:
        if args.command == "compare":
            return run_compare_command(args)
        if args.command == "plan":
            return run_plan_command(args)
        if args.command == "demo":
            run_demo(args.out, overrides=args.set, progress=not args.quiet)
        else:
            cmd_stage(args)
    except LessLabError as err:
        if args.debug:
            raise
        print(f"less-lab {args.command}: error: {err}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
