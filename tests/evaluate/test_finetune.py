"""Fine-tuning on a selection: one history row per epoch, best epoch by the validation
metric, cached metrics, resume without retraining, base model never mutated."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from less_lab.config import DataConfig, LoraSettings, TrainConfig
from less_lab.data.formatting import tokenize
from less_lab.evaluate import finetune as ft
from less_lab.evaluate.evaluators import task_eval
from less_lab.evaluate.inference import heldout_loss
from less_lab.model.lora import add_lora
from less_lab.model.tiny import tiny_llama

CFG = TrainConfig(epochs=3, learning_rate=5e-3, batch_size=4, token_budget=256,
                  lora=LoraSettings(r=2, alpha=4, dropout=0.0))  # fmt: skip
DATA = DataConfig(max_length=64)
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _frame(n: int, offset: int = 0) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": f"What is {i} plus {i}?"},
             {"role": "assistant", "content": f"The answer is {2 * i}."}]
            for i in range(offset, offset + n)]  # fmt: skip
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(offset, offset + n)],
                         "subtask": ["s" if i % 2 else "t" for i in range(n)],
                         "messages": msgs})  # fmt: skip


class Scripted:
    """An eval_fn returning a scripted metric per call, counting its calls."""

    def __init__(self, values, fail_at: int | None = None):
        self.values, self.calls, self.fail_at = list(values), 0, fail_at

    def __call__(self, model) -> dict:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("killed during evaluation")
        assert not model.training  # evaluation runs in eval mode
        return {"val_acc": self.values[self.calls - 1], "val_loss": 1.0}


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("epoch-*/state.json"))}


def test_history_best_epoch_and_weights(tiny_model, tiny_tokenizer, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    fn = Scripted([10.0, 30.0, 20.0])
    res = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), fn, CFG, tmp_path / "ft", DATA,
                      metric="val_acc", progress=False)  # fmt: skip
    assert res.history["epoch"].to_list() == [1, 2, 3]
    assert res.history["val_acc"].to_list() == [10.0, 30.0, 20.0]
    assert res.history["train_loss"].to_list() == pytest.approx(
        [c.train_loss for c in res.checkpoints]
    )
    assert res.best_epoch == 2 and res.best.epoch == 2 and fn.calls == 3
    # the returned model carries epoch 2's adapter, not the last one
    saved = res.checkpoints[1].adapter_weights()
    from less_lab.model.lora import canonical_name

    for name, p in res.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, saved[canonical_name(name)])
    assert not res.model.training
    # the caller's model is untouched: same weights, no LoRA layers
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert not any(hasattr(m, "lora_A") for m in tiny_model.modules())
    cached = json.loads((res.checkpoints[2].path / ft.METRICS_FILE).read_text())
    assert cached["metrics"]["val_acc"] == 20.0


def test_rerun_neither_retrains_nor_reevaluates(tiny_model, tiny_tokenizer, tmp_path):
    first = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), Scripted([3, 2, 1]), CFG,
                        tmp_path / "ft", DATA, metric="val_acc", progress=False)  # fmt: skip
    stamps = _mtimes(tmp_path / "ft")
    again = Scripted([9, 9, 9])
    second = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), again, CFG, tmp_path / "ft",
                         DATA, metric="val_acc", progress=False)  # fmt: skip
    assert again.calls == 0 and _mtimes(tmp_path / "ft") == stamps
    assert second.history.equals(first.history) and second.best_epoch == 1
    # another eval_key re-evaluates the cached checkpoints, still without training
    other = Scripted([1, 5, 2])
    third = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), other, CFG, tmp_path / "ft",
                        DATA, metric="val_acc", eval_key="v2", progress=False)  # fmt: skip
    assert other.calls == 3 and third.best_epoch == 2 and _mtimes(tmp_path / "ft") == stamps
    # a different selection in the same directory is refused
    with pytest.raises(ValueError, match="different settings"):
        ft.finetune(tiny_model, tiny_tokenizer, _frame(8, offset=3), Scripted([0] * 3), CFG,
                    tmp_path / "ft", DATA, progress=False)  # fmt: skip


def test_killed_run_resumes_and_equals_uninterrupted(tiny_model, tiny_tokenizer, tmp_path):
    val = tokenize(_frame(4, offset=20), tiny_tokenizer, DATA)[0]

    def real(model) -> dict:
        return {"val_loss": float(heldout_loss(model, val, progress=False)["loss"][-1])}

    full = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), real, CFG, tmp_path / "a", DATA,
                       metric="val_loss", progress=False)  # fmt: skip
    calls = {"n": 0}

    def crashing(model) -> dict:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(model)

    with pytest.raises(RuntimeError, match="killed"):
        ft.finetune(tiny_model, tiny_tokenizer, _frame(8), crashing, CFG, tmp_path / "b", DATA,
                    metric="val_loss", progress=False)  # fmt: skip
    # epoch 2 was checkpointed but never evaluated; epoch 3 never trained
    assert (tmp_path / "b" / "epoch-2" / "state.json").exists()
    assert not (tmp_path / "b" / "epoch-2" / ft.METRICS_FILE).exists()
    assert not (tmp_path / "b" / "epoch-3").exists()
    stamps = _mtimes(tmp_path / "b")
    calls["n"] = 10
    resumed = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), crashing, CFG, tmp_path / "b",
                          DATA, metric="val_loss", progress=False)  # fmt: skip
    assert calls["n"] == 12  # epoch 2 (from its checkpoint) and epoch 3; epoch 1 was cached
    assert {p: t for p, t in _mtimes(tmp_path / "b").items() if p in stamps} == stamps
    assert resumed.history["val_loss"].to_list() == pytest.approx(
        full.history["val_loss"].to_list(), abs=1e-5
    )
    assert resumed.best_epoch == full.best_epoch
    assert full.history["val_loss"][2] < full.history["val_loss"][0]  # it does learn


def test_validation_fn_is_heldout_loss_and_task_score_on_targets(tiny_model, tiny_tokenizer):
    targets = _frame(5, offset=30)
    fn = ft.validation_fn(tiny_tokenizer, targets, data_cfg=DATA)
    want = heldout_loss(tiny_model, tokenize(targets, tiny_tokenizer, DATA)[0], progress=False)
    score = task_eval(targets, data_cfg=DATA)(tiny_model, tiny_tokenizer)
    assert fn(tiny_model) == {
        "val_loss": pytest.approx(want["loss"][-1]),
        "val_score": pytest.approx(ft.frame_metrics(score)["score"]),
    }
    loss_only = ft.validation_fn(tiny_tokenizer, targets, data_cfg=DATA, performance=False)
    assert set(loss_only(tiny_model)) == {"val_loss"}


class Disagreeing(Scripted):
    """Validation loss and performance that disagree (appendix I): loss is lowest at
    epoch 3, the score highest at epoch 2."""

    def __call__(self, model) -> dict:
        self.calls += 1
        return {"val_loss": [3.0, 2.0, 1.0][self.calls - 1],
                "val_score": [10.0, 40.0, 20.0][self.calls - 1]}  # fmt: skip


def test_best_epoch_by_validation_performance_by_default(tiny_model, tiny_tokenizer, tmp_path):
    res = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), Disagreeing([]), CFG,
                      tmp_path / "ft", DATA, progress=False)  # fmt: skip
    assert res.metric == "val_score" and res.best_epoch == 2
    by_loss = ft.finetune(tiny_model, tiny_tokenizer, _frame(8), Disagreeing([]), CFG,
                          tmp_path / "ft", DATA, metric="val_loss", progress=False)  # fmt: skip
    assert by_loss.metric == "val_loss" and by_loss.best_epoch == 3


def test_peft_base_model_is_copied_and_unwrapped(tiny_tokenizer, tmp_path):
    peft = add_lora(tiny_llama(tiny_tokenizer, seed=3), LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # a trained-looking adapter that must not leak into the copy
    state = {k: v.clone() for k, v in peft.state_dict().items()}
    clean = ft.clean_copy(peft)
    assert not any(hasattr(m, "lora_A") for m in clean.modules())
    ref = tiny_llama(tiny_tokenizer, seed=3).state_dict()
    assert all(torch.equal(ref[k], v) for k, v in clean.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in peft.state_dict().items())
    with pytest.raises(ValueError, match="LoRA layers"):
        ft.clean_copy(peft.get_base_model())


def test_best_epoch_rules():
    h = pl.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [2.0, 1.0, 1.0, math.nan],
                      "acc": [5.0, 7.0, 7.0, 1.0]})  # fmt: skip
    assert ft.best_epoch(h, "val_loss") == 2  # lower is better for losses; tie -> earliest
    assert ft.best_epoch(h, "acc") == 2
    assert ft.best_epoch(h, "acc", maximize=False) == 4
    with pytest.raises(KeyError, match="val_acc"):
        ft.best_epoch(h, "val_acc")
