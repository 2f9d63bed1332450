"""Every stage runs where the model is: a CPU-only test that fails when a stage builds a
tensor on the CPU and combines it with model tensors, or reads a model tensor back
without ``model.device.to_host``.

The check is ``tests/device_check.py`` (host/device tags on every tensor, CUDA's rules;
why not the ``meta`` device is explained there). ``to_host`` is replaced in every stage
module by a counting stub that returns the real values, so each test also proves its stage
reads its results through it. ``core.training.train_lora`` does not pass yet (its
``_optimizer_step`` collates its micro-batches on the CPU and reads ``loss.item()``): that
test is an expected failure, and the stages built on it (warmup, fine-tuning) run their
training steps unchecked, everything else (evaluation after each epoch) checked.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from device_check import DeviceMismatch, device_check

from less_lab.checks import adam_health as adam_health_mod
from less_lab.config import DataConfig, GradientConfig, LoraSettings, TrainConfig
from less_lab.core import baseline_rds, pipeline
from less_lab.core.neighbors import rds_neighbors
from less_lab.core.training import train_lora
from less_lab.data.batching import collate
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.data.formatting import tokenize
from less_lab.evaluate import choice_evals, finetune, generation_evals, inference
from less_lab.evaluate.evaluators import loss_eval
from less_lab.model import device as device_mod
from less_lab.model.lora import add_lora, example_losses

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

DATA = DataConfig(max_length=64)
LORA = LoraSettings(r=2, alpha=4)
TRAIN = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, lora=LORA)
STAGE_MODULES = (inference, adam_health_mod, baseline_rds, pipeline)


@pytest.fixture
def host_reads(monkeypatch):
    """``to_host`` stubbed in every stage module: counts the reads per module and returns
    the real (finite, right-shaped) values; the checker is on while the test runs."""
    calls: dict[str, int] = {}

    def stub_for(module):
        def stub(tensor):
            calls[module.__name__] = calls.get(module.__name__, 0) + 1
            out = device_mod.to_host(tensor)
            assert not out.is_floating_point() or bool(out.isfinite().all())
            return out

        return stub

    for module in STAGE_MODULES:
        monkeypatch.setattr(module, "to_host", stub_for(module))
    with device_check(monkeypatch) as mode:
        yield calls, mode


@pytest.fixture
def pool_tok(tiny_tokenizer):
    return tokenize(demo_pool().head(12), tiny_tokenizer, DATA)[0]


@pytest.fixture
def warmed(tiny_model, tiny_tokenizer, pool_tok, tmp_path):
    """A LoRA model and one warmup checkpoint, trained unchecked (see the module doc)."""
    model = add_lora(tiny_model, LORA, seed=0)
    ckpts = train_lora(
        model, pool_tok, TRAIN, tmp_path / "warm", pad_id=tiny_tokenizer.pad_token_id,
        progress=False,
    )  # fmt: skip
    return model, ckpts


def test_the_check_bites_on_a_batch_left_on_the_cpu(tiny_model, tiny_tokenizer, pool_tok):
    """The checker itself: a CPU batch fed to the model fails; moved, it passes."""
    ids, labels = pool_tok["input_ids"][:2].to_list(), pool_tok["labels"][:2].to_list()
    with device_check(), pytest.raises(DeviceMismatch, match="host tensor"):
        example_losses(tiny_model, collate(ids, labels, 0))
    with device_check():
        batch = collate(ids, labels, 0)
        moved = {k: v.to(device_mod.model_device(tiny_model)) for k, v in batch.items()}
        losses = example_losses(tiny_model, moved)
        assert len(losses.tolist()) == 2  # a read from this test module is allowed
        with pytest.raises(DeviceMismatch, match="to_host"):
            _read_like_a_stage(losses)  # one from less_lab code is not


def _read_like_a_stage(tensor):
    """A host read issued from less_lab code (module name faked) must go through to_host."""
    code = "def read(t):\n    return t.tolist()\n"
    scope = {"__name__": "less_lab.fake_stage"}
    exec(compile(code, "less_lab/fake_stage.py", "exec"), scope)
    return scope["read"](tensor)


def test_train_lora_runs_on_the_model_device(tiny_model, tiny_tokenizer, pool_tok, tmp_path):
    model = add_lora(tiny_model, LORA, seed=0)
    with device_check():
        train_lora(
            model, pool_tok, TRAIN, tmp_path / "w", pad_id=tiny_tokenizer.pad_token_id,
            progress=False,
        )  # fmt: skip


def test_extract_store_on_device(warmed, tiny_tokenizer, pool_tok, tmp_path, host_reads):
    calls, _ = host_reads
    model, ckpts = warmed
    targets = tokenize(demo_targets(), tiny_tokenizer, DATA)[0]
    cfg = GradientConfig(proj_dim=64)
    for split, tok, feature in (("pool", pool_tok, "adam"), ("t", targets, "sgd")):
        store = pipeline.extract_store(
            model, tok, tmp_path / split, split=split, feature=feature, cfg=cfg,
            checkpoint=ckpts[0], pad_id=tiny_tokenizer.pad_token_id, progress=False,
        )  # fmt: skip
        feats = np.asarray(store.features)
        assert feats.dtype == np.float32 and feats.shape == (tok.height, 64)
        assert np.isfinite(feats).all() and np.abs(feats).sum(1).min() > 0
    assert calls.get(pipeline.__name__, 0) > 0


def test_adam_health_on_device(warmed, pool_tok, tiny_tokenizer, host_reads):
    calls, _ = host_reads
    model, ckpts = warmed
    health = adam_health_mod.adam_health(
        ckpts, model=model, tokenized=pool_tok, pad_id=tiny_tokenizer.pad_token_id, sample=4
    )
    assert health.examples.height == 4
    assert np.isfinite(health.examples["momentum_share"].to_numpy()).all()
    assert calls.get(adam_health_mod.__name__, 0) > 0


def test_rds_states_on_device(tiny_model, tiny_tokenizer, host_reads):
    calls, _ = host_reads
    pool, targets = demo_pool().head(10), demo_targets()
    scores = baseline_rds.rds_scores(
        tiny_model, tiny_tokenizer, pool, targets, data_cfg=DATA, progress=False
    )
    assert scores.height > 0 and scores["score"].is_finite().all()
    target_id = targets["example_id"][0]
    near = rds_neighbors(tiny_model, tiny_tokenizer, pool, targets, target_id, k=3, data_cfg=DATA)
    assert near.height == 3
    assert calls.get(baseline_rds.__name__, 0) > 0


def test_inference_on_device(tiny_model, tiny_tokenizer, host_reads):
    calls, mode = host_reads
    prompts = inference.encode_prompts(
        ["What is 3 plus 4?", "Write a story."], tiny_tokenizer, DATA
    )
    letters = [tiny_tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("A", "B")]
    words = [tiny_tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("the cat", "7")]
    checked = {
        "shared": inference.choice_logliks(tiny_model, prompts, [letters] * 2),
        "plain": inference.choice_logliks(tiny_model, prompts, [words] * 2),
        "gen": inference.generate(
            tiny_model, tiny_tokenizer, prompts, max_new_tokens=4, stop=["\n"], progress=False
        ),
    }
    targets = tokenize(demo_targets(), tiny_tokenizer, DATA)[0]
    checked["loss"] = inference.heldout_loss(tiny_model, targets, pad_id=0, progress=False)
    assert calls.get(inference.__name__, 0) >= 4
    with mode.suspend():  # the same calls unchecked: the check changes no value
        assert inference.choice_logliks(tiny_model, prompts, [letters] * 2) == checked["shared"]
        assert inference.choice_logliks(tiny_model, prompts, [words] * 2) == checked["plain"]
        loss = inference.heldout_loss(tiny_model, targets, pad_id=0, progress=False)
        assert loss.equals(checked["loss"])
    assert all(math.isfinite(x) for row in checked["plain"] for x in row)


def test_evaluators_on_device(tiny_model, tiny_tokenizer, tmp_path, host_reads):
    rows = [
        {"question": "Is the sky green?", "mc2_targets": {"choices": ["No.", "Yes."],
                                                          "labels": [1, 0]}},
        {"question": "2 + 2?", "mc2_targets": {"choices": ["4", "5"], "labels": [1, 0]}},
    ]  # fmt: skip
    (tmp_path / "tqa.json").write_text(json.dumps(rows))
    mc2 = choice_evals.evaluate_truthfulqa_mc2(
        tiny_model, tiny_tokenizer, tmp_path / "tqa.json", progress=False
    )
    assert mc2["mc2"].is_finite().all()
    gsm = [
        {"question": f"3 + {i}?", "answer": f"3 + {i} = {3 + i}\n#### {3 + i}"} for i in range(3)
    ]
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    out = generation_evals.evaluate_gsm8k(
        tiny_model, tiny_tokenizer, tmp_path / "gsm.jsonl", n_shot=1, max_new_tokens=4,
        progress=False, return_examples=True,
    )  # fmt: skip
    assert out.height == 2 and out["generation"].dtype == generation_evals.pl.String


def test_finetune_one_epoch_on_device(
    tiny_model, tiny_tokenizer, tmp_path, monkeypatch, host_reads
):
    """``finetune``'s own code (copy, LoRA, per-epoch evaluation, best epoch) checked; the
    training steps inside ``train_lora`` unchecked (see the module doc)."""
    calls, mode = host_reads

    def train_unchecked(*args, on_epoch=None, **kw):
        def checked(ckpt):
            mode.suspended -= 1
            try:
                on_epoch(ckpt)
            finally:
                mode.suspended += 1

        with mode.suspend():
            return train_lora(*args, on_epoch=checked, **kw)

    monkeypatch.setattr(finetune, "train_lora", train_unchecked)
    val = finetune.validation_fn(tiny_tokenizer, demo_targets(), data_cfg=DATA)
    evals = {"loss": loss_eval(demo_targets(), data_cfg=DATA)}
    result = finetune.finetune(
        tiny_model, tiny_tokenizer, demo_pool().head(8), val, TRAIN, tmp_path / "ft", DATA,
        progress=False,
    )  # fmt: skip
    assert result.history.height == 1 and math.isfinite(result.history["val_loss"][0])
    test = evals["loss"](result.model, tiny_tokenizer)
    assert test["loss"].is_finite().all()
    assert calls.get(inference.__name__, 0) > 0
