"""A synthetic run of the reference LESS code (princeton-nlp/LESS), written exactly as its
scripts write one, for the import/export tests and notebook 05.

Written independently of ``less_lab.core.reference`` (so an import is checked against
the reference's own rules, not against our exporter): ``collect_grads`` saves the
projected rows of every 160 examples (batch size 1) as ``grads-<count>.pt`` in the
projection's dtype, then ``merge_and_normalize_info`` writes ``all_orig.pt`` (each chunk
L2-normalised, concatenated) and ``merge_info`` ``all_unormalized.pt``;
``matching.py`` scores with ``all_orig.pt``; ``write_selected_data.py`` (as fixed for
princeton-nlp/LESS#15) writes ``sorted.csv`` and ``top_p<p>.jsonl``. Trainer states log
the learning rate every 5 steps (coarse logging).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import normalize

SUBJECTS = ("anatomy", "astronomy", "virology")
SHOTS = 5
POOL_FILES = {"flan_v2": 200, "dolly": 60}
STEPS = (13, 26)
DIM = 64
PEAK_LR = 2e-5


def save_like_collect_grads(out_dir: Path, rows: torch.Tensor, save_interval: int = 160) -> None:
    """The reference's chunked saving and both merges, for rows in their final dtype."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), save_interval):
        count = min(start + save_interval, len(rows))
        torch.save(rows[start:count].clone(), out_dir / f"grads-{count}.pt")
    files = sorted(out_dir.glob("grads-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    chunks = [torch.load(f, weights_only=True) for f in files]
    torch.save(torch.cat([normalize(c, dim=1) for c in chunks]), out_dir / "all_orig.pt")
    torch.save(torch.cat(chunks), out_dir / "all_unormalized.pt")


def matching_scores(root: Path, names: list[str], task: str, weights: list[float]) -> dict:
    """``matching.py``'s influence scores per train file (all_orig rows, weights
    renormalised, reshape(N, subtasks, shots).mean(-1).max(-1))."""
    w = [x / sum(weights) for x in weights]
    out = {}
    for name in names:
        score = 0
        for i, step in enumerate(STEPS):
            val = torch.load(
                root / f"{task}-ckpt{step}-sgd/dim{DIM}/all_orig.pt", weights_only=True
            )
            train = torch.load(
                root / f"{name}-ckpt{step}-adam/dim{DIM}/all_orig.pt", weights_only=True
            )
            score = score + w[i] * (train.float() @ val.float().T)
        out[name] = score.reshape(score.shape[0], len(SUBJECTS), -1).mean(-1).max(-1)[0]
    return out


def _pool_lines(name: str, n: int, rng: np.random.Generator) -> list[str]:
    lines = []
    for i in range(n):
        words = " ".join(f"w{rng.integers(100)}" for _ in range(int(rng.integers(2, 40))))
        msg = [{"role": "user", "content": f"{name} question {i}?"},
               {"role": "assistant", "content": f"answer {words}"}]  # fmt: skip
        lines.append(json.dumps({"dataset": name, "id": f"{name}_{i}", "messages": msg}))
    return lines


def _trainer_state(step: int, per_epoch: int, total: int) -> dict:
    """Linear decay from ``PEAK_LR``; learning rate logged every 5 steps."""
    lr = [PEAK_LR * (total - s) / total for s in range(step + 1)]
    log = [{"epoch": round(s / per_epoch, 2), "step": s, "learning_rate": lr[s],
            "loss": 1.0} for s in range(5, step + 1, 5)]  # fmt: skip
    return {"epoch": step / per_epoch, "global_step": step, "log_history": log}


def write_reference_run(root: str | Path, seed: int = 0) -> dict:
    """A whole reference run under ``root``: ``data/pool/*_data.jsonl``,
    ``data/eval/mmlu/dev/*_dev.csv``, ``out/checkpoint-<N>/trainer_state.json``,
    ``grads/...`` and ``selected_data/mmlu/`` (p=0.05). Returns the paths and numbers."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "data/pool").mkdir(parents=True, exist_ok=True)
    (root / "data/eval/mmlu/dev").mkdir(parents=True, exist_ok=True)
    lines = {n: _pool_lines(n, k, rng) for n, k in POOL_FILES.items()}
    for name, ls in lines.items():
        (root / f"data/pool/{name}_data.jsonl").write_text("\n".join(ls) + "\n")
    for s in SUBJECTS:
        rows = [f"{s} question {j}?,a,b,c,d,{'ABCD'[j % 4]}" for j in range(SHOTS)]
        (root / f"data/eval/mmlu/dev/{s}_dev.csv").write_text("\n".join(rows) + "\n")
    directions = rng.standard_normal((len(SUBJECTS), DIM))
    topic = {n: rng.integers(-1, len(SUBJECTS), size=k) for n, k in POOL_FILES.items()}
    for step in STEPS:
        (root / f"out/checkpoint-{step}").mkdir(parents=True, exist_ok=True)
        state = _trainer_state(step, STEPS[0], STEPS[-1])
        (root / f"out/checkpoint-{step}/trainer_state.json").write_text(json.dumps(state))
        for name, k in POOL_FILES.items():
            strength = np.where(topic[name] >= 0, rng.uniform(0.2, 2.0, k), 0.0)[:, None]
            feats = strength * directions[np.maximum(topic[name], 0)] + rng.standard_normal(
                (k, DIM)
            )
            rows = torch.tensor(feats * 3e-3, dtype=torch.float16)
            save_like_collect_grads(root / f"grads/{name}-ckpt{step}-adam/dim{DIM}", rows)
        shots = np.repeat(directions, SHOTS, 0) + 0.3 * rng.standard_normal(
            (len(SUBJECTS) * SHOTS, DIM)
        )
        rows = torch.tensor(shots * 1e-2, dtype=torch.bfloat16)
        save_like_collect_grads(root / f"grads/mmlu-ckpt{step}-sgd/dim{DIM}", rows)
    weights = [_mean_lr(step) for step in STEPS]
    scores = matching_scores(root / "grads", list(POOL_FILES), "mmlu", weights)
    _write_selected(root / "selected_data/mmlu", scores, lines, 0.05)
    return {"root": root, "grads": root / "grads", "pool": root / "data/pool",
            "mmlu": root / "data/eval/mmlu", "out": root / "out", "weights": weights,
            "scores": scores}  # fmt: skip


def _mean_lr(step: int) -> float:
    """The exact mean learning rate of the epoch ending at ``step`` (linear decay)."""
    per, total = STEPS[0], STEPS[-1]
    return float(np.mean([PEAK_LR * (total - s) / total for s in range(step - per + 1, step + 1)]))


def _write_selected(out: Path, scores: dict, lines: dict, p: float) -> None:
    """``write_selected_data.py`` (fixed): sorted.csv and top_p<p>.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(scores)
    all_scores = torch.cat([scores[n] for n in names])
    index = torch.cat([torch.arange(len(scores[n])) for n in names])
    data_from = torch.cat([torch.full((len(scores[n]),), i) for i, n in enumerate(names)])
    sorted_scores, order = torch.sort(all_scores, descending=True)
    data_from, index = data_from[order], index[order]
    with open(out / "sorted.csv", "w") as fh:
        fh.write("file name, index, score\n")
        for s, i, f in zip(sorted_scores, index, data_from, strict=True):
            fh.write(f"{names[f.item()]}, {i.item()}, {round(s.item(), 6)}\n")
    k = int(p * len(all_scores))
    with open(out / f"top_p{p}.jsonl", "w") as fh:
        for i, f in zip(index[:k].tolist(), data_from[:k].tolist(), strict=True):
            fh.write(lines[names[f]][i] + "\n")
