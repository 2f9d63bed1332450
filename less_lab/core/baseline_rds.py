"""The RDS baseline (paper §5.2): Eq. 2 on the model's last-token hidden states instead of
gradient features.

Why its own module: one baseline family per module (see ``baselines`` for the registry);
it is the only baseline that runs the model, and ``neighbors`` reuses its states.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from less_lab.config import DataConfig
from less_lab.core.baseline_common import score_frame, target_subtasks
from less_lab.core.scoring import unit_rows
from less_lab.model.device import model_device, to_host


def last_token_states(
    model: Any,
    tokenizer: Any,
    frame: pl.DataFrame,
    *,
    data_cfg: DataConfig | None = None,
    token_budget: int = 4096,
    max_batch_examples: int = 64,
    progress: bool = True,
    desc: str = "rds",
) -> tuple[list[str], np.ndarray]:
    """``(example_ids, states)``: the final-layer hidden state (after the final norm, as
    ``hidden_states[-1]``) at the last non-padding token of each example, tokenized like
    LESS (``formatting.tokenize``). Examples ``tokenize`` drops are absent. Right padding and
    the attention mask make the state independent of the batch it was computed in."""
    import torch
    from tqdm.auto import tqdm

    from less_lab.data.batching import collate, token_budget_batches
    from less_lab.data.formatting import tokenize
    from less_lab.model.lora import decoder_and_head

    tok, _ = tokenize(frame, tokenizer, data_cfg or DataConfig())
    ids = tok["example_id"].to_list()
    input_ids, labels = tok["input_ids"].to_list(), tok["labels"].to_list()
    body, _ = decoder_and_head(model)
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = token_budget_batches(tok["n_tokens"].to_list(), token_budget, max_batch_examples)
    out = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                batch = collate([input_ids[i] for i in idx], [labels[i] for i in idx], pad)
                mask = batch["attention_mask"].to(device)
                hidden = body(input_ids=batch["input_ids"].to(device), attention_mask=mask)
                last = mask.sum(1) - 1
                states = hidden.last_hidden_state[torch.arange(len(idx), device=device), last]
                states = to_host(states).numpy()
                if out is None:
                    out = np.zeros((len(ids), states.shape[1]), dtype=np.float32)
                out[idx] = states
    finally:
        model.train(was_training)
    return ids, out if out is not None else np.zeros((0, 0), dtype=np.float32)


def rds_scores(
    model: Any,
    tokenizer: Any,
    pool: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    data_cfg: DataConfig | None = None,
    token_budget: int = 4096,
    max_batch_examples: int = 64,
    progress: bool = True,
) -> pl.DataFrame:
    """RDS: Eq. 2 with last-token final hidden states in place of gradient features.

    Mirrors LESS's scoring: every representation is L2-normalised (as LESS's projected
    gradients are), subtask j's target is the mean of its normalised target states, and
    the score is the cosine with it; ``aggregate`` then takes the max. Works on a plain
    or PEFT-wrapped causal LM (LoRA layers active); runs in eval mode without gradients.
    Pool examples ``formatting.tokenize`` drops (no completion token left) score NaN and are
    never selected; a subtask left with no target example scores NaN, with a warning.
    """
    subtasks = target_subtasks(targets)
    kw = dict(data_cfg=data_cfg, token_budget=token_budget, progress=progress)
    kw["max_batch_examples"] = max_batch_examples
    t_ids, t_states = last_token_states(model, tokenizer, targets, desc="rds targets", **kw)
    p_ids, p_states = last_token_states(model, tokenizer, pool, desc="rds pool", **kw)
    sub_of = dict(zip(targets["example_id"].to_list(), targets["subtask"].to_list(), strict=True))
    t_sub = np.asarray([sub_of[i] for i in t_ids], dtype=object)
    t_unit = unit_rows(t_states)
    means = np.full((len(subtasks), p_states.shape[1] or t_states.shape[1]), np.nan)
    for j, name in enumerate(subtasks):
        if (t_sub == name).any():
            means[j] = t_unit[t_sub == name].mean(0)
        else:
            warnings.warn(f"rds_scores: subtask {name!r} has no usable target", stacklevel=2)
    out = np.full((pool.height, len(subtasks)), np.nan)
    if p_ids:
        row = {eid: i for i, eid in enumerate(pool["example_id"].to_list())}
        out[[row[i] for i in p_ids]] = unit_rows(p_states) @ unit_rows(means).T
    return score_frame(out, subtasks, pool)
