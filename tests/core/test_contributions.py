"""Token and module decompositions of gradients, checked against the plain definitions:
autograd on the model's own loss, one example (or one token) at a time, and cosines
computed directly with torch."""

from __future__ import annotations

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from less_lab.config import DataConfig, LoraSettings
from less_lab.core.contributions import (
    kind_shares,
    labelled_positions,
    module_of,
    module_terms,
    token_contributions,
    token_gradients,
)
from less_lab.data.batching import IGNORE, collate
from less_lab.data.formatting import tokenize
from less_lab.model.lora import add_lora, block_names, canonical_name, lora_modules

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def peft(tiny_model, nonzero_lora_b):
    """The tiny Llama with LoRA r=2 whose B matrices are non-zero (A gets a gradient)."""
    return nonzero_lora_b(add_lora(tiny_model, LoraSettings(r=2, alpha=4)), seed=1)


def _tokenized(tokenizer, answers: list[str]) -> pl.DataFrame:
    """Tulu-formatted one-turn examples with the given answers."""
    frame = pl.DataFrame(
        {
            "example_id": [f"ex{i}" for i in range(len(answers))],
            "messages": [
                [
                    {"role": "user", "content": "Which one? A or B"},
                    {"role": "assistant", "content": a},
                ]
                for a in answers
            ],
        }
    )
    tok, dropped = tokenize(frame, tokenizer, DataConfig(max_length=64, chat_format="tulu"))
    assert dropped.height == 0
    return tok


def _autograd(model, ids, labels, pad_id) -> list[torch.Tensor]:
    """The plain definition: the model's own mean completion loss of one example,
    ``loss.backward()``, LoRA ``.grad`` in ``block_names`` order."""
    model.zero_grad()
    model(**collate([ids], [labels], pad_id)).loss.backward()
    grads = {
        canonical_name(n): p.grad.flatten().clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    return [grads[n] for n in block_names(lora_modules(model))]


def test_token_gradients_sum_to_the_batch_one_gradient(peft, tiny_tokenizer):
    tok = _tokenized(tiny_tokenizer, ["The answer is 12 because seven plus five is twelve."])
    ids, labels = tok["input_ids"][0].to_list(), tok["labels"][0].to_list()
    pad = tiny_tokenizer.pad_token_id
    n_tokens = len(labelled_positions(labels))
    assert n_tokens > 7  # several chunks of 3, the last one partial
    chunks = list(token_gradients(peft, lora_modules(peft), ids, labels, pad_id=pad, chunk=3))
    assert [p for c in chunks for p in c.positions] == labelled_positions(labels)
    summed = [sum(c.blocks[b].sum(0) for c in chunks) for b in range(len(chunks[0].blocks))]
    reference = _autograd(peft, ids, labels, pad)
    for got, want in zip(summed, reference, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_each_token_row_matches_its_own_loss_and_gradient(peft, tiny_tokenizer):
    tok = _tokenized(tiny_tokenizer, ["B is right."])
    ids, labels = tok["input_ids"][0].to_list(), tok["labels"][0].to_list()
    pad = tiny_tokenizer.pad_token_id
    contrib = token_contributions(peft, tok, tiny_tokenizer, pad_id=pad, chunk=2)
    positions = labelled_positions(labels)
    assert contrib["position"].to_list() == positions
    g = torch.cat(_autograd(peft, ids, labels, pad))
    for row in contrib.iter_rows(named=True):
        p = row["position"]
        only = [IGNORE] * len(labels)
        only[p] = labels[p]
        g_t = torch.cat(_autograd(peft, ids, only, pad)) / len(positions)
        with torch.no_grad():
            loss = peft(**collate([ids], [only], pad)).loss.item()
        assert row["token_id"] == ids[p] and row["token"] == tiny_tokenizer.decode([ids[p]])
        assert row["loss"] == pytest.approx(loss, rel=1e-5)
        assert row["grad_norm"] == pytest.approx(g_t.norm().item(), rel=1e-4)
        assert row["projection_share"] == pytest.approx(
            (g_t @ g / (g @ g)).item(), rel=1e-4, abs=1e-6
        )
    assert contrib["norm_share"].sum() == pytest.approx(1.0, rel=1e-9)


def test_projection_shares_sum_to_one_and_kinds_mark_the_eos(peft, tiny_tokenizer):
    tok = _tokenized(tiny_tokenizer, ["B", "It is A, of course."])
    contrib = token_contributions(peft, tok, tiny_tokenizer, pad_id=tiny_tokenizer.pad_token_id)
    assert contrib["example_id"].unique(maintain_order=True).to_list() == ["ex0", "ex1"]
    sums = contrib.group_by("example_id").agg(pl.col("projection_share").sum())
    for total in sums["projection_share"]:
        assert total == pytest.approx(1.0, abs=1e-4)  # sum_t <g_t, g> = ||g||^2
    one = contrib.filter(pl.col("example_id") == "ex0")
    assert one["token"].to_list() == ["B", tiny_tokenizer.eos_token]
    assert one["kind"].to_list() == ["content", "eos"]
    shares = kind_shares(contrib)
    eos = shares.filter((pl.col("example_id") == "ex0") & (pl.col("kind") == "eos"))
    assert eos["n_tokens"][0] == 1
    assert eos["projection_share"][0] == pytest.approx(one["projection_share"][1])
    assert shares.group_by("example_id").agg(pl.col("norm_share").sum())[
        "norm_share"
    ].to_list() == pytest.approx([1.0, 1.0])


def test_module_terms_sum_to_the_cosine():
    gen = torch.Generator().manual_seed(0)
    names = [
        f"model.layers.{i}.self_attn.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in ("q_proj", "v_proj")
        for ab in "AB"
    ]
    sizes = [6, 10, 6, 10, 6, 10, 6, 10]
    a = [torch.randn(n, generator=gen) for n in sizes]
    b = [torch.randn(n, generator=gen) + 0.5 * x for n, x in zip(sizes, a, strict=True)]
    terms = module_terms(a, b, names)
    cosine = F.cosine_similarity(torch.cat(a).double(), torch.cat(b).double(), dim=0).item()
    assert terms["module"].to_list() == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert terms["term"].sum() == pytest.approx(cosine, rel=1e-12)
    assert terms["share"].sum() == pytest.approx(1.0, rel=1e-12)
    norms = torch.cat(a).double().norm() * torch.cat(b).double().norm()
    v_proj_1 = (a[6].double() @ b[6].double() + a[7].double() @ b[7].double()) / norms
    assert terms["term"][3] == pytest.approx(v_proj_1.item(), rel=1e-12)


def test_module_terms_edge_cases():
    assert module_of("model.layers.3.mlp.up_proj.lora_B.weight") == "model.layers.3.mlp.up_proj"
    zero = module_terms([torch.zeros(3)], [torch.ones(3)], ["m.lora_A.weight"])
    assert zero["term"].to_list() == [0.0]  # as the scorer: a zero vector has cosine 0
    with pytest.raises(ValueError, match="blocks"):
        module_terms([torch.ones(3)], [], ["m.lora_A.weight"])
    with pytest.raises(ValueError, match="shapes"):
        module_terms([torch.ones(3)], [torch.ones(4)], ["m.lora_A.weight"])
