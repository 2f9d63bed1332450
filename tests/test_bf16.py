"""The pipeline with the model in bfloat16 (on the CPU), through ``Lab(dtype=...)``: warmup,
stores, scores and selection, then a one-epoch fine-tune on the selection and its held-out
loss, against the same run in fp32.

Tolerances (the tiny random Llama, 30 pool examples, 2 warmup epochs; measured here:
Spearman 0.9991, max |score difference| 0.0032 on scores spanning 0.157, the same top 6,
held-out losses 6.234815 vs 6.234764): pool scores rank-correlate at >= 0.95 with fp32's
and differ by at most 0.02; the fine-tuned held-out loss is within 0.02 nats. Features are
stored in fp32 whatever the model dtype (gradients, Adam transforms and projections are
fp32). The reliability warnings are the tiny pool's, as in ``test_lab``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from less_lab import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from less_lab.core.stats import correlation
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.evaluate.evaluators import loss_eval
from less_lab.evaluate.finetune import finetune, frame_metrics, validation_fn
from less_lab.lab import Lab
from less_lab.model.tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TRAIN = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=2, alpha=4))
DATA = DataConfig(max_length=64)


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer):
    """The tiny Llama saved as a Hugging Face model directory (loaded by name, so
    ``Lab(dtype=...)`` goes through ``load_model``)."""
    path = tmp_path / "tiny"
    tiny_llama(tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _run(root, model_dir, dtype: str) -> tuple[Lab, object]:
    lab = Lab(
        root / dtype,
        model=str(model_dir),
        data=DATA,
        warmup=WarmupConfig(fraction=0.3, train=TRAIN),
        gradients=GradientConfig(proj_dim=256),
        select=SelectConfig(k=6),
        progress=False,
        device="cpu",
        dtype=dtype,
    )
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    return lab, lab.select("demo")


def _finetuned_loss(lab: Lab, selection, out) -> float:
    frame = lab.pool.filter(lab.pool["example_id"].is_in(selection.frame["example_id"].implode()))
    val = validation_fn(lab.tokenizer, demo_targets(), data_cfg=DATA)
    one_epoch = replace(TRAIN, epochs=1)
    result = finetune(lab.loaded_model(), lab.tokenizer, frame, val, one_epoch, out, DATA,
                      progress=False)  # fmt: skip
    assert next(result.model.parameters()).dtype == next(lab.loaded_model().parameters()).dtype
    test = loss_eval(demo_targets(), data_cfg=DATA)(result.model, lab.tokenizer)
    return frame_metrics(test)["loss"]


def test_bf16_pipeline_agrees_with_fp32(tmp_path, model_dir):
    runs = {dtype: _run(tmp_path, model_dir, dtype) for dtype in ("float32", "bfloat16")}
    (lab32, sel32), (lab16, sel16) = runs["float32"], runs["bfloat16"]
    assert next(lab16.loaded_model().parameters()).dtype == torch.bfloat16
    assert next(lab32.loaded_model().parameters()).dtype == torch.float32
    assert lab16._handle.fingerprint != lab32._handle.fingerprint  # stores are kept apart
    for store in lab16.datastore("pool") + lab16.datastore("demo"):
        feats = np.asarray(store.features)
        assert feats.dtype == np.float32 and np.isfinite(feats).all()
    s32 = lab32.scores("demo").sort("example_id")["score"].to_numpy()
    s16 = lab16.scores("demo").sort("example_id")["score"].to_numpy()
    rho, diff = correlation(s32, s16, "spearman"), float(np.abs(s32 - s16).max())
    print(f"bf16 vs fp32 pool scores: spearman {rho:.4f}, max abs diff {diff:.4f}, "
          f"score spread {np.ptp(s32):.3f}, top-6 overlap "
          f"{len(set(sel32.frame['example_id']) & set(sel16.frame['example_id']))}/6")  # fmt: skip
    assert rho >= 0.95 and diff <= 0.02
    loss32 = _finetuned_loss(lab32, sel32, tmp_path / "ft32")
    loss16 = _finetuned_loss(lab16, sel16, tmp_path / "ft16")
    print(f"fine-tuned held-out loss: fp32 {loss32:.6f}, bf16 {loss16:.6f}")
    assert math.isfinite(loss16) and abs(loss16 - loss32) <= 0.02
