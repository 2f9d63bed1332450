"""Small pure statistics shared by the checks and the views (numpy and polars only).

Kept apart from ``scoring`` and ``reliability`` so that views can use them without
importing anything that opens a datastore.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as floats."""
    return pl.Series(x).rank("average").to_numpy().astype(np.float64)


def correlation(a: np.ndarray, b: np.ndarray, method: str = "pearson") -> float:
    """Pearson or Spearman correlation over the rows where both are finite."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.asarray(a, np.float64)[ok], np.asarray(b, np.float64)[ok]
    if method == "spearman":
        a, b = ranks(a), ranks(b)
    elif method != "pearson":
        raise ValueError(f"unknown correlation {method!r}; expected pearson or spearman")
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` highest finite scores (ties: lower index first)."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    return np.argsort(-scores, kind="stable")[:k]
