"""Peak memory of a store build on a Llama-2-7B-shaped slice, against ``plan()``.

A random Llama with Llama-2-7B's shapes (hidden 4096, intermediate 11008, 32 heads, vocab
32000) but ``--layers`` decoder layers (default 2), LoRA r=128 on q/k/v/o, builds a small
adam-feature store with the sparse sketch at d=8192 (``pipeline.extract_store``, a fake
checkpoint with random Adam moments) on batches drawn from a real pool's length
distribution (``pool_lengths.json``). Memory is the process's resident set (RSS): the
baseline is read before the model is built, the peak is ``VmHWM`` after resetting it
(``/proc/self/clear_refs``) just before the build; the model's own RSS is read after it is
built. Large blocks are mmapped (``MALLOC_MMAP_THRESHOLD_``, set by re-running itself;
``--keep-malloc`` measures under glibc's defaults, which keep freed blocks resident and
read higher). Printed: measured and ``plan()`` for the same settings, term by term, their ratio,
and ``plan()`` at 32 layers (and the measured ratio applied to it).

    python benchmarks/memory_7b_slice.py --dtype float32 --token-budget 2048 --batches 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
from datastore_throughput import fake_checkpoint  # noqa: E402  (same folder)
from transformers import LlamaConfig, LlamaForCausalLM

from less_lab.config import GradientConfig, LoraSettings
from less_lab.core.pipeline import extract_store
from less_lab.core.plan import ModelShape, plan
from less_lab.data.batching import IGNORE
from less_lab.model.lora import add_lora

HERE = Path(__file__).resolve().parent
SHAPE_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def llama(
    layers: int, dtype: torch.dtype, shape: dict | None = None, vocab: int = 32000, device="cpu"
):
    """A random Llama of the given shape (7B's by default) with ``layers`` layers."""
    cfg = LlamaConfig(
        **(shape or SHAPE_7B), num_hidden_layers=layers, vocab_size=vocab, dtype=dtype
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
        with torch.device(device):  # the meta device left its buffers empty
            model.model.rotary_emb.__init__(cfg)
    return model.eval(), cfg


def pool_lengths(path: Path = HERE / "pool_lengths.json") -> tuple[list[int], float]:
    data = json.loads(path.read_text())
    return data["lengths"], data["completion_share"]


def synthetic_pool(n: int, vocab: int, max_length: int, seed: int = 0) -> pl.DataFrame:
    """``n`` examples whose lengths are drawn from the real pool's; the first half of each
    is prompt (labels ``-100``), the rest completion."""
    lengths, _ = pool_lengths()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = min(rng.choice(lengths), max_length)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 2
        rows.append((f"ex{i}", ids, [IGNORE] * prompt + ids[prompt:], length))
    cols = ["example_id", "input_ids", "labels", "n_tokens"]
    return pl.DataFrame(rows, schema=cols, orient="row")


def lora_model(base, r: int = 128):
    return add_lora(base, LoraSettings(r=r, alpha=4 * r, dropout=0.0)).eval()


def build(model, tok, cfg, ckpt, root: Path) -> float:
    """Seconds for one store build (fresh directory)."""
    shutil.rmtree(root / "store", ignore_errors=True)
    start = time.perf_counter()
    extract_store(
        model, tok, root / "store", split="pool", feature="adam", cfg=cfg,
        checkpoint=ckpt, pad_id=0, progress=False,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--token-budget", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=3, help="about this many batches")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument(
        "--keep-malloc", action="store_true", help="measure under glibc's default thresholds"
    )
    args = ap.parse_args()
    if not args.keep_malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc's dynamic mmap threshold keeps freed tensors of up to 32 MB in the heap, so
        # RSS would count memory torch already freed: re-run with large blocks mmapped.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    dtype = getattr(torch, args.dtype)
    rss0 = rss_kib()
    base, config = llama(args.layers, dtype)
    model = lora_model(base)
    lengths, share = pool_lengths()
    mean = sum(lengths) / len(lengths)
    n = max(4, int(args.batches * args.token_budget / mean))
    tok = synthetic_pool(n, config.vocab_size, min(args.max_length, args.token_budget))
    cfg = GradientConfig(proj_dim=8192, token_budget=args.token_budget, max_batch_examples=16)
    root = Path(tempfile.mkdtemp(prefix="less_mem_"))
    try:
        ckpt = fake_checkpoint(model, root / "ckpt")
        rss_model = rss_kib()
        reset_peak()
        seconds = build(model, tok, cfg, ckpt, root)
        peak = rss_kib("VmHWM")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, config, cfg, share, tok, seconds, rss0, rss_model, peak)


def report(args, config, cfg, share, tok, seconds, rss0, rss_model, peak) -> None:
    shape = ModelShape.from_config(config, dtype_bytes=4 if args.dtype == "float32" else 2)
    lora = LoraSettings(r=128, alpha=512)
    want = plan(shape, lora, cfg, tok.height, checkpoints=1, completion_share=0.5)
    print(
        f"{tok.height} examples, {tok['n_tokens'].sum()} tokens (pool length distribution, "
        f"real completion share {share:.2f}; here 0.5), {args.layers} layers, {args.dtype}, "
        f"T={args.token_budget}, build {seconds:.1f} s, torch threads {torch.get_num_threads()}, "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}"
    )
    print(want.text())
    measured = (peak - rss0) * 1024
    model_part = (rss_model - rss0) * 1024
    fixed = sum(want.term(t) for t in ("weights", "LoRA weights"))
    rows = [
        ("peak RSS - baseline (total)", measured, want.peak_bytes),
        ("model + LoRA (RSS after build of the model)", model_part, fixed),
        ("build's extra (peak - model)", measured - model_part, want.peak_bytes - fixed),
    ]
    print(f"\n{'measured vs plan()':<46}{'measured GB':>12}{'plan GB':>10}{'ratio':>8}")
    for name, got, formula in rows:
        print(f"{name:<46}{got / 1e9:>12.2f}{formula / 1e9:>10.2f}{got / formula:>8.2f}")
    full = ModelShape.from_config(config, dtype_bytes=2)
    full = ModelShape(**{**full.__dict__, "layers": 32})
    at32 = plan(full, lora, GradientConfig(token_budget=8192, store_dtype="float16"), 270000)
    ratio = measured / want.peak_bytes
    print(
        f"\nextrapolated to 32 layers, bf16, T=8192, completion share 1: plan() "
        f"{at32.peak_bytes / 1e9:.1f} GB; x measured/plan ratio {ratio:.2f}: "
        f"{at32.peak_bytes * ratio / 1e9:.1f} GB"
    )


if __name__ == "__main__":
    main()
