"""Warmup training: checkpoint contents, learning rates, resume equals uninterrupted."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from less_lab.config import LoraSettings, TrainConfig
from less_lab.core import training
from less_lab.core.training import Checkpoint, load_adapter, lr_at, train_lora
from less_lab.data.batching import IGNORE
from less_lab.model.lora import add_lora, canonical_name
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


def _hf_lrs(total: int, ratio: float, kind: str, peak: float) -> list[float]:
    """The learning rate of every optimizer step under transformers' scheduler, driven as
    the HF Trainer drives it (``scheduler.step()`` after each ``optimizer.step()``)."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    warm = math.ceil(ratio * total)  # TrainingArguments.get_warmup_steps
    make = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    sched = make(opt, num_warmup_steps=warm, num_training_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("total", "ratio"), [(1, 0.03), (4, 0.03), (9, 0.0), (10, 0.25), (100, 0.1), (37, 0.5)]
)
def test_lr_at_equals_hf_schedulers(total, ratio, kind):
    cfg = TrainConfig(learning_rate=2e-5, warmup_ratio=ratio, lr_scheduler=kind)
    want = _hf_lrs(total, ratio, kind, 2e-5)
    assert [lr_at(s, total, cfg) for s in range(total)] == pytest.approx(want, rel=1e-12, abs=0)


def test_training_steps_with_the_hf_learning_rates(tiny_tokenizer, tmp_path, monkeypatch):
    seen = []
    step = training._optimizer_step

    def spy(model, optimizer, *args):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(model, optimizer, *args)

    monkeypatch.setattr(training, "_optimizer_step", spy)
    cfg = replace(CFG, warmup_ratio=0.25)
    _, ckpts = _train(tiny_tokenizer, tmp_path / "w", cfg)
    want = _hf_lrs(9, 0.25, "linear", cfg.learning_rate)  # 3 epochs x ceil(12 / 5)
    assert seen == pytest.approx(want, rel=1e-12, abs=0)
    assert seen[0] == 0.0  # HF's warmup starts at zero
    assert [c.lr for c in ckpts] == pytest.approx([sum(want[i : i + 3]) / 3 for i in (0, 3, 6)])


def _hand_step(model, data: pl.DataFrame, average: str):
    """Loss and LoRA gradients of one step, one example at a time, by the definition."""
    model.zero_grad()
    per_example, tokens = [], []
    for ids, labels in zip(data["input_ids"], data["labels"], strict=True):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        keep = target != IGNORE
        losses = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
        per_example.append(losses.mean())
        tokens.append(losses)
    if average == "example":
        loss = torch.stack(per_example).mean()
    else:
        loss = torch.cat(tokens).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return float(loss.detach()), grads


@pytest.mark.parametrize("average", ["example", "token"])
def test_step_loss_and_moments_follow_loss_average(tiny_tokenizer, tmp_path, average):
    data = tiny_data(6)  # completion lengths 2..7: the two averages differ
    cfg = replace(
        CFG, epochs=1, batch_size=6, token_budget=16, loss_average=average,
        lora=LoraSettings(r=2, alpha=4, dropout=0.0),
    )  # fmt: skip
    model = add_lora(tiny_llama(tiny_tokenizer, seed=0), cfg.lora, seed=cfg.seed)
    with torch.no_grad():  # non-zero B, so every LoRA weight has a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    model.train()
    want_loss, want_grads = _hand_step(model, data, average)
    other_loss, _ = _hand_step(model, data, "token" if average == "example" else "example")
    assert abs(want_loss - other_loss) > 1e-4  # the test can tell them apart
    (ckpt,) = train_lora(model, data, cfg, tmp_path / average, pad_id=tiny_tokenizer.pad_token_id,
                         progress=False)  # fmt: skip
    assert ckpt.train_loss == pytest.approx(want_loss, rel=1e-5)
    state = ckpt.adam_state()  # one step: exp_avg = (1 - beta1) x gradient
    for n, g in want_grads.items():
        torch.testing.assert_close(
            state.exp_avg[canonical_name(n)], (1 - cfg.betas[0]) * g, rtol=1e-4, atol=1e-9
        )


def test_loss_average_is_validated():
    assert TrainConfig().loss_average == "example"
    with pytest.raises(ValueError, match="loss_average"):
        TrainConfig(loss_average="sequence")


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
