"""Seconds to project a batch of LoRA gradients of SmolLM2-135M: sparse_sign vs dense kinds.

Block sizes are computed by hand (no model): LoRA on q, k, v, o of 30 layers, hidden 576,
k/v dim 192, so each layer has A (r x 576) and B (out x r) for each target. Gradients are
random: the projection cost does not depend on the values.

The dense kinds cost ``P x d`` generated entries per call, minutes at r=128, so by default
they are timed on a slice and extrapolated linearly (their cost is linear in it):
``rademacher`` on the first blocks, ``trak_basic`` on fewer output columns (it rebuilds a
``P x block_size`` slab per column block). ``--full`` times everything. ``trak_basic`` runs
on ONE example, as the reference LESS code did (batch size 1); its cost is dominated by
matrix generation, which does not shrink with the batch. Projectors run on 1 CPU thread by
default (see ``less_lab.projection.Projector``); ``--threads 0`` keeps torch's setting.

    python benchmarks/projection_speed.py --r 8 128 --d 8192 --batch 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from less_lab.core.projection_dense import (  # noqa: E402
    RademacherProjector,
    TrakBasicProjector,
)
from less_lab.core.projection_sparse import SparseSignProjector  # noqa: E402

HIDDEN, KV_DIM, LAYERS = 576, 192, 30


def smollm2_block_sizes(r: int) -> list[int]:
    """LoRA A and B sizes for q, k, v, o of every layer, in module order."""
    sizes = []
    for _ in range(LAYERS):
        for out_dim in (HIDDEN, KV_DIM, KV_DIM, HIDDEN):  # q, k, v, o
            sizes += [r * HIDDEN, out_dim * r]
    return sizes


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prefix_blocks(sizes: list[int], max_values: int) -> list[int]:
    """The first blocks, at least one, holding at most ``max_values`` values."""
    out, total = [], 0
    for n in sizes:
        if out and total + n > max_values:
            break
        out.append(n)
        total += n
    return out


def time_sparse(sizes, blocks, args) -> dict:
    proj = SparseSignProjector(sizes, args.d, seed=0, nnz=args.nnz, threads=args.threads)
    setup = seconds(proj.prepare, 1)
    per_batch = seconds(lambda: proj.project(blocks), args.repeats)
    note = f"one-time hashing {setup:.1f} s, tables {proj.cached_bytes / 2**20:.0f} MB"
    return {"kind": "sparse_sign", "batch": args.batch, "seconds": per_batch, "note": note}


def time_rademacher(sizes, blocks, args) -> dict:
    total = sum(sizes)
    sub = sizes if args.full else prefix_blocks(sizes, int(args.max_entries // args.d))
    proj = RademacherProjector(sub, args.d, seed=0, threads=args.threads)
    measured = seconds(lambda: proj.project(blocks[: len(sub)]), 1)
    share = sum(sub) / total
    note = "full" if share == 1 else f"extrapolated from {share:.1%} of P ({len(sub)} blocks)"
    return {"kind": "rademacher", "batch": args.batch, "seconds": measured / share, "note": note}


def time_trak(sizes, blocks, args) -> dict:
    total = sum(sizes)
    ref = TrakBasicProjector(sizes, args.d, seed=0, threads=args.threads)
    columns = args.d
    if not args.full:  # whole slabs of block_size output columns, at least two (trak needs it)
        slabs = max(2, int(args.max_entries // (total * ref.block_size)))
        columns = min(args.d, slabs * ref.block_size)
    proj = TrakBasicProjector(
        sizes, columns, seed=0, block_size=ref.block_size, threads=args.threads
    )
    one = [x[:1] for x in blocks]
    measured = seconds(lambda: proj.project(one), 1)
    share = columns / args.d
    note = f"batch of 1, slab {ref.block_size} columns"
    if share < 1:
        note += f", extrapolated from {columns} of {args.d} output columns"
    return {"kind": "trak_basic", "batch": 1, "seconds": measured / share, "note": note}


def report(r: int, sizes: list[int], rows: list[dict], args) -> None:
    print(
        f"\nSmolLM2-135M LoRA r={r} (q,k,v,o: {len(sizes)} blocks, P={sum(sizes):,}) -> "
        f"d={args.d}, fp32, threads {args.threads or torch.get_num_threads()}, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    base = rows[0]["seconds"] / rows[0]["batch"]
    print(f"{'kind':<12} {'batch':>5} {'s/call':>10} {'ms/example':>11} {'x sparse':>9}  note")
    for row in rows:
        per_example = row["seconds"] / row["batch"]
        print(
            f"{row['kind']:<12} {row['batch']:>5} {row['seconds']:>10.3f} "
            f"{1e3 * per_example:>11.1f} {per_example / base:>8.0f}x  {row['note']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, nargs="+", default=[8, 128], help="LoRA ranks")
    parser.add_argument("--d", type=int, default=8192, help="projection dimension")
    parser.add_argument("--batch", type=int, default=16, help="examples per batch")
    parser.add_argument("--nnz", type=int, default=4, help="sparse_sign non-zeros per input")
    parser.add_argument("--repeats", type=int, default=3, help="sparse_sign timing repeats")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads while projecting (projectors' default 1; 0 = torch's)",
    )
    parser.add_argument("--skip-trak", action="store_true", help="do not time trak_basic")
    parser.add_argument("--skip-rademacher", action="store_true")
    parser.add_argument(
        "--full",
        action="store_true",
        help="time dense kinds on the whole matrix (minutes at r=128)",
    )
    parser.add_argument(
        "--max-entries",
        type=float,
        default=2e9,
        help="matrix entries timed per dense kind before extrapolating",
    )
    args = parser.parse_args()
    args.threads = args.threads or None  # None: torch's own setting
    for r in args.r:
        sizes = smollm2_block_sizes(r)
        gen = torch.Generator().manual_seed(r)
        blocks = [torch.randn(args.batch, n, generator=gen) for n in sizes]
        rows = [time_sparse(sizes, blocks, args)]
        if not args.skip_rademacher:
            rows.append(time_rademacher(sizes, blocks, args))
        if not args.skip_trak:
            rows.append(time_trak(sizes, blocks, args))
        report(r, sizes, rows, args)


if __name__ == "__main__":
    main()
