"""The tiny-model pipeline on CUDA agrees with the CPU (``gpu`` marker: skipped without
CUDA, see tests/conftest.py; run with ``pytest -m gpu`` on a GPU machine).

Both runs load the same saved tiny Llama by name (``Lab(device=...)`` -> ``load_model``).
The CUDA run reuses the CPU run's warmup checkpoints, so the comparison isolates what runs
on the device (per-example gradients, Adam transforms, projection, stores, scores,
selection): pool scores must rank-correlate at >= 0.999 and select the same examples.
Warmup training on CUDA is its own test (it needs ``core.training`` to move its
micro-batches to the model's device).
"""

from __future__ import annotations

import shutil

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
from less_lab.evaluate.finetune import frame_metrics
from less_lab.lab import Lab
from less_lab.model.tiny import tiny_llama

pytestmark = pytest.mark.gpu

TRAIN = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=2, alpha=4))


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer):
    path = tmp_path / "tiny"
    tiny_llama(tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _lab(root, model_dir, device: str) -> Lab:
    lab = Lab(
        root,
        model=str(model_dir),
        data=DataConfig(max_length=64),
        warmup=WarmupConfig(fraction=0.3, train=TRAIN),
        gradients=GradientConfig(proj_dim=256),
        select=SelectConfig(k=6),
        progress=False,
        device=device,
    )
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", demo_targets())
    return lab


def test_cuda_pipeline_matches_cpu(tmp_path, model_dir):
    cpu = _lab(tmp_path / "cpu", model_dir, "cpu")
    cpu_sel = cpu.select("demo")
    gpu = _lab(tmp_path / "gpu", model_dir, "cuda")
    assert next(gpu.loaded_model().parameters()).device.type == "cuda"
    assert gpu._handle.fingerprint == cpu._handle.fingerprint  # same weights, same stores key
    shutil.copytree(cpu.layout.warmup_dir, gpu.layout.warmup_dir)
    gpu_sel = gpu.select("demo")
    assert next(gpu.model.parameters()).device.type == "cuda"
    a = cpu.scores("demo").sort("example_id")["score"].to_numpy()
    b = gpu.scores("demo").sort("example_id")["score"].to_numpy()
    assert correlation(a, b, "spearman") >= 0.999, np.abs(a - b).max()
    assert gpu_sel.frame["example_id"].to_list() == cpu_sel.frame["example_id"].to_list()
    loss = loss_eval(demo_targets())
    on_gpu = frame_metrics(loss(gpu.loaded_model(), gpu.tokenizer))["loss"]
    on_cpu = frame_metrics(loss(cpu.loaded_model(), cpu.tokenizer))["loss"]
    assert abs(on_gpu - on_cpu) < 1e-3


def test_cuda_warmup_matches_cpu(tmp_path, model_dir):
    cpu = _lab(tmp_path / "cpu", model_dir, "cpu").warmup()
    gpu = _lab(tmp_path / "gpu", model_dir, "cuda").warmup()
    assert torch.cuda.is_available()
    for a, b in zip(cpu, gpu, strict=True):
        assert abs(a.train_loss - b.train_loss) < 1e-3
