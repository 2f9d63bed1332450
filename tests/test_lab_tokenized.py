"""A target subtask emptied by truncation is refused before any gradient work."""

from __future__ import annotations

import polars as pl
import pytest

from less_lab import DataConfig, LoraSettings, SelectConfig, TrainConfig, WarmupConfig
from less_lab.data.demo_pool import demo_pool, demo_targets
from less_lab.errors import DataError
from less_lab.lab import Lab

pytestmark = pytest.mark.usefixtures("one_thread")


def _long_prompts(targets: pl.DataFrame, subtask: str) -> pl.DataFrame:
    """``targets`` with every prompt of ``subtask`` far over 256 tokens."""

    def lengthen(messages):
        return [
            {**m, "content": "filler words " * 150 + m["content"]} if m["role"] == "user" else m
            for m in messages
        ]

    rows = targets.to_dicts()
    for row in rows:
        if row["subtask"] == subtask:
            row["messages"] = lengthen(row["messages"])
    return pl.DataFrame(rows, schema=targets.schema)


def _lab(tmp_path, tiny_model, tiny_tokenizer, truncation: str = "right") -> Lab:
    lab = Lab(
        tmp_path / "run",
        data=DataConfig(max_length=256, truncation=truncation),
        warmup=WarmupConfig(
            fraction=0.3,
            train=TrainConfig(epochs=1, batch_size=4, lora=LoraSettings(r=2, alpha=4)),
        ),
        select=SelectConfig(k=5),
        progress=False,
    )
    lab.use_model(tiny_model, tiny_tokenizer)
    lab.set_pool(demo_pool().head(30))
    lab.add_target("demo", _long_prompts(demo_targets(), "capitals_mc"))
    return lab


def test_subtask_emptied_by_truncation_is_refused_before_gradients(
    tmp_path, tiny_model, tiny_tokenizer
):
    lab = _lab(tmp_path, tiny_model, tiny_tokenizer)
    pattern = r"'demo'.*'capitals_mc'.*max_length=256"
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(DataError, match=pattern):
        lab.tokenized("demo")
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(DataError, match=pattern):
        lab.select("demo")
    assert lab.checkpoints() == [] and not lab.layout.warmup_dir.exists()
    assert not list(lab.run_dir.rglob("*.safetensors"))


def test_prompt_truncation_keeps_every_subtask(tmp_path, tiny_model, tiny_tokenizer):
    lab = _lab(tmp_path, tiny_model, tiny_tokenizer, truncation="prompt_left")
    tok = lab.tokenized("demo")
    assert tok["subtask"].n_unique() == 3 and tok["n_tokens"].max() <= 256
