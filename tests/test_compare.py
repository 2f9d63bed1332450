"""The comparison runner end to end on the tiny model and the demo data: table shape,
seeds, cached and resumable stages, refusal of changed settings, and the CLI."""

from __future__ import annotations

import polars as pl
import pytest

from less_lab import cli
from less_lab import compare as cmp
from less_lab.config import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.core import training
from less_lab.core.baselines import baseline_scores
from less_lab.core.scoring import aggregate
from less_lab.core.selection import select_top
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.errors import ConfigError
from less_lab.evaluate.evaluators import loss_eval
from less_lab.lab import Lab
from less_lab.model.tiny import tiny_llama

TRAIN = TrainConfig(epochs=2, learning_rate=2e-3, batch_size=4, token_budget=512,
                    lora=LoraSettings(r=2, alpha=4, dropout=0.0))  # fmt: skip
WARMUP = WarmupConfig(fraction=0.25, train=TRAIN)
DATA = DataConfig(max_length=96)
GRAD = GradientConfig(proj_dim=32, token_budget=512)
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _lab(tmp_path, tokenizer) -> Lab:
    lab = Lab(tmp_path / "run", data=DATA, warmup=WARMUP, gradients=GRAD, progress=False)
    lab.use_model(tiny_llama(tokenizer, seed=0), tokenizer)
    lab.set_pool(demo_pool(n_per_form=1))  # 40 examples
    lab.add_target("demo", demo_targets(n_shots=2))  # 3 subtasks x 2
    return lab


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        return self.fn(*args, **kw)


def test_compare_end_to_end_and_resume(tiny_tokenizer, tmp_path, monkeypatch):
    lab = _lab(tmp_path, tiny_tokenizer)
    held = Counting(loss_eval(demo_targets(seed=7, n_shots=2), data_cfg=DATA))
    kw = dict(fraction=0.1, seeds=(0, 1), train_cfg=TRAIN, evals={"held": held})
    table = cmp.compare(lab, "demo", **kw)
    assert table["method"].to_list() == list(cmp.METHODS)
    assert table["n_runs"].to_list() == [2, 2, 1, 2, 1]  # bm25, rds deterministic
    assert table["n_selected_mean"].to_list() == [4.0] * 5  # ceil(0.1 * 40)
    for col in ("val_loss", "held_loss", "train_loss", "best_epoch", "sel_completion_tokens"):
        assert f"{col}_mean" in table.columns and f"{col}_std" in table.columns
    single = table.filter(pl.col("method").is_in(["bm25", "rds"]))
    assert single["val_loss_std"].is_null().all()
    runs = cmp.load_runs(lab.run_dir / "compare" / "demo")
    assert runs.height == 8 and held.calls == 8
    rnd = runs.filter(pl.col("method") == "random").sort("seed")
    assert table.filter(pl.col("method") == "random")["held_loss_mean"][0] == pytest.approx(
        rnd["held_loss"].mean()
    )
    assert table.filter(pl.col("method") == "random")["held_loss_std"][0] == pytest.approx(
        rnd["held_loss"].std()
    )

    out = lab.run_dir / "compare" / "demo"
    sel = {(m, s): pl.read_parquet(out / m / f"seed-{s}" / "selection.parquet")
           for m, s in runs.select("method", "seed").iter_rows()}  # fmt: skip
    assert set(sel["random", 0]["example_id"]) != set(sel["random", 1]["example_id"])
    # LESS seed 0 is the lab's own warmup; seed 1 has its own warmup subset and run dir
    assert (
        sel["less", 0]["example_id"].to_list()
        == lab.select("demo", SelectConfig(k=4)).frame["example_id"].to_list()
    )
    assert (lab.run_dir / "seeds" / "warmup-seed-1" / "warmup" / "epoch-2" / "state.json").exists()
    long = baseline_scores("bm25", lab.pool, lab.targets["demo"], seed=0)
    want = select_top(aggregate(long), SelectConfig(k=4))["example_id"].to_list()
    assert sel["bm25", 0]["example_id"].to_list() == want

    # a second call recomputes nothing: no training step, no evaluation
    steps = Counting(training._optimizer_step)
    monkeypatch.setattr(training, "_optimizer_step", steps)
    again = cmp.compare(lab, "demo", **kw)
    assert steps.calls == 0 and held.calls == 8
    assert again.equals(table)

    # a run killed after its first epoch: only its second epoch and its test are redone
    run = out / "random" / "seed-1"
    (run / "test.json").unlink()
    import shutil

    shutil.rmtree(run / "train" / "epoch-2")
    third = cmp.compare(lab, "demo", **kw)
    assert steps.calls == 1 and held.calls == 9  # 4 examples, batch 4: one step per epoch
    assert third.equals(table)

    with pytest.raises(ValueError, match="other settings"):
        cmp.compare(lab, "demo", **(kw | {"fraction": 0.2}))


def test_paper_table_layout():
    runs = pl.DataFrame({"method": ["a", "a", "b"], "seed": [0, 1, 0],
                         "mmlu_accuracy": [40.0, 50.0, 47.0]})  # fmt: skip
    table = cmp.summary_table(runs)
    out = cmp.paper_table(table, ["mmlu_accuracy"], digits=1)
    assert out.columns == ["metric", "a", "b"]
    assert out.row(0) == ("mmlu_accuracy", "45.0 (7.1)", "47.0")


def test_cli_compare(tiny_tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_llama(tiny_tokenizer, seed=0).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(r + "\n" for r in demo_pool(n_per_form=1)["raw"]))
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(r + "\n" for r in demo_targets(n_shots=2)["raw"]))
    sets = ["data.max_length=96", "warmup.fraction=0.25", "warmup.train.epochs=1",
            "warmup.train.batch_size=4", "warmup.train.lora.r=2", "warmup.train.lora.alpha=4",
            "gradients.proj_dim=32"]  # fmt: skip
    argv = [
        "compare",
        "--run-dir",
        str(tmp_path / "run"),
        "--pool",
        str(pool),
        "--target",
        f"demo={targets}",
        "--model",
        str(model_dir),
        "--quiet",
        "--methods",
        "less",
        "less+zscore",
        "random",
        "--seeds",
        "0",
        "1",
        "--fraction",
        "0.1",
        "--train-set",
        "learning_rate=0.002",
        "--eval",
        f"held=loss:{targets}",
    ]
    for s in sets:
        argv += ["--set", s]
    assert cli.train_cfg(TrainConfig(), ["epochs=3", "lora.r=4"]).lora.r == 4
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "== demo" in out and "held_loss" in out and "val_loss" in out
    runs = cmp.load_runs(tmp_path / "run" / "compare" / "demo")
    assert runs["method"].to_list() == ["less"] * 2 + ["less+zscore"] * 2 + ["random"] * 2
    assert (runs["n_selected"] == 4).all()
    assert "Paired differences against random" in out and "held_loss" in out
    assert "less+zscore (2 seeds" in out
    assert (tmp_path / "run" / "compare" / "demo" / "beats_random.html").exists()
    table, diffs = cmp.beats_random(runs)
    assert set(diffs["method"]) == {"less", "less+zscore"}
    assert diffs.filter(pl.col("metric") == "held_loss")["n_pairs"].to_list() == [2, 2]
    # the zscore variant's seed-0 selection is its own (a variant folder of the same warmup)
    sel_dirs = sorted(p.name for p in (tmp_path / "run" / "selections").iterdir())
    assert any(n.startswith("demo-zscore-") for n in sel_dirs)


def test_methods_are_checked_before_any_work():
    assert cmp.check_method("less+zscore+length_matched") == "less+zscore+length_matched"
    with pytest.raises(ConfigError, match="remedy 'nope'"):
        cmp.check_method("less+nope")
    with pytest.raises(ConfigError, match="method 'bm25\\+zscore'"):
        cmp.check_method("bm25+zscore")
    runs = pl.DataFrame({"method": ["random"] * 3 + ["less"] * 3, "seed": [0, 1, 2] * 2,
                         "val_loss": [2.0, 2.1, 2.2, 1.0, 1.2, 1.1],
                         "sel_completion_tokens": [30.0] * 3 + [5.0] * 3})  # fmt: skip
    table, diffs = cmp.beats_random(runs)
    assert diffs["metric"].to_list() == ["val_loss"] and diffs["better"].to_list() == [True]
    assert table.filter(pl.col("method") == "less")["sel_completion_tokens"].to_list() == [5.0]
