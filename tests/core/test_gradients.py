"""Batched per-example LoRA gradients and LESS features against the plain definitions."""

from __future__ import annotations

import math

import pytest
import torch

from less_lab.config import GradientConfig, LoraSettings
from less_lab.core.gradients import AdamState, per_example_gradients, to_features
from less_lab.data.batching import IGNORE, collate, token_budget_batches
from less_lab.model.lora import add_lora, block_names, block_shapes, example_losses, lora_modules


def _lora_model(randomize, model, r=4, seed=0):
    peft = add_lora(model, LoraSettings(r=r, alpha=2 * r, dropout=0.1), seed=seed)
    return randomize(peft, seed)


def _examples(n_vocab: int, seed: int = 0):
    """Variable-length sequences with prompt (-100) and completion labels."""
    gen = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for length, prompt in [(9, 4), (3, 1), (17, 10), (6, 5), (12, 2)]:
        seq = torch.randint(3, n_vocab, (length,), generator=gen).tolist()
        ids.append(seq)
        labels.append([IGNORE] * prompt + seq[prompt:])
    return ids, labels


def _batch1_grads(model, ids, labels, pad_id):
    """The plain definition: one example at a time, autograd into param.grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for x, y in zip(ids, labels, strict=True):
        model.zero_grad()
        loss = model(**collate([x], [y], pad_id)).loss  # HF's own loss: mean over labels
        loss.backward()
        out.append([p.grad.flatten().clone() for p in params])
    return out


def test_batched_gradients_equal_batch_one_backward(nonzero_lora_b, tiny_model, tiny_tokenizer):
    model = _lora_model(nonzero_lora_b, tiny_model)
    pad = tiny_tokenizer.pad_token_id
    ids, labels = _examples(len(tiny_tokenizer))
    modules = lora_modules(model)
    blocks, losses = per_example_gradients(model, modules, collate(ids, labels, pad))
    reference = _batch1_grads(model, ids, labels, pad)
    assert len(blocks) == len(reference[0]) == 2 * len(modules)
    for row, ref in enumerate(reference):
        for block, r in zip(blocks, ref, strict=True):
            assert r.abs().max() > 0
            torch.testing.assert_close(block[row], r, rtol=1e-4, atol=1e-7)
    single = torch.stack(
        [model(**collate([x], [y], pad)).loss for x, y in zip(ids, labels, strict=False)]
    )
    torch.testing.assert_close(losses, single.detach(), rtol=1e-5, atol=1e-6)


def test_gradients_do_not_depend_on_batch_composition(nonzero_lora_b, tiny_model, tiny_tokenizer):
    model = _lora_model(nonzero_lora_b, tiny_model)
    pad = tiny_tokenizer.pad_token_id
    ids, labels = _examples(len(tiny_tokenizer), seed=1)
    modules = lora_modules(model)
    together, _ = per_example_gradients(model, modules, collate(ids, labels, pad))
    alone, _ = per_example_gradients(model, modules, collate(ids[2:3], labels[2:3], pad))
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a[2], b[0], rtol=1e-4, atol=1e-7)


def test_example_loss_is_mean_over_completion_tokens(tiny_model, tiny_tokenizer):
    model = tiny_model.eval()
    ids, labels = _examples(len(tiny_tokenizer))
    batch = collate(ids, labels, tiny_tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(len(ids)):
        tgt = batch["labels"][row, 1:]
        keep = tgt != IGNORE
        ref = torch.nn.functional.cross_entropy(logits[row, :-1][keep], tgt[keep])
        torch.testing.assert_close(example_losses(model, batch)[row], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("eps_inside", [True, False])
def test_adam_features_match_hand_computation(bias_correction, eps_inside):
    gen = torch.Generator().manual_seed(0)
    names = ["a.lora_A.weight", "a.lora_B.weight"]
    grads = [torch.randn(3, 6, generator=gen), torch.randn(3, 4, generator=gen) * 1e-3]
    m = {
        n: torch.randn(g.shape[1], generator=gen) * 1e-2 for n, g in zip(names, grads, strict=False)
    }
    v = {
        n: torch.rand(g.shape[1], generator=gen) * 1e-6 for n, g in zip(names, grads, strict=False)
    }
    state = AdamState(m, v, step=7, betas=(0.9, 0.95), eps=1e-8)
    cfg = GradientConfig(adam_bias_correction=bias_correction, adam_eps_inside_sqrt=eps_inside)
    feats = to_features([g.clone() for g in grads], names, "adam", cfg, state)
    for name, g, f in zip(names, grads, feats, strict=True):
        for row in range(3):
            for j in range(g.shape[1]):
                gj = g[row, j].item()
                mj = 0.9 * m[name][j].item() + 0.1 * gj
                vj = 0.95 * v[name][j].item() + 0.05 * gj * gj
                if bias_correction:  # the update simulated is step 8
                    mj, vj = mj / (1 - 0.9**8), vj / (1 - 0.95**8)
                want = mj / math.sqrt(vj + 1e-8) if eps_inside else mj / (math.sqrt(vj) + 1e-8)
                assert f[row, j].item() == pytest.approx(want, rel=1e-5)


def test_sign_and_sgd_features():
    g = [torch.tensor([[0.5, -2.0, 0.0]])]
    assert to_features(g, ["x"], "sgd", GradientConfig())[0] is g[0]
    assert to_features(g, ["x"], "sign", GradientConfig())[0].tolist() == [[1.0, -1.0, 0.0]]
    with pytest.raises(ValueError, match="optimizer state"):
        to_features(g, ["x"], "adam", GradientConfig())


def test_block_layout_names_and_shapes(nonzero_lora_b, tiny_model):
    model = _lora_model(nonzero_lora_b, tiny_model, r=3)
    modules = lora_modules(model)
    names, shapes = block_names(modules), block_shapes(modules)
    assert names[0] == "model.layers.0.self_attn.q_proj.lora_A.weight"
    assert names[1] == "model.layers.0.self_attn.q_proj.lora_B.weight"
    assert len(modules) == 2 * 4  # 2 layers x q,k,v,o
    assert shapes[0][0] == 3 and shapes[1][1] == 3


def test_token_budget_batches_cover_every_row_once():
    lengths = [5, 50, 7, 300, 12, 12, 8, 1]
    batches = token_budget_batches(lengths, token_budget=64, max_examples=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 64


@pytest.mark.parametrize(
    ("feature", "projection"),
    [("adam", "sparse_sign"), ("adam", "rademacher"), ("sgd", "none"), ("sign", "sparse_sign")],
)
def test_block_wise_features_equal_whole_vector(
    nonzero_lora_b, tiny_model, tiny_tokenizer, feature, projection
):
    """The streamed build (each block projected as backward produces it) equals the plain
    definition: whole (b, P) gradient -> features -> one projection of the whole vector."""
    from less_lab.core.gradients import iter_features, squared_norms
    from less_lab.core.projection import make_projector

    model = _lora_model(nonzero_lora_b, tiny_model)
    pad = tiny_tokenizer.pad_token_id
    ids, labels = _examples(len(tiny_tokenizer), seed=2)
    modules = lora_modules(model)
    names = block_names(modules)
    sizes = [a * b for a, b in block_shapes(modules)]
    gen = torch.Generator().manual_seed(3)
    m = {n: torch.randn(s, generator=gen) * 1e-3 for n, s in zip(names, sizes, strict=True)}
    v = {n: torch.rand(s, generator=gen) * 1e-6 for n, s in zip(names, sizes, strict=True)}
    adam = AdamState(m, v, step=3, betas=(0.9, 0.999), eps=1e-8)
    cfg = GradientConfig()
    dim = sum(sizes) if projection == "none" else 256
    proj = make_projector(projection, sizes, dim, seed=1)
    batch = collate(ids, labels, pad)
    (got,) = iter_features(
        model, modules, names, iter([([0, 1, 2, 3, 4], batch)]), proj, feature, cfg, adam
    )
    blocks, losses = per_example_gradients(model, modules, batch)
    feats = to_features(blocks, names, feature, cfg, adam)
    want = proj.project(feats)
    assert got.features.dtype == torch.float32
    err = (got.features - want).abs().amax(1) / want.norm(dim=1)
    assert (err <= 1e-6).all(), err
    torch.testing.assert_close(got.grad_norm, squared_norms(blocks).sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(got.feature_norm, squared_norms(feats).sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(got.loss, losses, rtol=0, atol=0)


def test_stream_gradients_hands_over_each_block_once(nonzero_lora_b, tiny_model, tiny_tokenizer):
    from less_lab.core.gradients import stream_gradients

    model = _lora_model(nonzero_lora_b, tiny_model)
    ids, labels = _examples(len(tiny_tokenizer))
    modules = lora_modules(model)
    seen = []
    stream_gradients(
        model,
        modules,
        collate(ids, labels, tiny_tokenizer.pad_token_id),
        lambda i, g: seen.append((i, g.shape, g.dtype)),
    )
    shapes = block_shapes(modules)
    assert sorted(i for i, _, _ in seen) == list(range(len(shapes)))
    for i, shape, dtype in seen:
        assert shape == (len(ids), shapes[i][0] * shapes[i][1]) and dtype == torch.float32
