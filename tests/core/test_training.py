"""Warmup training: checkpoint contents, learning rates, resume equals uninterrupted."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from less_lab.config import LoraSettings, TrainConfig
from less_lab.core.training import Checkpoint, load_adapter, lr_at, train_lora
from less_lab.data.batching import IGNORE
from less_lab.model.lora import add_lora
from less_lab.model.tiny import tiny_llama


def tiny_data(n: int = 12, vocab: int = 500, seed: int = 0) -> pl.DataFrame:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 4 + i % 7
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        labels = [IGNORE] * 2 + ids[2:]
        rows.append(
            {
                "example_id": f"x{i}",
                "input_ids": ids,
                "labels": labels,
                "n_tokens": length,
                "n_completion_tokens": length - 2,
            }
        )
    return pl.DataFrame(rows)


CFG = TrainConfig(
    epochs=3,
    learning_rate=1e-3,
    batch_size=5,
    token_budget=24,
    lora=LoraSettings(r=2, alpha=4, dropout=0.1),
)


def _train(tokenizer, out, cfg=CFG, **kw):
    model = add_lora(tiny_llama(tokenizer, seed=0), cfg.lora, seed=cfg.seed)
    return model, train_lora(
        model, tiny_data(), cfg, out, pad_id=tokenizer.pad_token_id, progress=False, **kw
    )


def test_checkpoints_hold_adapter_moments_step_and_mean_lr(tiny_tokenizer, tmp_path):
    model, ckpts = _train(tiny_tokenizer, tmp_path / "w")
    assert [c.epoch for c in ckpts] == [1, 2, 3]
    steps = 3  # ceil(12 / 5) per epoch
    assert [c.step for c in ckpts] == [3, 6, 9]
    want = [
        sum(lr_at(s, 9, CFG) for s in range(e * steps, (e + 1) * steps)) / steps for e in range(3)
    ]
    assert [c.lr for c in ckpts] == pytest.approx(want)
    state = ckpts[-1].adam_state()
    assert state.step == 9 and state.betas == (0.9, 0.999) and state.eps == 1e-8
    lora_names = {n for n in state.exp_avg}
    assert len(lora_names) == 2 * 2 * 4  # A and B x 2 layers x q,k,v,o
    assert all(v.abs().sum() > 0 for v in state.exp_avg_sq.values())
    # final adapter weights equal the trained model's
    fresh = add_lora(tiny_llama(tiny_tokenizer, seed=0), CFG.lora, seed=5)
    load_adapter(fresh, ckpts[-1])
    for (n, p), (_n2, q) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        if "lora_" in n:
            torch.testing.assert_close(p, q)


def test_moments_saved_equal_optimizer_state(tiny_tokenizer, tmp_path):
    _, ckpts = _train(tiny_tokenizer, tmp_path / "w")
    full = torch.load(ckpts[0].path / "optimizer_full.pt", weights_only=True)
    saved = load_file(ckpts[0].path / "optimizer.safetensors")
    first = full["state"][0]
    name = next(k for k in saved if k.endswith(".exp_avg"))  # first LoRA weight in order
    torch.testing.assert_close(saved[name], first["exp_avg"])
    assert int(first["step"]) == ckpts[0].step


def test_lr_schedule_warmup_then_linear_decay():
    cfg = TrainConfig(learning_rate=1.0, warmup_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, cfg) == pytest.approx(0.5)
    cos = TrainConfig(learning_rate=1.0, warmup_ratio=0.1, lr_scheduler="cosine")
    assert lr_at(55, 100, cos) == pytest.approx(0.5)
    assert lr_at(99, 100, cos) < 0.01


def test_resume_after_interruption_equals_uninterrupted(tiny_tokenizer, tmp_path):
    _, full = _train(tiny_tokenizer, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_first(ckpt):
        if ckpt.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        _train(tiny_tokenizer, tmp_path / "cut", on_epoch=stop_after_first)
    assert not (tmp_path / "cut" / "epoch-2").exists()
    _, resumed = _train(tiny_tokenizer, tmp_path / "cut")
    a, b = full[-1].adapter_weights(), resumed[-1].adapter_weights()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    sa, sb = full[-1].adam_state(), resumed[-1].adam_state()
    for k in sa.exp_avg_sq:
        torch.testing.assert_close(sa.exp_avg_sq[k], sb.exp_avg_sq[k], rtol=1e-5, atol=1e-12)


def test_resume_with_other_settings_is_refused(tiny_tokenizer, tmp_path):
    _train(tiny_tokenizer, tmp_path / "w", settings={"data": "aaa"})
    with pytest.raises(ValueError, match="different settings"):
        _train(tiny_tokenizer, tmp_path / "w", settings={"data": "bbb"})


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "epoch-1").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        Checkpoint.load(tmp_path / "epoch-1")
    (tmp_path / "epoch-1" / "state.json").write_text(
        json.dumps({"epoch": 1, "step": 3, "lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8})
    )
    assert Checkpoint.load(tmp_path / "epoch-1").step == 3


def _fake_hf_checkpoint(model, tmp_path, by_name: bool):
    """What transformers.Trainer writes: adapter, optimizer.pt (int or name keys), state."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-3, betas=(0.9, 0.95), eps=1e-6)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    if by_name:
        names = [n for n, _ in params]
        sd["state"] = {names[i]: v for i, v in sd["state"].items()}
        sd["param_groups"][0]["params"] = names
    src = tmp_path / "checkpoint-30"
    model.save_pretrained(src)
    torch.save(sd, src / "optimizer.pt")
    (src / "trainer_state.json").write_text(
        json.dumps(
            {
                "epoch": 1.0,
                "global_step": 1,
                "log_history": [
                    {"epoch": 0.5, "learning_rate": 2e-5},
                    {"epoch": 1.0, "learning_rate": 1e-5},
                ],
            }
        )
    )
    return opt, params


@pytest.mark.parametrize("by_name", [False, True])
def test_import_hf_trainer_checkpoint(tiny_tokenizer, tmp_path, by_name):
    from less_lab.core.hf_import import import_hf_checkpoint
    from less_lab.model.lora import canonical_name

    model = add_lora(tiny_llama(tiny_tokenizer, seed=0), CFG.lora)
    opt, params = _fake_hf_checkpoint(model, tmp_path, by_name)
    ckpt = import_hf_checkpoint(tmp_path / "checkpoint-30", model, tmp_path / "ours")
    assert ckpt.lr == pytest.approx(1.5e-5) and ckpt.step == 1
    assert ckpt.betas == (0.9, 0.95) and ckpt.eps == 1e-6
    state = ckpt.adam_state()
    for name, p in params:
        torch.testing.assert_close(
            state.exp_avg_sq[canonical_name(name)], opt.state[p]["exp_avg_sq"]
        )
    load_adapter(model, ckpt)  # adapter weights line up with the model
