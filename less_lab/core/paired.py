"""Does a selection method beat random selection? Paired differences over seeds.

Why paired: the seed-to-seed spread of fine-tuning results is often as large as the gap
between methods, so two means with their stds side by side (``compare.summary_table``)
cannot say whether a method beats random. Differences taken seed by seed (method seed
``s`` minus baseline seed ``s``) cancel what the two runs of a seed share, and a Student-t
interval over those differences says whether the gap is more than noise.

A deterministic method (BM25, RDS, the full pool; LESS without per-seed warmups) runs once.
Its single run is paired with *every* baseline seed: the differences then vary only
through the baseline, so the interval asks "is this one run better than random selection
usually is?", not "is the method better over the randomness of its own seeds" (it has
none). Any method with a single run is treated that way, whatever its seed.

Pure numpy/polars: the Student-t quantile is computed here (regularised incomplete beta by
continued fraction, inverted by bisection), so scipy is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

BETTER, WORSE, TIE, NA = "better", "worse", "tie (interval includes 0)", "n/a"
SHAPE = ("sel_completion_tokens", "sel_top_source_share", "sel_n_subtasks")
DIFF_SCHEMA = {
    "method": pl.String,
    "metric": pl.String,
    "n_pairs": pl.Int64,
    "mean_diff": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "excludes_zero": pl.Boolean,
    "better": pl.Boolean,
    "method_mean": pl.Float64,
    "baseline_mean": pl.Float64,
}


# ------------------------------------------------------------------- Student t


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz, Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (> 0) degrees of freedom.

    Closed forms for df 1 and 2; otherwise the upper tail ``0.5 * I_x(df/2, 1/2)`` with
    ``x = df / (df + t^2)`` is inverted by bisection on ``x`` (monotone, always converges,
    and fine for the handful of quantiles an interval needs).
    """
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) * math.sqrt(2.0 / (4.0 * p * (1.0 - p)))
    target = 2.0 * (1.0 - p)  # I_x(df/2, 1/2) at the quantile; I_x grows with x
    lo, hi = 0.0, 1.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if regularized_beta(mid, df / 2.0, 0.5) < target else (lo, mid)
    x = 0.5 * (lo + hi)
    return math.sqrt(df * (1.0 - x) / x)


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: mean ± t_{(1+c)/2, n-1} · sd/√n (sd with ddof 1); the bounds
    are NaN with fewer than two values (no spread to estimate), the mean NaN with none."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


# ------------------------------------------------------------------- pairing


def higher_is_better_for(metric: str, overrides: Mapping[str, bool] | None = None) -> bool:
    """A metric's good direction: names containing "loss" are lower-is-better, every other
    one higher-is-better, unless ``overrides`` says otherwise."""
    if overrides and metric in overrides:
        return bool(overrides[metric])
    return "loss" not in metric.lower()


def verdict(better: bool | None, ci_low: float | None) -> str:
    """The word for one paired row: better / worse when the interval excludes zero, a tie
    when it includes zero, ``n/a`` when there is no interval (fewer than two pairs)."""
    if better is not None:
        return BETTER if better else WORSE
    return NA if ci_low is None or math.isnan(ci_low) else TIE


def _check_runs(runs: pl.DataFrame, metrics: Sequence[str], baseline: str) -> None:
    missing = [c for c in ("method", "seed", *metrics) if c not in runs.columns]
    if missing:
        raise KeyError(f"runs lack columns {missing} (have {runs.columns})")
    if baseline not in runs["method"].to_list():
        raise ValueError(f"no {baseline!r} runs to compare against")
    dup = runs.group_by("method", "seed").len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"several runs share a (method, seed), pairing is ambiguous: {dup.rows()}")


def paired_values(
    runs: pl.DataFrame, method: str, metric: str, baseline: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """``(method values, baseline values)`` of ``metric``, aligned pair by pair.

    Pairs are matched on ``seed``; a method with a single run is paired with every baseline
    seed (see the module docstring). Pairs where either side is null or NaN are dropped.
    """
    col = pl.col(metric).cast(pl.Float64).fill_nan(None)
    mine = runs.filter(pl.col("method") == method).select("seed", col.alias("value"))
    base = runs.filter(pl.col("method") == baseline).select("seed", col.alias("base_value"))
    if mine.height == 1:
        pairs = mine.drop("seed").join(base, how="cross")
    else:
        pairs = mine.join(base, on="seed", how="inner").sort("seed")
    pairs = pairs.drop_nulls(["value", "base_value"])
    return pairs["value"].to_numpy(), pairs["base_value"].to_numpy()


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _pair_row(m: np.ndarray, b: np.ndarray, confidence: float, higher: bool) -> dict:
    """The statistics columns of one (method, metric) row, from its aligned pairs."""
    mean, lo, hi = t_interval(m - b, confidence)
    excludes = bool(lo > 0 or hi < 0)  # False when the bounds are NaN
    return {
        "n_pairs": len(m),
        "mean_diff": _nan_to_none(mean),
        "ci_low": _nan_to_none(lo),
        "ci_high": _nan_to_none(hi),
        "excludes_zero": excludes,
        "better": ((mean > 0) == higher) if excludes else None,
        "method_mean": float(m.mean()) if len(m) else None,
        "baseline_mean": float(b.mean()) if len(b) else None,
    }


def paired_differences(
    runs: pl.DataFrame,
    metrics: Sequence[str],
    *,
    baseline: str = "random",
    confidence: float = 0.95,
    higher_is_better: Mapping[str, bool] | None = None,
) -> pl.DataFrame:
    """Method − baseline, paired by seed, with a Student-t interval: one row per (method ≠
    baseline, metric), methods in the order first seen, metrics in the order given.

    Columns :data:`DIFF_SCHEMA`: ``n_pairs``; ``mean_diff`` with ``ci_low`` / ``ci_high``
    at ``confidence`` (null with fewer than two pairs); ``excludes_zero``; ``better`` (True
    / False when the interval excludes zero on the good / bad side, see
    :func:`higher_is_better_for`, None when it includes zero or is null); ``method_mean`` /
    ``baseline_mean`` over the same pairs, so ``mean_diff`` is their difference.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _check_runs(runs, metrics, baseline)
    rows = []
    for method in runs["method"].unique(maintain_order=True).to_list():
        if method == baseline:
            continue
        for metric in metrics:
            m, b = paired_values(runs, method, metric, baseline)
            higher = higher_is_better_for(metric, higher_is_better)
            rows.append({"method": method, "metric": metric, **_pair_row(m, b, confidence, higher)})
    return pl.DataFrame(rows, schema=DIFF_SCHEMA)


# ------------------------------------------------------------------- the table


def format_interval(low: float | None, high: float | None, digits: int = 3) -> str:
    """``"[lo, hi]"`` with ``digits`` decimals, ``"-"`` when there is no interval."""
    if low is None or high is None:
        return "-"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _verdict_columns(
    diffs: pl.DataFrame, methods: list[str], metrics: Sequence[str], digits: int
) -> pl.DataFrame:
    """``<m>_diff``, ``<m>_ci``, ``<m>_verdict`` per method (the baseline: null, "-", n/a)."""
    by_key = {(r["method"], r["metric"]): r for r in diffs.iter_rows(named=True)}
    out: dict[str, list] = {"method": methods}
    for metric in metrics:
        rows = [by_key.get((method, metric)) for method in methods]
        out[f"{metric}_diff"] = [r and r["mean_diff"] for r in rows]
        out[f"{metric}_ci"] = [
            format_interval(r["ci_low"], r["ci_high"], digits) if r else "-" for r in rows
        ]
        out[f"{metric}_verdict"] = [verdict(r["better"], r["ci_low"]) if r else NA for r in rows]
    schema = {"method": pl.String}
    for metric in metrics:
        schema |= {f"{metric}_diff": pl.Float64, f"{metric}_ci": pl.String}
        schema[f"{metric}_verdict"] = pl.String
    return pl.DataFrame(out, schema=schema)


def beats_random_table(
    runs: pl.DataFrame,
    metrics: Sequence[str],
    *,
    baseline: str = "random",
    shape: Sequence[str] = SHAPE,
    confidence: float = 0.95,
    higher_is_better: Mapping[str, bool] | None = None,
    digits: int = 3,
) -> pl.DataFrame:
    """ "Beats random?": one row per method (the baseline included, order first seen).

    Columns: ``method``, ``n_seeds`` (its runs), then per metric ``<m>`` (mean over the
    method's runs), ``<m>_diff`` (paired mean difference, :func:`paired_differences`),
    ``<m>_ci`` ("[lo, hi]") and ``<m>_verdict`` (better / worse / tie (interval includes 0)
    / n/a for the baseline and for fewer than two pairs), then the means of the ``shape``
    columns present in ``runs`` (length and diversity of the selection: a win that comes
    with much longer or one-source selections deserves a second look).
    """
    diffs = paired_differences(
        runs, metrics, baseline=baseline, confidence=confidence, higher_is_better=higher_is_better
    )
    shape = [c for c in shape if c in runs.columns and c not in metrics]
    means = runs.group_by("method", maintain_order=True).agg(
        pl.col("seed").n_unique().cast(pl.Int64).alias("n_seeds"),
        *[pl.col(c).cast(pl.Float64).fill_nan(None).mean() for c in [*metrics, *shape]],
    )
    methods = means["method"].to_list()
    table = means.join(
        _verdict_columns(diffs, methods, metrics, digits), on="method", maintain_order="left"
    )
    order = [c for m in metrics for c in (m, f"{m}_diff", f"{m}_ci", f"{m}_verdict")]
    return table.select("method", "n_seeds", *order, *shape)
