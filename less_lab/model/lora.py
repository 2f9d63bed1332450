"""LoRA plumbing shared by training and gradient extraction: attaching adapters (to the
attention projections of the model's architecture unless told otherwise), naming LoRA
weights stably, and the completion-only loss computed without full-vocabulary logits at
prompt positions but through the model's own head path (its soft-capping, logit scaling:
whatever its forward does after the LM head)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model

from less_lab.config import LoraSettings
from less_lab.data.batching import IGNORE
from less_lab.model.architectures import conv1d_targets, resolve_targets

ADAPTER = "default"


def add_lora(model: torch.nn.Module, lora: LoraSettings, seed: int = 0) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter; the init is seeded for reproducibility.

    The targets are ``lora.target_modules`` resolved for this architecture
    (``architectures.resolve_targets``: ``auto`` = its attention projections; a name
    matching nothing is refused); the adapter config records the resolved, sorted list."""
    targets = resolve_targets(model, lora)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        fan_in_fan_out=conv1d_targets(model, targets),  # GPT-2's Conv1D: (in, out) weights
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    return peft_model


def canonical_name(name: str) -> str:
    """Parameter name without PEFT's wrapper prefix and adapter name.

    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`` and the
    Trainer-saved ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` both
    become ``model.layers.0.self_attn.q_proj.lora_A.weight``, so optimizer state saved by
    either tool lines up with our gradients.
    """
    name = re.sub(r"^(base_model\.model\.)+", "", name)
    return re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", name)


@dataclass
class LoraModule:
    """One LoRA-adapted linear layer: its A and B sub-layers and canonical weight names."""

    name: str
    lora_a: torch.nn.Linear
    lora_b: torch.nn.Linear
    layer: torch.nn.Module | None = None
    """The PEFT layer holding both (its input is ``x`` before PEFT casts it to the
    adapter's dtype)."""

    @property
    def a_name(self) -> str:
        return f"{self.name}.lora_A.weight"

    @property
    def b_name(self) -> str:
        return f"{self.name}.lora_B.weight"


def lora_modules(model: torch.nn.Module) -> list[LoraModule]:
    """LoRA layers in model order. Gradient blocks follow this order: A then B per layer."""
    found = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and ADAPTER in lora_a:
            short = re.sub(r"^(base_model\.model\.)+", "", name)
            found.append(LoraModule(short, lora_a[ADAPTER], module.lora_B[ADAPTER], module))
    if not found:
        raise ValueError("model has no LoRA layers; wrap it with less_lab.lora.add_lora first")
    return found


def block_names(modules: list[LoraModule]) -> list[str]:
    """Canonical names of the gradient blocks, in feature order."""
    return [n for m in modules for n in (m.a_name, m.b_name)]


def block_shapes(modules: list[LoraModule]) -> list[tuple[int, int]]:
    """Shapes of the gradient blocks (same as the LoRA weights), in feature order."""
    return [tuple(w.weight.shape) for m in modules for w in (m.lora_a, m.lora_b)]


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``transformers`` causal LM under a PEFT wrapper (LoRA layers sit inside it)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returns hidden states) and the LM head module of a causal LM.

    The head module alone is not the model's logits: some models transform its output
    (Gemma2's soft-capping, Cohere's ``logit_scale``); use :func:`position_logits`."""
    hf = causal_lm(model)
    body = getattr(hf, hf.base_model_prefix, None)
    head = hf.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(hf).__name__} is not a causal LM with a separate body and head")
    return body, head


def position_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """``(N, V)`` logits at positions ``(rows[i], cols[i])``, exactly as the model's own
    forward computes them, without computing them anywhere else.

    The model's forward runs as usual, but a pre-hook on its LM head hands the head only
    the ``N`` wanted hidden states (as a ``(1, N, H)`` batch): whatever the model does
    after the head (soft-capping, logit scaling) applies to them, and no full
    ``(b, T, V)`` logits tensor is ever built."""
    hf = causal_lm(model)
    head = hf.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(hf).__name__} has no output embeddings (LM head)")
    calls = []

    def gather(_module, args):
        calls.append(args[0].shape)
        return (args[0][rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        logits = hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        handle.remove()
    if len(calls) != 1 or tuple(logits.shape[:-1]) != (1, len(rows)):
        raise TypeError(
            f"{type(hf).__name__}: its forward does not apply its LM head once to the final "
            f"hidden states (head calls: {calls}, logits {tuple(logits.shape)})"
        )
    return logits[0]


def completion_token_losses(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every completion token and the batch row it belongs to.

    Logits are computed only where a label exists (the LM head is a large share of a
    small model's compute, and prompt positions never enter the loss), through the
    model's own head path (:func:`position_logits`), so the loss equals the model's own
    ``forward(labels=...)`` loss."""
    targets = batch["labels"][:, 1:]
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    logits = position_logits(model, batch["input_ids"], batch["attention_mask"], rows, cols).float()
    losses = F.cross_entropy(logits, targets[rows, cols], reduction="none")
    return losses, rows


def example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example loss: mean cross-entropy over its completion tokens (paper §3)."""
    losses, rows = completion_token_losses(model, batch)
    n = batch["input_ids"].shape[0]
    sums = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
    counts = torch.bincount(rows, minlength=n).clamp_min(1)
    return sums / counts
