"""The memory plan: the formula's terms, the paper's 7B setting, and a config's numbers."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from less_lab.config import GradientConfig, LoraSettings
from less_lab.core.plan import LLAMA2_7B, ModelShape, lora_size, plan


def test_llama2_7b_lora_r128_sizes_and_store():
    p, biggest, k = lora_size(LLAMA2_7B, LoraSettings())
    assert p == 32 * 4 * 128 * (4096 + 4096) == 134_217_728
    assert biggest == 128 * 4096 and k == 4
    assert LLAMA2_7B.parameters() == pytest.approx(6.74e9, rel=1e-3)
    grad = GradientConfig(token_budget=8192, store_dtype="float16")
    out = plan(LLAMA2_7B, LoraSettings(), grad, 270_000)
    assert out.store_bytes == pytest.approx(17.7e9, rel=0.01)  # the paper's store
    assert out.term("weights") == pytest.approx(13.48e9, rel=1e-3)
    assert out.term("Adam moments") == 8 * p and out.term("LoRA weights") == 4 * p
    half = plan(LLAMA2_7B, LoraSettings(), GradientConfig(token_budget=4096), 1)
    assert half.term("activations") * 2 == pytest.approx(out.term("activations"))
    assert "peak (device)" in out.text() and "activations" in out.text()


def test_plan_reads_a_transformers_config_and_the_sketch_cap():
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=172,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=500,
        dtype="float32",
    )
    shape = ModelShape.from_config(cfg)
    assert (shape.hidden, shape.layers, shape.dtype_bytes) == (64, 2, 4)
    capped = plan(cfg, LoraSettings(r=8), GradientConfig(sketch_cache_mb=0), 10)
    assert capped.term("sketch tables") == 0
    dense = plan(cfg, LoraSettings(r=8), GradientConfig(projection="rademacher"), 10)
    assert dense.term("sketch tables") == 0
    assert plan(cfg, LoraSettings(r=8), GradientConfig(), 10).term("sketch tables") > 0
