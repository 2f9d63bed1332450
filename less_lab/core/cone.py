"""The cosine of a vector with the cone spanned by a few target gradients.

Scoring method ``subspace`` (``ScoreConfig.method``): the target-subspace projection
named among the remedies for small-model LESS, with non-negative weights. A subtask's k
target shots (unit gradients t_1..t_k) span the cone ``K = {sum_l a_l t_l : a >= 0}``; a
pool gradient u (unit) scores ``max_{v in K, |v|=1} u . v``, its cosine with the nearest
direction a non-negative mix of the shots can point in. Why a cone and not the span: in
the span, a gradient pointing *against* a shot scores as high as one pointing with it
(its projection has the same length); in the cone it scores low. Why not the paper's
mean: a shot whose gradient is mostly one token (the EOS of a one-letter answer) drags
the mean towards that token; in the cone each shot is a direction of its own and an
example close to any mix of them scores high. With one shot per subtask it equals the
paper's cosine; it does not depend on the shots' lengths.

Computed from cosines only: with ``b_l = u . t_l`` and the shots' Gram matrix ``G``, the
projection of u onto K is ``p = sum a_l t_l`` with ``a`` the non-negative least squares
solution of ``min |u - sum a_l t_l|^2`` (solved here by coordinate descent on all rows at
once); since ``u . p = |p|^2`` at the optimum, the cosine is ``|p| = sqrt(a^T G a)``.
When u is in the polar cone (every ``b_l <= 0``) ``p = 0`` and the best cosine is
``max_l b_l``, reached at a shot. Tests check it against brute force over every support
set.
"""

from __future__ import annotations

import warnings

import numpy as np

TOL = 1e-10
"""Coordinate descent stops when no coefficient moved by more than this (the cosines are
then exact to ~1e-9: far below the projection's own noise)."""
MAX_SWEEPS = 10_000
"""A guard: near-identical shots converge slowly; past it the result is kept, with a
warning."""


def cone_cosines(b: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Cosine of each row's unit vector with the cone of unit shots, from ``b`` (rows x
    shots: cosines with each shot) and ``gram`` (shots x shots: their inner products).

    A shot with a zero gradient (Gram diagonal 0) spans nothing and is ignored."""
    b = np.asarray(b, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    if b.ndim != 2 or gram.shape != (b.shape[1], b.shape[1]):
        raise ValueError(f"need b (rows, k) and gram (k, k); got {b.shape} and {gram.shape}")
    live = np.flatnonzero(np.diag(gram) > 0)
    if live.size == 0:
        return np.zeros(len(b))
    b, gram = b[:, live], gram[np.ix_(live, live)]
    a = _nnls(b, gram)
    sq = np.einsum("ij,jk,ik->i", a, gram, a)
    return np.where(a.any(axis=1), np.sqrt(np.maximum(sq, 0.0)), b.max(axis=1))


def _nnls(b: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Non-negative ``a`` minimising ``a^T G a - 2 a . b`` for every row of b at once."""
    a = np.zeros_like(b)
    diag = np.diag(gram)
    for _ in range(MAX_SWEEPS):
        moved = 0.0
        for k in range(len(diag)):
            rest = a @ gram[:, k] - a[:, k] * diag[k]
            new = np.maximum(0.0, (b[:, k] - rest) / diag[k])
            moved = max(moved, float(np.abs(new - a[:, k]).max(initial=0.0)))
            a[:, k] = new
        if moved <= TOL:
            return a
    warnings.warn(
        f"cone scoring: coordinate descent stopped after {MAX_SWEEPS} sweeps with a "
        f"coefficient still moving by {moved:.1e} (near-identical target shots?)",
        stacklevel=3,
    )
    return a
