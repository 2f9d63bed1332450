"""``less-lab``: the pipeline stages as batch commands (same code as the ``Lab`` API).

    less-lab demo                                   # the embedded offline demo
    less-lab run --run-dir runs/x --pool data/pool --target mmlu=data/eval/mmlu \\
        --set data.max_length=512 --set warmup.train.lora.r=8 --set gradients.proj_dim=2048
    less-lab warmup | datastore | score | select    # one stage at a time, same flags

Every config field can be set with ``--set section.field=value`` (sections: data, warmup,
gradients, scoring, select; nested fields with dots, e.g. ``warmup.train.epochs=2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import DataConfig, GradientConfig, ScoreConfig, SelectConfig, WarmupConfig

SECTIONS = {
    "data": DataConfig,
    "warmup": WarmupConfig,
    "gradients": GradientConfig,
    "scoring": ScoreConfig,
    "select": SelectConfig,
}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _replace_path(cfg, path: list[str], value):
    """``dataclasses.replace`` along a dotted path, checking that each field exists."""
    names = {f.name for f in dataclasses.fields(cfg)}
    if path[0] not in names:
        raise SystemExit(
            f"--set: {type(cfg).__name__} has no field {path[0]!r} "
            f"(fields: {', '.join(sorted(names))})"
        )
    if len(path) > 1:
        value = _replace_path(getattr(cfg, path[0]), path[1:], value)
    elif isinstance(getattr(cfg, path[0]), tuple) and isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(cfg, **{path[0]: value})


def build_configs(sets: list[str]) -> dict:
    """Default configs with ``section.field=value`` overrides applied."""
    configs = {name: cls() for name, cls in SECTIONS.items()}
    for item in sets:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or parts[0] not in SECTIONS or len(parts) < 2:
            raise SystemExit(
                f"--set {item!r}: expected section.field=value with section in "
                f"{', '.join(SECTIONS)}"
            )
        configs[parts[0]] = _replace_path(configs[parts[0]], parts[1:], _parse_value(raw))
    return configs


def _make_lab(args):
    from .lab import Lab

    c = build_configs(args.set)
    lab = Lab(
        args.run_dir,
        model=args.model,
        data=c["data"],
        warmup=c["warmup"],
        gradients=c["gradients"],
        scoring=c["scoring"],
        select=c["select"],
        progress=not args.quiet,
    )
    lab.load_pool(args.pool, on_error=args.on_error)
    for spec in args.target:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--target {spec!r}: expected NAME=PATH")
        lab.add_target(name, path)
    return lab


def _print_top(frame, n: int = 10) -> None:
    cols = [c for c in ("rank", "example_id", "source", "subtask", "score") if c in frame.columns]
    print(frame.select(cols).head(n))


def cmd_stage(args) -> None:
    from . import distributed

    lab = _make_lab(args)
    ctx = distributed.context()
    if args.device != "cpu":
        lab.model.to(distributed.device() if args.device == "auto" else torch_device(args.device))
    try:
        _run_stage(args, lab, ctx)
    finally:
        distributed.shutdown()


def torch_device(name: str):
    import torch

    return torch.device(name)


def _run_stage(args, lab, ctx) -> None:
    from . import distributed

    if ctx.world > 1 and args.command != "datastore":
        raise SystemExit(
            f"{args.command} runs in one process; only 'datastore' is sharded under torchrun"
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
            lab.checkpoints() or lab.warmup()
        for split in ["pool", *lab.targets]:
            for store in lab.datastore(split):
                if ctx.is_main:
                    print(store)
        return
    for name in lab.targets:
        if args.command == "score":
            scores = lab.scores(name)
            out = lab.run_dir / "scores" / f"{name}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            scores.write_parquet(out)
            print(f"{name}: scores -> {out}")
            _print_top(scores.sort("score", descending=True))
        else:  # select / run
            top = lab.select(name)
            print(f"{name}: selected {top.height} -> {lab.last_paths['selected']}")
            _print_top(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="less-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run LESS on the embedded demo pool with SmolLM2")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    for name in ("warmup", "datastore", "score", "select", "run"):
        p = sub.add_parser(name, help=f"the {name} stage" if name != "run" else "all stages")
        p.add_argument("--run-dir", required=True, type=Path)
        p.add_argument("--pool", nargs="+", required=True, help="pool JSONL files or dirs")
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
        p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
        p.add_argument(
            "--device",
            default="cpu",
            help="cpu (default), auto (cuda:LOCAL_RANK when CUDA is there), or a "
            "torch device such as cuda:0",
        )
        p.add_argument("--quiet", action="store_true")
    from .compare import add_compare_command, run_compare_command

    add_compare_command(sub)
    args = parser.parse_args(argv)
    if args.command == "compare":
        return run_compare_command(args)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, overrides=args.set, progress=not args.quiet)
    else:
        if args.command in ("score", "select", "run") and not args.target:
            parser.error(f"{args.command} needs at least one --target NAME=PATH")
        cmd_stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
