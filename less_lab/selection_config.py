"""Scoring and selection settings: the paper's Eq. 2 and its top 5%, and the named
remedies for selections that pick noise (issue "selections worth teaching with").

Every remedy is off by default (the paper's method stays the default); each is one field
here, settable with ``--set scoring.aggregate=zscore`` or its CLI flag, recorded in the
selection's fingerprint, and measured against random by ``benchmarks/remedies_demo.py``
and ``benchmarks/beats_random.py`` (numbers in ``benchmarks/RESULTS.md``):

- ``scoring.aggregate``: scale-free aggregation across subtasks (``zscore``, ``rank``,
  ``round_robin``) instead of the paper's ``max`` of raw cosines, which hands every pick
  to the subtask whose cosines run highest;
- ``gradients.pool_tokens`` / ``gradients.target_tokens`` (in ``config.GradientConfig``):
  leave the end-of-sequence and chat-template tokens out of the loss whose gradient is
  taken (a one-token multiple-choice answer's gradient is mostly its EOS);
- ``select.length_bins``: length-matched quotas (the pool's completion-length mix);
- ``select.max_similarity``: near-duplicate suppression in the top k;
- ``scoring.method=subspace``: target-subspace scoring, the cosine with the cone the
  subtask's target gradients span (``core/cone.py``);
- ``scoring.method=loss_drop``: a stronger scorer from the literature, CoLoR-Filter's
  conditional loss reduction (Brandfonbrener et al., NeurIPS 2024).

Base layer: imports only ``validation`` and ``errors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from less_lab.errors import ConfigError
from less_lab.validation import Validated, is_fraction, positive

ScoreMethod = Literal["paper", "mean_of_shots", "subspace", "dot", "loss_drop"]
Aggregate = Literal["max", "mean", "zscore", "rank", "round_robin"]


@dataclass(frozen=True)
class ScoreConfig(Validated):
    """Turning features into one score per pool example (§4.2, Eq. 2)."""

    method: ScoreMethod = "paper"
    """``paper``: cosine with each subtask's mean target gradient (Eq. 2);
    ``mean_of_shots``: mean over the subtask's shots of per-shot cosines (reference code);
    ``subspace``: cosine with the nearest direction in the cone (non-negative span) of the
    subtask's unit shot gradients: the target-subspace projection, not dragged by one
    shot's dominant token (``core/cone.py`` says why a cone and not the span);
    ``dot``: unnormalised inner product with the mean target gradient (Table 13);
    ``loss_drop``: CoLoR-Filter (Brandfonbrener et al. 2024): each pool example's loss
    under the last warmup checkpoint minus its loss after that adapter is further trained
    on the target's examples (``loss_drop_epochs`` at ``loss_drop_lr``); no gradient store."""
    aggregate: Aggregate = "max"
    """Across subtasks: ``max`` (paper) of raw scores; ``mean``; ``zscore``: max of each
    subtask's scores standardised over the pool (scale-free: a subtask whose cosines run
    2x higher no longer takes every pick); ``rank``: max of within-subtask percentile
    ranks; ``round_robin``: subtasks take turns picking their best untaken example (the
    score becomes the pick order, 1 = first). The long per-subtask frame keeps the raw
    scores either way."""
    normalize_lr: bool = True
    """Rescale the checkpoint learning-rate weights to sum to one (ranking unchanged)."""
    chunk_rows: int = 16384
    """Pool rows read per chunk while scoring: bounds memory on paper-scale stores."""
    loss_drop_epochs: int = 3
    """``loss_drop`` only: epochs of training the conditional adapter on the targets."""
    loss_drop_lr: float = 1e-4
    """``loss_drop`` only: learning rate of that training (linear schedule)."""

    def _rules(self):
        return [
            ("chunk_rows", positive, "at least 1 row per chunk"),
            ("loss_drop_epochs", positive, "at least 1 epoch"),
            ("loss_drop_lr", positive, "a learning rate > 0"),
        ]


@dataclass(frozen=True)
class SelectConfig(Validated):
    """How many examples to keep, and how the top of the ranking is shaped."""

    fraction: float | None = 0.05
    """Share of the pool to select (paper: 5%). Ignored when ``k`` is set."""
    k: int | None = None
    """Exact number of examples to select."""
    length_bins: int = 0
    """Length-matched quotas: ``0`` (paper) takes the top k whatever their lengths; ``n >=
    2`` cuts the pool into ``n`` completion-length quantile bins and gives each bin its
    pool share of the k picks (largest remainder), filled best first, so a selection
    cannot be all 5-token answers."""
    max_similarity: float | None = None
    """Near-duplicate suppression: ``None`` (paper) keeps every top example; a value in
    (-1, 1) skips a candidate whose gradient cosine (learning-rate-weighted over the
    checkpoints, as the score) with an already-selected example exceeds it."""

    def _rules(self):
        return [
            ("fraction", lambda v: v is None or is_fraction(v), "a share of the pool in (0, 1]"),
            ("k", lambda v: v is None or v >= 1, "at least 1 example"),
            ("fraction", lambda v: v is not None or self.k is not None, "fraction or k"),
            ("length_bins", lambda v: v == 0 or v >= 2, "0 (off) or at least 2 bins"),
            (
                "max_similarity",
                lambda v: v is None or -1 < v < 1,
                "None (off) or a cosine in (-1, 1)",
            ),
        ]

    def size(self, n: int) -> int:
        """How many of ``n`` pool examples to keep (at least 1, the fraction rounded up as
        ``select_top`` does); ``k > n`` is refused."""
        if self.k is not None:
            if self.k > n:
                raise ConfigError(
                    f"select.k={self.k}: expected at most the pool size ({n})", key="select.k"
                )
            return self.k
        return max(1, math.ceil(self.fraction * n))

    @property
    def shaped(self) -> bool:
        """Whether a remedy changes the top of the ranking (quotas or de-duplication)."""
        return self.length_bins > 0 or self.max_similarity is not None
