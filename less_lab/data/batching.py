"""Token-budget batching: group examples of similar length so padding is small and memory
is bounded by a number of tokens, not a number of examples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


def token_budget_batches(
    lengths: Sequence[int], token_budget: int, max_examples: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches whose padded size (rows x longest) fits the budget.

    Examples are sorted by length (longest first, so an out-of-memory shows up at once),
    and an example longer than the budget gets a batch of its own rather than being cut.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        new_longest = max(longest, n)
        too_many = max_examples is not None and len(current) >= max_examples
        if current and (new_longest * (len(current) + 1) > token_budget or too_many):
            batches.append(current)
            current, new_longest = [], n
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def collate(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets attention 0 and label -100."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
        ids[row, : len(x)] = torch.as_tensor(x)
        lab[row, : len(y)] = torch.as_tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}
