"""Model calls shared by every evaluator: prompt encoding, log-likelihoods of
continuations and choices, greedy generation with stop strings, and held-out loss.

Why one module: every evaluator must see the model exactly as fine-tuning trained it, so
prompts go through the training tokenizer (:func:`less_lab.formatting.tokenize`: training chat
format, BOS and truncation) and every call runs in eval mode without autograd
(:func:`inference`). Calls are batched by a token budget; each scorer equals its plain
definition (full logits, one sequence at a time), which the tests check on the tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from less_lab.config import DataConfig
from less_lab.data.batching import IGNORE, collate, token_budget_batches
from less_lab.data.formatting import tokenize
from less_lab.data.pool import MESSAGES_DTYPE
from less_lab.evaluate.metrics import summarize
from less_lab.model.device import model_device, to_host
from less_lab.model.lora import example_losses, position_logits


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; restores the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_prompts(prompts: Sequence[str], tokenizer: Any, data_cfg: DataConfig) -> list[list[int]]:
    """Token ids of single-turn user prompts up to the assistant header, built by the
    training tokenizer (a dummy completion is cut off), so chat format, BOS and prompt
    truncation are exactly those of training."""
    frame = pl.DataFrame(
        {
            "example_id": [str(i) for i in range(len(prompts))],
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]
                for p in prompts
            ],
        },
        schema={"example_id": pl.String, "messages": MESSAGES_DTYPE},
    )
    tok, _ = tokenize(frame, tokenizer, data_cfg)
    out = []
    for ids, labels in zip(tok["input_ids"].to_list(), tok["labels"].to_list(), strict=True):
        first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
        out.append(ids[:first])
    return out


def _batches(
    lengths: Sequence[int], token_budget: int, max_batch: int | None, desc: str, progress: bool
) -> Iterator[list[int]]:
    batches = token_budget_batches(lengths, token_budget, max_batch)
    yield from tqdm(batches, desc=desc, unit="batch", disable=not progress or len(batches) < 2)


def _positions(seqs, starts, cands, idx) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """``(rows, cols, spans)``: the batch positions whose next-token distribution is
    needed (those predicting tokens ``start..n-1``, then, with candidates, position
    ``n-1``) and each row's ``(first, count)`` of continuation positions among them."""
    rows, cols, spans = [], [], []
    for row, i in enumerate(idx):
        n, a = len(seqs[i]), max(starts[i], 1)
        wanted = list(range(a - 1, n - 1)) + ([n - 1] if cands is not None else [])
        spans.append((len(cols), max(n - a, 0)))
        rows += [row] * len(wanted)
        cols += wanted
    return rows, cols, spans


def _score(
    model,
    seqs: list[list[int]],
    starts: list[int],
    cands: list[list[int]] | None,
    token_budget: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, list]:
    """For each sequence: sum of log p(token) over positions >= start, and (if ``cands``)
    the next-token log-probs of its candidate ids after the whole sequence. Logits come
    from the model's own head path (soft-capping, logit scaling) at the needed positions
    only; computed on the model's device in fp32, read back once per batch."""
    device = model_device(model)
    sums, cand_lp = np.zeros(len(seqs)), [None] * len(seqs)
    with inference(model):
        for idx in _batches([len(s) for s in seqs], token_budget, None, desc, progress):
            batch = collate([seqs[i] for i in idx], [seqs[i] for i in idx], 0)
            rows, cols, spans = _positions(seqs, starts, cands, idx)
            logits = position_logits(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                torch.as_tensor(rows, dtype=torch.long, device=device),
                torch.as_tensor(cols, dtype=torch.long, device=device),
            )
            logp = torch.log_softmax(logits.float(), -1)
            batch_sums = torch.zeros(len(idx), device=device)
            cand_rows = []
            for row, (i, (first, k)) in enumerate(zip(idx, spans, strict=True)):
                if k:
                    target = torch.as_tensor(seqs[i][len(seqs[i]) - k :], device=device)
                    batch_sums[row] = logp[first : first + k].gather(1, target[:, None]).sum()
                if cands is not None:
                    cand_rows.append(logp[first + k][torch.as_tensor(cands[i], device=device)])
            sums[idx] = to_host(batch_sums).numpy()
            if cand_rows:
                flat = iter(to_host(torch.cat(cand_rows)).tolist())
                for i in idx:
                    cand_lp[i] = [next(flat) for _ in cands[i]]
    return sums, cand_lp


def continuation_logliks(
    model,
    prompts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    token_budget: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """log p(continuation | prompt) summed over the continuation's tokens (the plain
    definition; ``choice_logliks`` is the shared-prefix fast path of it)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    return _score(model, seqs, [len(p) for p in prompts], None, token_budget, progress, "score")[0]


def choice_logliks(
    model,
    prompts: Sequence[list[int]],
    choices: Sequence[Sequence[list[int]]],
    *,
    token_budget: int = 4096,
    progress: bool = False,
) -> list[list[float]]:
    """log p(choice | prompt) for every choice of every prompt. When a prompt's choices
    are one shared prefix plus one distinct last token (" A".." D" as one token each, or
    as " " + letter) a single forward pass scores them all."""
    shared_seqs, shared_starts, shared_cands, shared_of = [], [], [], {}
    plain_p, plain_c, plain_of = [], [], []
    for i, (p, cs) in enumerate(zip(prompts, choices, strict=True)):
        prefix = cs[0][:-1] if cs and cs[0] else None
        if prefix is not None and all(len(c) == len(prefix) + 1 and c[:-1] == prefix for c in cs):
            shared_of[i] = len(shared_seqs)
            shared_seqs.append(list(p) + list(prefix))
            shared_starts.append(len(p))
            shared_cands.append([c[-1] for c in cs])
        else:
            for j, c in enumerate(cs):
                plain_p.append(p)
                plain_c.append(c)
                plain_of.append((i, j))
    out = [[0.0] * len(cs) for cs in choices]
    if shared_seqs:
        sums, cand = _score(
            model, shared_seqs, shared_starts, shared_cands, token_budget, progress, "choices"
        )
        for i, k in shared_of.items():
            out[i] = [sums[k] + lp for lp in cand[k]]
    if plain_p:
        lls = continuation_logliks(
            model, plain_p, plain_c, token_budget=token_budget, progress=progress
        )
        for (i, j), ll in zip(plain_of, lls, strict=True):
            out[i][j] = float(ll)
    return out


def generate(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    token_budget: int = 8192,
    max_batch: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of tokenized prompts, batched by length (left padding), each
    cut at EOS and at the first of the ``stop`` strings."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    lengths = [len(p) + max_new_tokens for p in prompts]
    out = [""] * len(prompts)
    device = model_device(model)
    with inference(model):
        for idx in _batches(lengths, token_budget, max_batch, "generate", progress):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.as_tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            until = StoppingCriteriaList([_StopText(tokenizer, stop, width)] if stop else [])
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=cfg,
                stopping_criteria=until,
            )
            new_rows = to_host(gen[:, width:]).tolist()
            for row, i in enumerate(idx):
                new = new_rows[row]
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id)]
                out[i] = _cut(tokenizer.decode(new, skip_special_tokens=True), stop)
    return out


class _StopText(StoppingCriteria):
    """Stop a row once its generated text contains a stop string. Decoding the new tokens
    each step is cheap next to a forward pass, unlike ``stop_strings``, whose per-call
    vocabulary tables cost seconds with a 49k vocabulary."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, list(stop), start

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _cut(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        text = text.split(s)[0]
    return text


# --------------------------------------------------------------------------- held-out loss


def example_loss_frame(
    model,
    tokenized: pl.DataFrame,
    token_budget: int = 4096,
    *,
    pad_id: int = 0,
    progress: bool = True,
) -> pl.DataFrame:
    """Per-example completion loss (mean token cross-entropy) of a tokenized frame."""
    losses = np.zeros(tokenized.height)
    ids, labels = tokenized["input_ids"].to_list(), tokenized["labels"].to_list()
    device = model_device(model)
    with inference(model):
        for idx in _batches(tokenized["n_tokens"].to_list(), token_budget, None, "loss", progress):
            batch = collate([ids[i] for i in idx], [labels[i] for i in idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            losses[idx] = to_host(example_losses(model, batch)).numpy()
    group = next((c for c in ("subtask", "source") if c in tokenized.columns), None)
    sub = tokenized[group] if group else pl.Series(["all"] * tokenized.height)
    return pl.DataFrame({"example_id": tokenized["example_id"], "subtask": sub, "loss": losses})


def heldout_loss(
    model, tokenized: pl.DataFrame, token_budget: int = 4096, **kw: Any
) -> pl.DataFrame:
    """Mean completion loss per subtask (``subtask``, else ``source`` column) and their
    mean: the cheap metric every fine-tuning run records (appendix I's loss view).
    ``kw`` (``pad_id``, ``progress``) goes to :func:`example_loss_frame`, so the two share
    one set of defaults."""
    return summarize(example_loss_frame(model, tokenized, token_budget, **kw), ["loss"])
