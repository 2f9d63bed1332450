"""Is the pool's Adam feature still Adam? Eps share and the shared momentum term.

Γ(z) = m'/sqrt(v' + eps) (paper Definition 3.1). LoRA second moments after a short warmup
can be ~1e-13 while eps = 1e-8: eps then dominates every denominator, Γ becomes a scaled
momentum-SGD update ``b1 m + (1 - b1) g``, and when ``b1 m`` (the same for every example)
outweighs the example's own ``(1 - b1) g``, all pool features point alike and their
cosines with a target crowd into a narrow band that projection noise can reorder. These
functions measure both from the saved moments and a few example gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from less_lab.config import GradientConfig
from less_lab.core.gradients import per_example_gradients
from less_lab.core.training import load_adapter
from less_lab.data.batching import collate, token_budget_batches
from less_lab.model.device import model_device, to_host
from less_lab.model.lora import block_names, lora_modules

DEFAULT_GRAD = GradientConfig()
EPS_SHARE_SCHEMA = {
    "checkpoint": pl.Int64,
    "weight": pl.String,
    "kind": pl.String,
    "n": pl.Int64,
    "eps_share": pl.Float64,
    "v_hat_median": pl.Float64,
    "eps": pl.Float64,
}
"""Columns of :func:`eps_share_table`, one row per checkpoint and LoRA weight."""
MOMENTUM_SCHEMA = {
    "checkpoint": pl.Int64,
    "example_id": pl.String,
    "momentum_share": pl.Float64,
    "msgd_cos": pl.Float64,
    "eps_share": pl.Float64,
}
"""Columns of :func:`momentum_table`, one row per checkpoint and example."""


def _radicand(v: torch.Tensor, step: int, b2: float, cfg: GradientConfig) -> torch.Tensor:
    c2 = 1 - b2 ** (step + 1) if cfg.adam_bias_correction else 1.0
    return v / c2


def eps_dominates(v_hat: torch.Tensor, eps: float, cfg: GradientConfig) -> torch.Tensor:
    """Where eps outweighs the second moment in Γ's denominator: ``v_hat < eps`` for the
    paper's ``sqrt(v + eps)``, ``sqrt(v_hat) < eps`` for torch's ``sqrt(v) + eps``."""
    return v_hat < eps if cfg.adam_eps_inside_sqrt else v_hat.sqrt() < eps


def _kind(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.lora_A.weight`` -> ``q_proj.lora_A``."""
    parts = name.split(".")
    return ".".join(parts[-3:-1]) if len(parts) >= 3 else name


def eps_share_table(checkpoints: Sequence, cfg: GradientConfig = DEFAULT_GRAD) -> pl.DataFrame:
    """Per checkpoint and LoRA weight: share of coordinates where eps dominates the
    denominator given the saved moments alone, i.e. with radicand ``b2 v / (1 - b2^(t+1))``
    (the part every example shares; its own ``(1 - b2) g²`` can only lower the share)."""
    rows = []
    for ckpt in checkpoints:
        state = ckpt.adam_state()
        b2 = state.betas[1]
        for name, v in state.exp_avg_sq.items():
            v_hat = _radicand(b2 * v.double().flatten(), state.step, b2, cfg)
            rows.append(
                (
                    ckpt.epoch,
                    name,
                    _kind(name),
                    v_hat.numel(),
                    float(eps_dominates(v_hat, state.eps, cfg).double().mean()),
                    float(v_hat.median()),
                    state.eps,
                )
            )
    return pl.DataFrame(rows, orient="row", schema=EPS_SHARE_SCHEMA)


def update_parts(
    grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, state, cfg: GradientConfig
) -> dict[str, torch.Tensor]:
    """Γ of a ``(b, n)`` gradient block split as ``Γ = momentum + gradient`` (both divided
    by the example's own denominator), with the momentum-SGD direction ``(b1 m + (1-b1) g)``
    and the per-coordinate eps flags. Matches ``gradients.adam_update`` exactly."""
    b1, b2 = state.betas
    t = state.step + 1
    c1 = 1 - b1**t if cfg.adam_bias_correction else 1.0
    m, v = m.flatten().double(), v.flatten().double()
    g = grad.double()
    v_hat = _radicand(b2 * v + (1 - b2) * g.square(), state.step, b2, cfg)
    denom = (v_hat + state.eps).sqrt() if cfg.adam_eps_inside_sqrt else v_hat.sqrt() + state.eps
    momentum = (b1 * m / c1).expand_as(g) / denom
    gradient = (1 - b1) * g / c1 / denom
    return {
        "momentum": momentum,
        "gradient": gradient,
        "update": momentum + gradient,
        "msgd": b1 * m + (1 - b1) * g,
        "eps": eps_dominates(v_hat, state.eps, cfg),
    }


def momentum_table(
    checkpoints: Sequence,
    model: torch.nn.Module,
    tokenized: pl.DataFrame,
    cfg: GradientConfig = DEFAULT_GRAD,
    *,
    pad_id: int = 0,
) -> pl.DataFrame:
    """Per checkpoint and example of ``tokenized`` (keep it small: one gradient pass each):
    ``momentum_share = ||momentum / D|| / ||Γ||``, ``msgd_cos = cos(Γ, b1 m + (1-b1) g)``
    (1 means Adam's preconditioning did nothing: momentum-SGD), and the eps share with the
    example's own ``g²`` included. ``model`` is the PEFT selection model; each checkpoint's
    adapter is loaded into it; everything is computed on the model's device, the moments
    moved there, and read back once per batch."""
    rows = []
    device = model_device(model)
    for ckpt in checkpoints:
        load_adapter(model, ckpt)
        model.eval()
        modules = lora_modules(model)
        names, state = block_names(modules), _state_on(ckpt.adam_state(), device)
        for group in token_budget_batches(
            tokenized["n_tokens"].to_list(), cfg.token_budget, cfg.max_batch_examples
        ):
            batch = collate(
                [tokenized["input_ids"][i] for i in group],
                [tokenized["labels"][i] for i in group],
                pad_id,
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            blocks, _ = per_example_gradients(model, modules, batch)
            acc = {
                k: torch.zeros(len(group), dtype=torch.float64, device=device)
                for k in ("mm", "uu", "um", "ss", "eps", "n")
            }
            for blk, name in zip(blocks, names, strict=True):
                p = update_parts(blk, state.exp_avg[name], state.exp_avg_sq[name], state, cfg)
                acc["mm"] += p["momentum"].square().sum(1)
                acc["uu"] += p["update"].square().sum(1)
                acc["um"] += (p["update"] * p["msgd"]).sum(1)
                acc["ss"] += p["msgd"].square().sum(1)
                acc["eps"] += p["eps"].double().sum(1)
                acc["n"] += blk.shape[1]
            acc = {k: to_host(v).numpy() for k, v in acc.items()}
            for j, i in enumerate(group):
                uu, mm, ss = acc["uu"][j], acc["mm"][j], acc["ss"][j]
                share = float(np.sqrt(mm / uu)) if uu > 0 else float("nan")
                cos = float(acc["um"][j] / np.sqrt(uu * ss)) if uu * ss > 0 else float("nan")
                rows.append(
                    (
                        ckpt.epoch,
                        tokenized["example_id"][i],
                        share,
                        cos,
                        float(acc["eps"][j] / acc["n"][j]),
                    )
                )
    return pl.DataFrame(rows, orient="row", schema=MOMENTUM_SCHEMA)


def _state_on(state, device: torch.device):
    """The checkpoint's Adam moments (fp32) on ``device``, where the gradients are."""
    state.exp_avg = {k: v.to(device=device, dtype=torch.float32) for k, v in state.exp_avg.items()}
    state.exp_avg_sq = {
        k: v.to(device=device, dtype=torch.float32) for k, v in state.exp_avg_sq.items()
    }
    return state


@dataclass
class AdamHealth:
    """Whether the pool's Adam features are still Adam (see :func:`adam_health`)."""

    weights: pl.DataFrame
    """``eps_share_table``: per checkpoint and LoRA weight."""
    examples: pl.DataFrame | None
    """``momentum_table`` on a sample (None when no model was given)."""
    warnings: list[str] = field(default_factory=list)

    def by_checkpoint(self) -> pl.DataFrame:
        """Coordinate-weighted eps share per checkpoint, with sample means when present."""
        out = self.weights.group_by("checkpoint").agg(
            ((pl.col("eps_share") * pl.col("n")).sum() / pl.col("n").sum()).alias("eps_share"),
            pl.col("v_hat_median").median().alias("v_hat_median"),
            pl.col("eps").first(),
        )
        if self.examples is not None and self.examples.height:
            ex = self.examples.group_by("checkpoint").agg(
                pl.col("momentum_share").mean(),
                pl.col("msgd_cos").mean(),
                pl.col("eps_share").mean().alias("eps_share_with_g"),
            )
            out = out.join(ex, on="checkpoint", how="left")
        return out.sort("checkpoint")

    def by_kind(self) -> pl.DataFrame:
        """Eps share per checkpoint and kind of LoRA weight (``q_proj.lora_A`` ...)."""
        return (
            self.weights.group_by("checkpoint", "kind")
            .agg(((pl.col("eps_share") * pl.col("n")).sum() / pl.col("n").sum()).alias("eps_share"))
            .sort("checkpoint", "kind")
        )

    def text(self, warnings: bool = True) -> str:
        lines = ["Adam-update health (eps share: coordinates where eps outweighs v):"]
        for row in self.by_checkpoint().iter_rows(named=True):
            line = (
                f"  checkpoint {row['checkpoint']}: eps share {row['eps_share']:.1%} "
                f"(median v_hat {row['v_hat_median']:.2g} vs eps {row['eps']:.0e})"
            )
            if "momentum_share" in row and row["momentum_share"] is not None:
                line += (
                    f"; with g: {row['eps_share_with_g']:.1%}; momentum share of Γ "
                    f"{row['momentum_share']:.2f}; cos(Γ, momentum-SGD) "
                    f"{row['msgd_cos']:.3f}"
                )
            lines.append(line)
        kinds = self.by_kind().group_by("kind").agg(pl.col("eps_share").mean()).sort("kind")
        lines.append("  by weight kind: " + ", ".join(f"{k} {s:.0%}" for k, s in kinds.iter_rows()))
        lines += [f"  WARNING: {w}" for w in self.warnings] if warnings else []
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


def adam_health(
    checkpoints: Sequence,
    cfg: GradientConfig = DEFAULT_GRAD,
    *,
    model: torch.nn.Module | None = None,
    tokenized: pl.DataFrame | None = None,
    pad_id: int = 0,
    sample: int = 8,
    seed: int = 0,
    max_eps_share: float = 0.5,
    max_momentum_share: float = 0.5,
    max_msgd_cos: float = 0.95,
) -> AdamHealth:
    """Eps shares from the checkpoints' moments; with ``model`` and ``tokenized`` also the
    momentum share and the cosine to momentum-SGD on ``sample`` random examples.

    Warns when eps dominates more than ``max_eps_share`` of coordinates, when the shared
    momentum term is more than ``max_momentum_share`` of Γ's norm (every example's feature
    then points the same way and cosines shrink to a narrow band), or when Γ is within
    ``max_msgd_cos`` of the momentum-SGD direction (Adam has degenerated)."""
    health = AdamHealth(eps_share_table(checkpoints, cfg), None)
    if model is not None and tokenized is not None and tokenized.height:
        rows = np.random.default_rng(seed).permutation(tokenized.height)[:sample]
        health.examples = momentum_table(
            checkpoints, model, tokenized[sorted(rows.tolist())], cfg, pad_id=pad_id
        )
    for row in health.by_checkpoint().iter_rows(named=True):
        c = row["checkpoint"]
        if row["eps_share"] > max_eps_share:
            health.warnings.append(
                f"checkpoint {c}: eps dominates {row['eps_share']:.0%} of coordinates "
                f"(median v_hat {row['v_hat_median']:.1g} vs eps {row['eps']:.0e}): the "
                "features are close to momentum-SGD; a longer warmup, or a smaller eps, helps"
            )
        if (row.get("momentum_share") or 0) > max_momentum_share:
            health.warnings.append(
                f"checkpoint {c}: the shared momentum term is {row['momentum_share']:.0%} "
                "of each Γ's norm, so all pool features point alike and scores vary little"
            )
        if (row.get("msgd_cos") or 0) > max_msgd_cos:
            health.warnings.append(
                f"checkpoint {c}: cos(Γ, momentum-SGD update) = {row['msgd_cos']:.3f}: "
                "Adam preconditioning has no effect here"
            )
    return health
