"""Paired differences against random selection (less_lab.core.paired): the Student-t
quantiles against published values, an interval by hand, pairing by seed (row order does
not matter), a deterministic method against every baseline seed, the good direction of
loss and accuracy, too few pairs, and the "beats random?" table."""

from __future__ import annotations

import math

import polars as pl
import pytest

from less_lab.core.paired import (
    NA,
    TIE,
    beats_random_table,
    paired_differences,
    paired_values,
    t_cdf,
    t_quantile,
)

T_975_2, T_975_4, T_95_9 = 4.302653, 2.776445, 1.833113


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 2, T_975_2),
        (0.975, 4, T_975_4),
        (0.95, 9, T_95_9),
        (0.975, 1, 12.706205),
        (0.995, 3, 5.840909),
        (0.975, 30, 2.042272),
        (0.975, 1000, 1.962339),
        (0.025, 4, -T_975_4),
    ],
)
def test_t_quantile_matches_published_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_quantile_refuses_impossible_arguments():
    for p, df in [(0.0, 3), (1.0, 3), (0.9, 0)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)


def runs_frame(rows: list[tuple]) -> pl.DataFrame:
    """``(method, seed, val_loss, test_acc)`` rows as a runs frame."""
    return pl.DataFrame(
        rows, schema=["method", "seed", "val_loss", "test_acc"], orient="row"
    ).with_columns(pl.col("val_loss", "test_acc").cast(pl.Float64))


# less - random on test_acc per seed: 1, 2, 3 -> mean 2, sd 1
RUNS = [
    ("random", 0, 1.0, 10.0),
    ("random", 1, 1.2, 20.0),
    ("random", 2, 1.1, 30.0),
    ("less", 0, 0.9, 11.0),
    ("less", 1, 1.0, 22.0),
    ("less", 2, 0.8, 33.0),
    ("bm25", 0, 1.3, 25.0),
]


def row(diffs: pl.DataFrame, method: str, metric: str) -> dict:
    return diffs.filter((pl.col("method") == method) & (pl.col("metric") == metric)).row(
        0, named=True
    )


def test_interval_by_hand():
    diffs = paired_differences(runs_frame(RUNS), ["test_acc"])
    r = row(diffs, "less", "test_acc")
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(2.0)
    assert r["ci_low"] == pytest.approx(2 - half, abs=1e-5)
    assert r["ci_high"] == pytest.approx(2 + half, abs=1e-5)
    assert r["excludes_zero"] is False and r["better"] is None  # 2 - 2.484 < 0
    assert r["method_mean"] == pytest.approx(22.0) and r["baseline_mean"] == pytest.approx(20.0)
    wide = paired_differences(runs_frame(RUNS), ["test_acc"], confidence=0.90)
    assert row(wide, "less", "test_acc")["ci_low"] > r["ci_low"]


def test_pairs_match_by_seed_whatever_the_row_order():
    runs = runs_frame(RUNS)
    shuffled = runs.sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled["seed"].to_list() != runs["seed"].to_list()
    a = paired_differences(runs, ["val_loss", "test_acc"]).sort("method", "metric")
    b = paired_differences(shuffled, ["val_loss", "test_acc"]).sort("method", "metric")
    assert a.equals(b)
    # LESS seeds listed 2, 0, 1: pairing by position would differ from pairing by seed
    reordered = runs_frame(RUNS[:3] + [RUNS[5], RUNS[3], RUNS[4]])
    c = paired_differences(reordered, ["test_acc"])
    assert row(c, "less", "test_acc")["mean_diff"] == pytest.approx(2.0)
    assert row(c, "less", "test_acc")["ci_high"] == pytest.approx(2 + T_975_2 / math.sqrt(3))


def test_only_shared_seeds_pair():
    runs = runs_frame([*RUNS[:3], ("less", 0, 0.9, 11.0), ("less", 7, 0.9, 99.0)])
    m, b = paired_values(runs, "less", "test_acc")
    assert m.tolist() == [11.0] and b.tolist() == [10.0]


def test_a_deterministic_method_is_paired_with_every_baseline_seed():
    runs = runs_frame(RUNS)
    m, b = paired_values(runs, "bm25", "test_acc")
    assert m.tolist() == [25.0] * 3 and sorted(b.tolist()) == [10.0, 20.0, 30.0]
    r = row(paired_differences(runs, ["test_acc"]), "bm25", "test_acc")
    # differences 15, 5, -5: mean 5, sd 10
    assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(5.0)
    assert r["ci_low"] == pytest.approx(5 - T_975_2 * 10 / math.sqrt(3), abs=1e-5)
    # a single run whose seed is not a baseline seed still pairs with all of them
    other = runs_frame([*RUNS[:3], ("rds", 42, 1.0, 25.0)])
    assert row(paired_differences(other, ["test_acc"]), "rds", "test_acc")["n_pairs"] == 3


def direction_runs() -> pl.DataFrame:
    """LESS has lower loss and higher accuracy than random on every seed, clearly."""
    rows = [("random", s, 1.0 + 0.01 * s, 0.40 + 0.01 * s) for s in range(4)]
    rows += [("less", s, 0.8 + 0.011 * s, 0.50 + 0.012 * s) for s in range(4)]
    return runs_frame(rows)


def test_loss_is_lower_is_better_and_accuracy_higher():
    diffs = paired_differences(direction_runs(), ["val_loss", "test_acc"])
    loss, acc = row(diffs, "less", "val_loss"), row(diffs, "less", "test_acc")
    assert loss["mean_diff"] < 0 and loss["excludes_zero"] and loss["better"] is True
    assert acc["mean_diff"] > 0 and acc["excludes_zero"] and acc["better"] is True
    flipped = paired_differences(
        direction_runs(), ["val_loss", "test_acc"], higher_is_better={"test_acc": False}
    )
    assert row(flipped, "less", "test_acc")["better"] is False
    assert row(flipped, "less", "val_loss")["better"] is True


def test_fewer_than_two_pairs_give_no_interval():
    runs = runs_frame([*RUNS[:3], ("less", 0, 0.9, 11.0), ("less", 9, 0.8, 12.0)])
    r = row(paired_differences(runs, ["test_acc"]), "less", "test_acc")
    assert r["n_pairs"] == 1 and r["mean_diff"] == pytest.approx(1.0)
    assert r["ci_low"] is None and r["ci_high"] is None
    assert r["excludes_zero"] is False and r["better"] is None
    no_baseline_value = runs_frame(RUNS).with_columns(
        pl.when(pl.col("method") == "random").then(None).otherwise("test_acc").alias("test_acc")
    )
    r = row(paired_differences(no_baseline_value, ["test_acc"]), "less", "test_acc")
    assert r["n_pairs"] == 0 and r["mean_diff"] is None and r["method_mean"] is None


def test_bad_inputs_are_refused():
    runs = runs_frame(RUNS)
    with pytest.raises(ValueError, match="no 'random' runs"):
        paired_differences(runs.filter(pl.col("method") != "random"), ["test_acc"])
    with pytest.raises(KeyError, match="nope"):
        paired_differences(runs, ["nope"])
    with pytest.raises(ValueError, match="ambiguous"):
        paired_differences(pl.concat([runs, runs.head(1)]), ["test_acc"])
    with pytest.raises(ValueError, match="confidence"):
        paired_differences(runs, ["test_acc"], confidence=95)


def test_rows_are_methods_in_order_first_seen_times_metrics():
    diffs = paired_differences(runs_frame(RUNS), ["val_loss", "test_acc"])
    assert diffs.select("method", "metric").rows() == [
        ("less", "val_loss"),
        ("less", "test_acc"),
        ("bm25", "val_loss"),
        ("bm25", "test_acc"),
    ]


def test_beats_random_table():
    runs = direction_runs().with_columns(
        pl.col("seed").cast(pl.Float64).alias("sel_completion_tokens"),
        pl.lit(0.5).alias("sel_top_source_share"),
    )
    runs = pl.concat([runs, runs_frame(RUNS[-1:])], how="diagonal_relaxed")
    table = beats_random_table(runs, ["val_loss", "test_acc"])
    assert table["method"].to_list() == ["random", "less", "bm25"]
    assert table.columns == [
        "method",
        "n_seeds",
        *("val_loss", "val_loss_diff", "val_loss_ci", "val_loss_verdict"),
        *("test_acc", "test_acc_diff", "test_acc_ci", "test_acc_verdict"),
        "sel_completion_tokens",
        "sel_top_source_share",
    ]  # sel_n_subtasks is not in the runs: left out
    rand, less, bm25 = table.rows(named=True)
    assert rand["n_seeds"] == 4 and less["n_seeds"] == 4 and bm25["n_seeds"] == 1
    assert rand["test_acc_verdict"] == NA and rand["test_acc_ci"] == "-"
    assert rand["test_acc_diff"] is None
    assert less["val_loss_verdict"] == "better" and less["test_acc_verdict"] == "better"
    assert less["test_acc"] == pytest.approx(0.518)
    diffs = paired_differences(runs, ["test_acc"])
    r = row(diffs, "less", "test_acc")
    assert less["test_acc_diff"] == pytest.approx(r["mean_diff"])
    assert less["test_acc_ci"] == f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    assert less["sel_completion_tokens"] == pytest.approx(1.5)
    assert bm25["sel_completion_tokens"] is None
    # bm25: 25 against 0.40..0.43 is clearly higher; its loss 1.3 clearly worse
    assert bm25["test_acc_verdict"] == "better" and bm25["val_loss_verdict"] == "worse"


def test_table_says_tie_when_the_interval_includes_zero():
    table = beats_random_table(runs_frame(RUNS), ["test_acc"], shape=())
    assert table.filter(pl.col("method") == "less")["test_acc_verdict"].item() == TIE
    assert table.columns == ["method", "n_seeds", "test_acc", "test_acc_diff", "test_acc_ci",
                             "test_acc_verdict"]  # fmt: skip
