"""Every covered architecture (tiny random models built from their configs): LoRA lands on
exactly the attention projections, the completion loss is the model's own loss (soft-capping
and logit scaling included), and batched per-example gradients equal batch-1 autograd."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from less_lab.config import LoraSettings, fingerprint
from less_lab.core.gradients import per_example_gradients
from less_lab.data.batching import IGNORE, collate
from less_lab.errors import ConfigError
from less_lab.evaluate.inference import choice_logliks, continuation_logliks
from less_lab.model.architectures import LoraTargetWarning, attention_paths
from less_lab.model.lora import (
    add_lora,
    completion_token_losses,
    example_losses,
    lora_modules,
)
from less_lab.model.tiny import TINY_ARCHITECTURES, tiny_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED_TARGETS = {  # written out by hand from each architecture's modeling file
    "llama": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "mistral": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "qwen2": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "gemma": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "gemma2": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "phi3": ["o_proj", "qkv_proj"],
    "phi": ["dense", "k_proj", "q_proj", "v_proj"],
    "gpt_neox": ["dense", "query_key_value"],
    "gpt2": ["attn.c_proj", "c_attn"],
    "opt": ["k_proj", "out_proj", "q_proj", "v_proj"],
    "falcon": ["dense", "query_key_value"],
    "cohere": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "granite": ["k_proj", "o_proj", "q_proj", "v_proj"],
}
ARCHS = sorted(TINY_ARCHITECTURES)
LORA = LoraSettings(r=4, alpha=8, dropout=0.1)


def _lora_model(randomize, arch: str, tokenizer, seed: int = 0):
    peft = add_lora(tiny_causal_lm(arch, tokenizer, seed=seed), LORA, seed=seed)
    return randomize(peft, seed)


def _examples(n_vocab: int, seed: int = 0):
    """Variable-length sequences with prompt (-100) and completion labels."""
    gen = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for length, prompt in [(9, 4), (3, 1), (14, 8), (6, 5)]:
        seq = torch.randint(3, n_vocab, (length,), generator=gen).tolist()
        ids.append(seq)
        labels.append([IGNORE] * prompt + seq[prompt:])
    return ids, labels


def test_every_architecture_is_expected():
    assert sorted(EXPECTED_TARGETS) == ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_are_exactly_the_attention_projections(arch, tiny_tokenizer):
    model = tiny_causal_lm(arch, tiny_tokenizer)
    attention = attention_paths(model)
    linear = [
        p
        for p, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    ]
    assert attention and len(attention) < len(linear) - 1  # the MLP (and head) exist
    assert all("mlp" not in p and "fc" not in p for p in attention)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraTargetWarning)
        peft = add_lora(model, LoraSettings(r=2, alpha=4))
    adapted = [m.name for m in lora_modules(peft)]
    assert sorted(adapted) == sorted(attention)
    recorded = peft.peft_config["default"].target_modules  # what adapter_config.json holds
    assert sorted(recorded) == EXPECTED_TARGETS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_completion_loss_equals_the_models_own_loss(nonzero_lora_b, arch, tiny_tokenizer):
    model = _lora_model(nonzero_lora_b, arch, tiny_tokenizer)
    ids, labels = _examples(len(tiny_tokenizer))
    batch = collate(ids, labels, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        own = model(**batch).loss  # HF: mean over every label of the batch
        losses, _ = completion_token_losses(model, batch)
        per_example = example_losses(model, batch)
        singles = torch.stack(
            [model(**collate([x], [y], 0)).loss for x, y in zip(ids, labels, strict=True)]
        )
    torch.testing.assert_close(losses.mean(), own, rtol=1e-5, atol=0)
    torch.testing.assert_close(per_example, singles, rtol=1e-5, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_gradients_equal_batch_one_autograd(nonzero_lora_b, arch, tiny_tokenizer):
    model = _lora_model(nonzero_lora_b, arch, tiny_tokenizer, seed=1)
    ids, labels = _examples(len(tiny_tokenizer), seed=1)
    pad = tiny_tokenizer.pad_token_id
    modules = lora_modules(model)
    blocks, losses = per_example_gradients(model, modules, collate(ids, labels, pad))
    params = [w.weight for m in modules for w in (m.lora_a, m.lora_b)]
    for row, (x, y) in enumerate(zip(ids, labels, strict=True)):
        model.zero_grad()
        loss = model(**collate([x], [y], pad)).loss  # the model's own loss, batch of one
        loss.backward()
        torch.testing.assert_close(losses[row], loss.detach(), rtol=1e-5, atol=0)
        for block, p in zip(blocks, params, strict=True):
            assert p.grad.abs().max() > 0
            torch.testing.assert_close(block[row], p.grad.flatten(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ["gemma2", "cohere", "granite", "gpt2"])
def test_loglikelihoods_follow_the_models_own_logits(arch, tiny_tokenizer):
    """Continuation and choice log-likelihoods against full ``forward().logits``."""
    model = tiny_causal_lm(arch, tiny_tokenizer)
    prompts, conts = [[1, 40, 41, 42], [1, 50, 51]], [[60, 61], [70]]
    choices = [[[80], [81], [82]], [[90, 91], [92]]]
    got = continuation_logliks(model, prompts, conts)
    got_choices = choice_logliks(model, prompts, choices)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + conts[i]])).logits[0].float(), -1)
        want = sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(conts[i]))
        assert got[i] == pytest.approx(want, rel=1e-5)
        for c, value in zip(choices[i], got_choices[i], strict=True):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            assert value == pytest.approx(
                sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(c)), rel=1e-5
            )


def test_names_matching_nothing_are_refused_with_the_attention_names(tiny_tokenizer):
    model = tiny_causal_lm("gpt2", tiny_tokenizer)
    with pytest.raises(ConfigError) as err:
        add_lora(model, LoraSettings(r=2, alpha=4, target_modules=("q_proj", "v_proj", "c_attn")))
    text = str(err.value)
    assert "q_proj, v_proj match no module" in text
    assert "attn.c_proj, c_attn" in text  # the model's attention projections


def test_names_leaving_attention_out_warn_and_still_win(tiny_tokenizer):
    model = tiny_causal_lm("opt", tiny_tokenizer)
    lora = LoraSettings(r=2, alpha=4, target_modules=("v_proj", "q_proj", "fc1"))
    with pytest.warns(
        LoraTargetWarning, match=r"leaves out the attention projections k_proj, out_proj"
    ):
        peft = add_lora(model, lora)
    short = sorted({m.name.rsplit(".", 1)[-1] for m in lora_modules(peft)})
    assert short == ["fc1", "q_proj", "v_proj"]


def test_auto_combines_with_extra_names(tiny_tokenizer):
    peft = add_lora(
        tiny_causal_lm("phi3", tiny_tokenizer),
        LoraSettings(r=2, alpha=4, target_modules=("gate_up_proj", "auto")),
    )
    assert sorted(peft.peft_config["default"].target_modules) == [
        "gate_up_proj",
        "o_proj",
        "qkv_proj",
    ]


def test_target_order_changes_no_fingerprint():
    a = LoraSettings(target_modules=("v_proj", "q_proj"))
    b = dataclasses.replace(a, target_modules=("q_proj", "v_proj", "q_proj"))
    assert a.target_modules == ("q_proj", "v_proj") and fingerprint(a) == fingerprint(b)
    assert LoraSettings().target_modules == ("auto",)
    with pytest.raises(ConfigError, match="target_modules"):
        LoraSettings(target_modules=("",))
