"""Why a gradient points where it does: its split over completion tokens and LoRA modules.

A LESS score is a cosine between gradients, and a cosine hides what made it. Two exact
decompositions open it up:

* **tokens**: an example's loss is the mean of its ``T`` completion-token losses, so its
  gradient is ``g = sum_t g_t`` with ``g_t`` the gradient of ``loss_t / T``. The share
  ``<g_t, g> / ||g||^2`` says how much of ``g`` token ``t`` carries (the shares sum to 1;
  a token pulling against the rest has a negative share). A multiple-choice answer is one
  letter plus an end-of-sequence token, and the EOS can carry most of ``g``: then the
  target "asks for" examples that end the same way, not ones that know the answer.
* **modules**: a cosine over the concatenated LoRA blocks is a sum of per-module terms
  ``<a_m, b_m> / (||a|| ||b||)``, so the score of a pool example splits into what each
  adapted layer (and each warmup checkpoint) contributes (:func:`score_decomposition`).

Every gradient here is unprojected (the exact features), computed with the same
``per_example_gradients`` the datastore uses, so the pieces add up to the exact score.
The per-token gradients come from ``T`` copies of the example, copy ``t`` keeping only
label ``t``: one batched backward pass per chunk of copies, never ``T`` separate ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from less_lab.config import GradientConfig
from less_lab.core.gradients import AdamState, per_example_gradients, squared_norms, to_features
from less_lab.core.scoring import checkpoint_weights
from less_lab.core.training import Checkpoint, load_adapter
from less_lab.data.batching import IGNORE, collate
from less_lab.data.token_kinds import token_kinds
from less_lab.model.device import model_device
from less_lab.model.lora import LoraModule, block_names, lora_modules

CHUNK_ROWS = 16
"""Copies (or target rows) per backward pass: bounds the ``(rows, P)`` gradient held."""

CONTRIBUTION_SCHEMA = {
    "example_id": pl.String,
    "position": pl.Int64,
    "token_id": pl.Int64,
    "token": pl.String,
    "kind": pl.String,
    "loss": pl.Float64,
    "grad_norm": pl.Float64,
    "norm_share": pl.Float64,
    "projection_share": pl.Float64,
}


# ------------------------------------------------------------------------ per token


def labelled_positions(labels: Sequence[int]) -> list[int]:
    """Positions whose label enters the loss. The loss compares the logits at ``p - 1``
    with ``labels[p]``, so a label at position 0 never counts and is left out."""
    return [p for p, y in enumerate(labels) if p > 0 and int(y) != IGNORE]


def one_label_copies(
    input_ids: Sequence[int], labels: Sequence[int], positions: Sequence[int]
) -> tuple[list[list[int]], list[list[int]]]:
    """One copy of the example per position, keeping only that position's label: the
    mean loss of copy ``t`` is then token ``t``'s own loss. Each copy ends at its label
    (attention is causal, so later tokens change nothing before them): a long completion
    costs about half the tokens of full-length copies."""
    ids = [int(i) for i in input_ids]
    copies_ids, copies_labels = [], []
    for p in positions:
        copies_ids.append(ids[: p + 1])
        copies_labels.append([IGNORE] * p + [int(labels[p])])
    return copies_ids, copies_labels


@dataclass
class TokenGradients:
    """Per-token gradients of one chunk of an example's labelled positions."""

    positions: list[int]
    losses: torch.Tensor
    """``(n,)`` cross-entropy of each token (its NLL)."""
    blocks: list[torch.Tensor]
    """``(n, numel)`` fp32 per LoRA block: the gradient of ``loss_t / T``, so that the
    rows of all chunks sum to the example's gradient."""


def token_gradients(
    model: torch.nn.Module,
    modules: Sequence[LoraModule],
    input_ids: Sequence[int],
    labels: Sequence[int],
    *,
    pad_id: int,
    chunk: int = CHUNK_ROWS,
) -> Iterator[TokenGradients]:
    """The per-token gradients of one example, ``chunk`` tokens at a time (peak memory:
    ``chunk`` gradients, whatever the completion length). Run the model in eval mode."""
    positions = labelled_positions(labels)
    if not positions:
        raise ValueError("the example has no labelled (completion) token after position 0")
    device, n = model_device(model), len(positions)
    for start in range(0, n, chunk):
        part = positions[start : start + chunk]
        batch = collate(*one_label_copies(input_ids, labels, part), pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        blocks, losses = per_example_gradients(model, modules, batch)
        yield TokenGradients(part, losses.float(), [b / n for b in blocks])


def example_gradient(
    model: torch.nn.Module,
    modules: Sequence[LoraModule],
    input_ids: Sequence[int],
    labels: Sequence[int],
    *,
    pad_id: int,
) -> list[torch.Tensor]:
    """The gradient of the example's mean completion loss, one 1-D fp32 tensor per block
    (computed on its own, as a batch of one: the reference the token shares divide by)."""
    batch = collate([list(input_ids)], [list(labels)], pad_id)
    batch = {k: v.to(model_device(model)) for k, v in batch.items()}
    blocks, _ = per_example_gradients(model, modules, batch)
    return [b[0] for b in blocks]


def _token_stats(model, modules, input_ids, labels, pad_id: int, chunk: int) -> dict:
    """Positions, losses, gradient norms and projections on ``g`` of every token."""
    g = example_gradient(model, modules, input_ids, labels, pad_id=pad_id)
    g_sq = float(sum(b.double().square().sum() for b in g))
    out: dict[str, list] = {"position": [], "loss": [], "grad_norm": [], "dot": []}
    for part in token_gradients(model, modules, input_ids, labels, pad_id=pad_id, chunk=chunk):
        dots = sum(b.double() @ gb.double() for b, gb in zip(part.blocks, g, strict=True))
        out["position"] += part.positions
        out["loss"] += part.losses.tolist()
        out["grad_norm"] += squared_norms(part.blocks).double().sqrt().tolist()
        out["dot"] += dots.tolist()
    dots = np.asarray(out.pop("dot"))
    out["projection_share"] = (dots / g_sq if g_sq > 0 else dots * np.nan).tolist()
    norms = np.asarray(out["grad_norm"])
    out["norm_share"] = (norms / norms.sum() if norms.sum() > 0 else norms * np.nan).tolist()
    return out


def _example_frame(model, modules, example_id, ids, labels, tokenizer, pad_id, chunk):
    """One row per labelled token of one example (see :func:`token_contributions`)."""
    stats = _token_stats(model, modules, ids, labels, pad_id, chunk)
    kinds = token_kinds(ids, labels, tokenizer)
    positions = stats["position"]
    token_ids = [int(ids[p]) for p in positions]
    return pl.DataFrame(
        {
            "example_id": [example_id] * len(positions),
            "position": positions,
            "token_id": token_ids,
            "token": [tokenizer.decode([t]) for t in token_ids],
            "kind": [str(kinds[p]) for p in positions],
            **{k: stats[k] for k in ("loss", "grad_norm", "norm_share", "projection_share")},
        },
        schema=CONTRIBUTION_SCHEMA,
    )


def token_contributions(
    model: torch.nn.Module,
    tokenized: pl.DataFrame,
    tokenizer,
    *,
    pad_id: int,
    chunk: int = CHUNK_ROWS,
) -> pl.DataFrame:
    """How much of each example's gradient each completion token carries.

    ``tokenized``: a few rows of ``data.formatting.tokenize`` output (``example_id``,
    ``input_ids``, ``labels``); ``model``: a PEFT model with the wanted checkpoint's
    adapter loaded. One row per labelled token: ``example_id, position, token_id, token
    (decoded), kind (content / eos / template), loss (its NLL), grad_norm (||g_t||, g_t
    the gradient of loss_t / T), norm_share (grad_norm over the example's sum),
    projection_share (<g_t, g> / ||g||^2: sums to 1 per example, may be negative)``.

    Costs one backward pass per ``chunk`` tokens of each example, each over the whole
    sequence: meant for a handful of examples, not a pool."""
    model.eval()
    modules = lora_modules(model)
    parts = [
        _example_frame(model, modules, ex, ids, labels, tokenizer, pad_id, chunk)
        for ex, ids, labels in tokenized.select("example_id", "input_ids", "labels").iter_rows()
    ]
    return pl.concat(parts) if parts else pl.DataFrame(schema=CONTRIBUTION_SCHEMA)


def kind_shares(contrib: pl.DataFrame) -> pl.DataFrame:
    """Per example and token kind: the token count and summed ``projection_share`` and
    ``norm_share``, so "the EOS carries 0.8 of the gradient" is one row. Examples keep
    their order; kinds follow their first appearance."""
    return contrib.group_by("example_id", "kind", maintain_order=True).agg(
        pl.len().alias("n_tokens"),
        pl.col("projection_share").sum(),
        pl.col("norm_share").sum(),
    )


# ----------------------------------------------------------------------- per module

TERM_SCHEMA = {"module": pl.String, "term": pl.Float64, "share": pl.Float64}


def module_of(block: str) -> str:
    """The LoRA module a gradient block belongs to: ``...q_proj.lora_A.weight`` and
    ``...q_proj.lora_B.weight`` (``lora.block_names``) are both ``...q_proj``."""
    return re.sub(r"\.lora_[AB](\.[^.]+)?\.weight$", "", block)


def module_terms(
    grads_a: Sequence[torch.Tensor], grads_b: Sequence[torch.Tensor], names: Sequence[str]
) -> pl.DataFrame:
    """The cosine of two block-split vectors as a sum over LoRA modules.

    ``grads_a`` / ``grads_b``: the same blocks (``names``, A then B per module) of two
    unprojected gradients or features. ``term`` of a module is ``<a_m, b_m> / (||a||
    ||b||)``: the terms sum to the full-space cosine; ``share`` is ``term / cosine``.
    A zero vector gives zero terms (as the scorer gives it a zero cosine) and NaN shares.
    Computed in float64, so the terms are no noisier than the cosine itself."""
    if not len(grads_a) == len(grads_b) == len(names):
        raise ValueError(f"got {len(grads_a)} and {len(grads_b)} blocks for {len(names)} names")
    a = [t.detach().double().flatten() for t in grads_a]
    b = [t.detach().double().flatten() for t in grads_b]
    norms = float(sum(x @ x for x in a).sqrt() * sum(y @ y for y in b).sqrt())
    sums: dict[str, float] = {}
    for name, x, y in zip(names, a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"block {name}: shapes {tuple(x.shape)} and {tuple(y.shape)}")
        sums[module_of(name)] = sums.get(module_of(name), 0.0) + float(x @ y)
    terms = np.array(list(sums.values())) / norms if norms > 0 else np.zeros(len(sums))
    cosine = terms.sum()
    shares = terms / cosine if cosine != 0 else terms * np.nan
    return pl.DataFrame({"module": list(sums), "term": terms, "share": shares}, schema=TERM_SCHEMA)


def moments_on(checkpoint: Checkpoint, device: torch.device) -> AdamState:
    """A checkpoint's Adam moments in fp32 on ``device`` (the Adam transform is fp32
    whatever the model dtype, as in the datastore)."""
    adam = checkpoint.adam_state()
    adam.exp_avg = {k: v.to(device, torch.float32) for k, v in adam.exp_avg.items()}
    adam.exp_avg_sq = {k: v.to(device, torch.float32) for k, v in adam.exp_avg_sq.items()}
    return adam


def mean_features(
    model: torch.nn.Module,
    tokenized: pl.DataFrame,
    *,
    kind: str,
    cfg: GradientConfig,
    pad_id: int,
    adam: AdamState | None = None,
    chunk: int = CHUNK_ROWS,
) -> list[torch.Tensor]:
    """The mean over ``tokenized``'s rows of their unprojected ``kind`` features (one 1-D
    fp32 tensor per LoRA block): a subtask's mean target gradient, or, for one row, that
    example's feature. Batched ``chunk`` rows at a time; run the model in eval mode."""
    if tokenized.height == 0:
        raise ValueError("no examples to average")
    modules = lora_modules(model)
    names, device = block_names(modules), model_device(model)
    sums: list[torch.Tensor] | None = None
    for start in range(0, tokenized.height, chunk):
        part = tokenized[start : start + chunk]
        batch = collate(part["input_ids"].to_list(), part["labels"].to_list(), pad_id)
        blocks, _ = per_example_gradients(
            model, modules, {k: v.to(device) for k, v in batch.items()}
        )
        feats = [f.sum(0) for f in to_features(blocks, names, kind, cfg, adam)]
        sums = feats if sums is None else [s + f for s, f in zip(sums, feats, strict=True)]
    return [s / tokenized.height for s in sums]


DECOMPOSITION_SCHEMA = {
    "checkpoint": pl.Int64,
    "weight": pl.Float64,
    "module": pl.String,
    "cosine_term": pl.Float64,
    "term": pl.Float64,
}


def _checkpoint_terms(model, pool_row, target_rows, checkpoint, kinds, cfg, pad_id):
    """Module terms of ``cos(mean target feature, pool feature)`` at one checkpoint."""
    load_adapter(model, checkpoint)
    model.eval()
    adam = moments_on(checkpoint, model_device(model)) if "adam" in kinds else None
    common = {"cfg": cfg, "pad_id": pad_id, "adam": adam}
    target = mean_features(model, target_rows, kind=kinds[1], **common)
    pool = mean_features(model, pool_row, kind=kinds[0], **common)
    return module_terms(target, pool, block_names(lora_modules(model)))


def score_decomposition(
    model: torch.nn.Module,
    pool_row: pl.DataFrame,
    target_rows: pl.DataFrame,
    checkpoints: Sequence[Checkpoint],
    *,
    pad_id: int,
    cfg: GradientConfig,
    pool_feature: str | None = None,
    target_feature: str | None = None,
    normalize_lr: bool = True,
) -> pl.DataFrame:
    """The exact (unprojected) LESS score of one pool example for one target subtask,
    split by warmup checkpoint and LoRA module.

    ``pool_row``: the example's tokenized row; ``target_rows``: the subtask's tokenized
    target rows; ``model``: the PEFT model (each checkpoint's adapter is loaded in turn and
    the last one stays). Rows ``checkpoint (epoch), weight (w_i, the normalised mean lr),
    module, cosine_term (<ḡ_m, Γ_m> / (||ḡ|| ||Γ||)), term (w_i x cosine_term)``: summed
    over modules and checkpoints, ``term`` is the paper's score ``sum_i w_i cos(ḡ_i, Γ_i)``
    (Eq. 2, method ``paper``) with exact features instead of projected ones. Features
    default to ``cfg``'s (adam for the pool, sgd for targets)."""
    if pool_row.height != 1:
        raise ValueError(f"pool_row must hold exactly one example, got {pool_row.height}")
    kinds = (pool_feature or cfg.pool_feature, target_feature or cfg.target_feature)
    weights = checkpoint_weights([c.lr for c in checkpoints], normalize_lr)
    parts = []
    for ckpt, w in zip(checkpoints, weights, strict=True):
        terms = _checkpoint_terms(model, pool_row, target_rows, ckpt, kinds, cfg, pad_id)
        parts.append(
            terms.select(
                pl.lit(ckpt.epoch, pl.Int64).alias("checkpoint"),
                pl.lit(float(w), pl.Float64).alias("weight"),
                "module",
                pl.col("term").alias("cosine_term"),
                (pl.col("term") * float(w)).alias("term"),
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=DECOMPOSITION_SCHEMA)


def module_summary(decomposition: pl.DataFrame) -> pl.DataFrame:
    """``score_decomposition`` summed over checkpoints: ``module, term, share`` (share of
    the whole score), largest contribution first: which layers make the score."""
    total = decomposition["term"].sum()
    summed = decomposition.group_by("module", maintain_order=True).agg(pl.col("term").sum())
    share = pl.col("term") / total if total != 0 else pl.lit(float("nan"))
    return summed.with_columns(share.alias("share")).sort("term", descending=True)
