"""Score a paper-scale gradient datastore on this CPU: seconds and peak memory.

The paper's pool store is 270,000 examples x 8,192 dims x 4 checkpoints in float16
(17.7 GB). This script writes a synthetic store of that shape with the real datastore
writer (``datastore.build_store``: same files, same checks, same ``meta.json``), plus
target stores (default: MMLU-shaped, 57 subtasks x 5 shots), then runs
``scoring.subtask_scores`` over it in a fresh process and prints wall seconds and that
process's peak RSS. Targets: under 60 s and under 8 GiB.

The feature values are random float16 bit patterns with exponent < 16 (finite, |x| < 2):
the cost of scoring does not depend on the values, only on the bytes read and the
multiply. ``--cold`` first evicts the feature files from the page cache
(``posix_fadvise(DONTNEED)`` on those files only), so the disk read is timed too.

    flock /tmp/less_lab_cpu.lock python benchmarks/score_at_scale.py --cold
    python benchmarks/score_at_scale.py --n 20000 --checkpoints 1   # a quick look
    python benchmarks/score_at_scale.py --delete                     # remove the stores

Needs ~1.05 x the store size free under ``--dir`` (checked before writing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from less_lab.core.datastore import META, build_store, open_store  # noqa: E402

CHUNK = 16384


def _random_rows(start: int, k: int, dim: int, seed: int) -> torch.Tensor:
    """(k, dim) float16 from random 64-bit words, bit 14 cleared: finite, |x| < 2."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
    words = torch.empty((k * dim + 3) // 4, dtype=torch.int64)
    words.random_(-(2**63), None, generator=gen)
    bits = words.view(torch.int16)[: k * dim].bitwise_and_(~0x4000)
    return bits.view(torch.float16).view(k, dim)


def _compute(dim: int, seed: int):
    def compute(rows: list[int]):
        rows = np.asarray(rows)
        for at in range(0, len(rows), CHUNK):
            part = rows[at : at + CHUNK]
            if not len(part) or part[-1] - part[0] != len(part) - 1:
                raise ValueError("expected contiguous rows")
            feats = _random_rows(int(part[0]), len(part), dim, seed)
            ones = torch.ones(len(part))
            yield SimpleNamespace(
                rows=part.tolist(), features=feats, loss=ones, grad_norm=ones, feature_norm=ones
            )

    return compute


def _settings(split: str, dim: int, dtype: str, ckpt: int) -> dict:
    return {
        "split": split,
        "feature": "adam" if split == "pool" else "sgd",
        "dim": dim,
        "dtype": dtype,
        "projection": {"kind": "synthetic", "seed": 0, "dim": dim},
        "model": "synthetic",
        "checkpoint": {"epoch": ckpt},
        "data": f"synthetic-{split}",
    }


def make_stores(root: Path, args) -> None:
    """Write (or reuse, when complete) the pool and target stores of every checkpoint."""
    itemsize = np.dtype(args.dtype).itemsize
    need = 0
    for c in range(args.checkpoints):
        if not (root / f"pool-{c}" / META).exists():
            need += args.n * args.dim * itemsize
    free = shutil.disk_usage(root).free
    if need * 1.05 > free:
        raise SystemExit(
            f"{root}: {free / 1e9:.1f} GB free, the stores need "
            f"{need * 1.05 / 1e9:.1f} GB; use --dir elsewhere or smaller --n"
        )
    n_t = args.subtasks * args.shots
    for c in range(args.checkpoints):
        t0 = time.perf_counter()
        build_store(
            root / f"pool-{c}",
            _settings("pool", args.dim, args.dtype, c),
            [f"p{i}" for i in range(args.n)],
            _compute(args.dim, 2 * c),
            progress=False,
        )
        build_store(
            root / f"target-{c}",
            _settings("target", args.dim, args.dtype, c),
            [f"t{i}" for i in range(n_t)],
            _compute(args.dim, 2 * c + 1),
            progress=False,
        )
        print(f"checkpoint {c}: stores ready in {time.perf_counter() - t0:.1f} s", flush=True)


def evict(root: Path) -> None:
    """Drop the feature files from the page cache (this process's files only)."""
    for f in sorted(root.glob("*/features.bin")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def score_only(root: Path, args) -> dict:
    """Open the stores and time ``subtask_scores`` (run in a fresh process)."""
    import polars as pl

    from less_lab.config import ScoreConfig
    from less_lab.core.scoring import subtask_scores

    t0 = time.perf_counter()
    pools = [open_store(root / f"pool-{c}") for c in range(args.checkpoints)]
    targets = [open_store(root / f"target-{c}") for c in range(args.checkpoints)]
    frame = pl.DataFrame(
        {
            "example_id": targets[0].ids,
            "subtask": [f"s{i // args.shots:02d}" for i in range(len(targets[0]))],
        }
    )
    t_open = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = ScoreConfig(method=args.method, chunk_rows=args.chunk_rows)
    t0 = time.perf_counter()
    matrix, subtasks = subtask_scores(pools, targets, frame, [1.0] * args.checkpoints, cfg)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = {}
    if args.full:  # the long frame (n x subtasks rows) and the max over subtasks
        from less_lab.core.scoring import aggregate, long_frame

        t0 = time.perf_counter()
        best = aggregate(long_frame(matrix, subtasks, pools[0].ids))
        extra = {
            "frame_seconds": time.perf_counter() - t0,
            "frame_rows": best.height,
            "frame_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    return {
        **extra,
        "seconds": seconds,
        "open_seconds": t_open,
        "peak_rss_gib": peak / 2**20,
        "rss_before_scoring_gib": rss0 / 2**20,
        "shape": list(matrix.shape),
        "finite": bool(np.isfinite(matrix).all()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/less_lab_scale"))
    p.add_argument("--n", type=int, default=270_000)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--checkpoints", type=int, default=4)
    p.add_argument("--subtasks", type=int, default=57, help="57: MMLU; BBH 27; TydiQA 9")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--method", default="paper", choices=["paper", "mean_of_shots", "dot"])
    p.add_argument("--chunk-rows", type=int, default=16384)
    p.add_argument("--cold", action="store_true", help="evict the files from the page cache")
    p.add_argument("--full", action="store_true", help="also time long_frame + aggregate")
    p.add_argument("--delete", action="store_true", help="delete --dir and exit")
    p.add_argument("--score-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    root = args.dir
    if args.delete:
        shutil.rmtree(root, ignore_errors=True)
        print(f"deleted {root}")
        return
    if args.score_only:
        print(json.dumps(score_only(root, args)))
        return
    root.mkdir(parents=True, exist_ok=True)
    make_stores(root, args)
    size = sum(f.stat().st_size for f in root.glob("pool-*/features.bin"))
    print(
        f"pool store: {args.n} x {args.dim} x {args.checkpoints} checkpoints {args.dtype} "
        f"= {size / 1e9:.1f} GB; targets {args.subtasks} subtasks x {args.shots} shots"
    )
    if args.cold:
        evict(root)
    argv = [a for a in sys.argv[1:] if a != "--cold"]
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--score-only"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    verdict = "OK" if r["seconds"] < 60 and r["peak_rss_gib"] < 8 else "OVER TARGET"
    print(
        f"subtask_scores ({args.method}, {'cold' if args.cold else 'warm'} cache, "
        f"{r['threads']} threads): {r['seconds']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
        f"(RSS after imports+open {r['rss_before_scoring_gib']:.2f} GiB, "
        f"open {r['open_seconds']:.1f} s) -> {verdict} [targets: < 60 s, < 8 GiB]"
    )
    if "frame_seconds" in r:
        print(
            f"then long_frame + aggregate ({r['frame_rows']} examples): "
            f"{r['frame_seconds']:.1f} s, peak RSS {r['frame_peak_rss_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    main()
