"""Datastore build throughput vs the floor and vs the reference method (issue 3).

On the same real pool examples, in one run, for each LoRA rank:
  (a) plain forward+backward: ``model(**batch).loss.backward()`` over the same
      token-budget batches (the physical floor of any gradient method);
  (b) less_lab's datastore build: batched per-example gradients → Adam features → projection
      → memmap store (``pipeline.extract_store``), end to end;
  (c) the reference method: batch size 1, ``param.grad`` per example, Adam transform, trak's
      ``BasicProjector`` on CPU (timed on a few examples: it is very slow).
Prints examples/s and the ratios (b)/(a) and (b)/(c). Peak RSS is printed at the end.

    python benchmarks/datastore_throughput.py --data ../shared/data --n 48 --ranks 8 128
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file

from less_lab.config import DataConfig, GradientConfig, LoraSettings
from less_lab.core.gradients import AdamState, to_features
from less_lab.core.pipeline import extract_store
from less_lab.core.training import Checkpoint
from less_lab.data.batching import collate, token_budget_batches
from less_lab.data.formatting import tokenize
from less_lab.data.pool import read_pool
from less_lab.model.loading import load_model
from less_lab.model.lora import add_lora, canonical_name


def sample_pool(data_dir: Path, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` examples drawn evenly from every pool file (a fixed, seeded sample)."""
    pool = read_pool(data_dir / "pool")
    per = max(1, n // pool["source"].n_unique())
    parts = [g.sample(min(per, g.height), seed=seed) for _, g in pool.group_by("source")]
    return pl.concat(parts).sort("example_id").head(n)


def fake_checkpoint(model, path: Path, seed: int = 0) -> Checkpoint:
    """A checkpoint with random but realistic Adam moments (the timing does not depend on
    their values), so the benchmark needs no warmup run."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = canonical_name(name)
            tensors[f"{key}.exp_avg"] = torch.randn(p.shape, generator=gen) * 1e-4
            tensors[f"{key}.exp_avg_sq"] = torch.rand(p.shape, generator=gen) * 1e-8
    path.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: PEFT would otherwise look "smollm2-135m" up on the hub
    model.save_pretrained(path / "adapter", save_embedding_layers=False)
    save_file(tensors, path / "optimizer.safetensors")
    (path / "state.json").write_text(
        '{"epoch": 1, "step": 100, "lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8}'
    )
    return Checkpoint.load(path)


def time_plain(model, tok: pl.DataFrame, cfg: GradientConfig, pad_id: int) -> float:
    """(a) examples/s of HF forward+backward over the same token-budget batches."""
    model.eval()
    lengths = tok["n_tokens"].to_list()
    start = time.perf_counter()
    for group in token_budget_batches(lengths, cfg.token_budget, cfg.max_batch_examples):
        batch = collate(
            [tok["input_ids"][i] for i in group], [tok["labels"][i] for i in group], pad_id
        )
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    return tok.height / (time.perf_counter() - start)


def time_less(model, tok, cfg, ckpt, pad_id, root: Path) -> float:
    """(b) examples/s of the whole datastore build (fresh directory each time)."""
    out = root / "store"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    extract_store(
        model,
        tok,
        out,
        split="pool",
        feature="adam",
        cfg=cfg,
        checkpoint=ckpt,
        pad_id=pad_id,
        progress=False,
    )
    return tok.height / (time.perf_counter() - start)


def time_reference(model, tok, cfg, ckpt, pad_id, n: int, ref_dim: int) -> float:
    """(c) examples/s of batch-1 backward + Adam + trak BasicProjector, on ``n`` examples.

    trak generates its +-1 matrix 128 columns at a time, so its cost is linear in d: when
    ``ref_dim`` < d the projection is timed at ``ref_dim`` and scaled by d / ref_dim (the
    gradient part is timed in full)."""
    from trak.projectors import BasicProjector, ProjectionType

    params = [(canonical_name(nm), p) for nm, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in params)
    proj = BasicProjector(
        total, ref_dim, seed=0, proj_type=ProjectionType.rademacher, device="cpu", block_size=32
    )  # 32 columns: trak keeps P x 32 floats
    adam: AdamState = ckpt.adam_state()
    names = [nm for nm, _ in params]
    grad_s = proj_s = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        batch = collate([tok["input_ids"][i]], [tok["labels"][i]], pad_id)
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        grads = [p.grad.flatten()[None].clone() for _, p in params]
        feats = torch.cat(to_features(grads, names, "adam", cfg, adam), 1)
        t1 = time.perf_counter()
        proj.project(feats, model_id=0)
        grad_s, proj_s = grad_s + t1 - t0, proj_s + time.perf_counter() - t1
    return n / (grad_s + proj_s * cfg.proj_dim / ref_dim)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data"
    )
    ap.add_argument("--n", type=int, default=48, help="pool examples (same for a and b)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--ref-n", type=int, default=2, help="examples for the slow reference")
    ap.add_argument(
        "--ref-dim",
        type=int,
        nargs="+",
        default=[8192, 512],
        help="d at which trak is timed, per rank (scaled linearly to --dim)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="alternating (a)/(b) repeats")
    args = ap.parse_args()
    torch.manual_seed(0)
    base, tokenizer = load_model()
    pool = sample_pool(args.data, args.n)
    tok, dropped = tokenize(pool, tokenizer, DataConfig(max_length=args.max_length))
    print(
        f"{tok.height} examples ({dropped.height} dropped), "
        f"{tok['n_tokens'].sum()} tokens, mean length {tok['n_tokens'].mean():.0f}, "
        f"torch threads {torch.get_num_threads()}"
    )
    cfg = GradientConfig(proj_dim=args.dim)
    pad = tokenizer.pad_token_id
    rows = []
    root = Path(tempfile.mkdtemp(prefix="less_bench_"))
    try:
        for r, ref_dim in zip(args.ranks, args.ref_dim, strict=True):
            model = add_lora(base, LoraSettings(r=r, alpha=4 * r, dropout=0.0))
            model.eval()
            ckpt = fake_checkpoint(model, root / f"ckpt-r{r}")
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            plain, less = [], []
            for _ in range(args.repeats):  # alternate so machine noise hits both alike
                plain.append(time_plain(model, tok, cfg, pad))
                less.append(time_less(model, tok, cfg, ckpt, pad, root))
            ref = time_reference(model, tok, cfg, ckpt, pad, args.ref_n, ref_dim)
            a, b = max(plain), max(less)
            rows.append(
                {
                    "lora_r": r,
                    "P": n_params,
                    "d": args.dim,
                    "a_plain_ex_s": a,
                    "b_less_ex_s": b,
                    "c_reference_ex_s": ref,
                    "c_timed_at_d": ref_dim,
                    "b_over_a": b / a,
                    "b_over_c": b / ref,
                }
            )
            print(
                f"r={r}: (a) {a:.2f} ex/s  (b) {b:.2f} ex/s  (c) {ref:.4f} ex/s  "
                f"(b)/(a)={b / a:.2f}  (b)/(c)={b / ref:.0f}",
                flush=True,
            )
            base = model.unload()  # remove this adapter before the next rank
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with pl.Config(tbl_cols=-1, tbl_width_chars=200, float_precision=3):
        print(pl.DataFrame(rows))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
