"""Per-example LoRA gradients in batches, and the features LESS builds from them.

A LoRA layer computes ``y = B(A(x))`` (PEFT then adds ``y * scaling`` to the base output).
Its weight gradients are sums over tokens of outer products,
``dL/dB = sum_t dy_t h_t^T`` and ``dL/dA = sum_t dh_t x_t^T`` with ``h = A x``.
Capturing ``x``, ``h`` and the gradients w.r.t. ``y`` and ``h`` for a padded batch, and
summing over each row's own tokens, gives every example's gradient from ONE backward pass,
equal to a batch-1 backward (rows never interact: causal attention never looks at the
right padding, and padding carries no loss). No param.grad is ever accumulated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from less_lab.config import GradientConfig
from less_lab.model.lora import LoraModule, example_losses


class _Capture:
    """Forward hooks that keep each LoRA layer's input, A-output and B-output."""

    def __init__(self, modules: Sequence[LoraModule]):
        self.modules = modules
        self.x: list[torch.Tensor | None] = [None] * len(modules)
        self.h: list[torch.Tensor | None] = [None] * len(modules)
        self.y: list[torch.Tensor | None] = [None] * len(modules)
        self._handles: list = []

    def __enter__(self) -> _Capture:
        for i, m in enumerate(self.modules):
            self._handles.append(m.lora_a.register_forward_hook(self._keep_a(i)))
            self._handles.append(m.lora_b.register_forward_hook(self._keep_b(i)))
        return self

    def _keep_a(self, i: int):
        def hook(_mod, inputs, output):
            self.x[i], self.h[i] = inputs[0], output

        return hook

    def _keep_b(self, i: int):
        def hook(_mod, _inputs, output):
            self.y[i] = output

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def per_example_gradients(
    model: torch.nn.Module, modules: Sequence[LoraModule], batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of each example's mean completion loss w.r.t. every LoRA weight.

    Returns ``(blocks, losses)``: one fp32 tensor of shape ``(b, numel)`` per LoRA weight
    (A then B for each layer, the order of ``lora.block_names``) and the ``(b,)`` losses.
    Run the model in eval mode: dropout would make the features random.
    """
    with _Capture(modules) as cap, torch.enable_grad():
        losses = example_losses(model, batch)
        wanted = [t for pair in zip(cap.y, cap.h, strict=True) for t in pair]
        grads = torch.autograd.grad(losses.sum(), wanted, allow_unused=True)
    blocks: list[torch.Tensor] = []
    for i, _m in enumerate(modules):
        gy, gh = grads[2 * i], grads[2 * i + 1]
        x, h = cap.x[i].detach().float(), cap.h[i].detach().float()
        if gy is None:  # layer unused by the loss (cannot happen for attention layers)
            gy, gh = torch.zeros_like(cap.y[i]), torch.zeros_like(h)
        grad_a = torch.einsum("btr,bti->bri", gh.float(), x)
        grad_b = torch.einsum("bto,btr->bor", gy.float(), h)
        blocks += [grad_a.flatten(1), grad_b.flatten(1)]
    return blocks, losses.detach()


@dataclass
class AdamState:
    """Adam moments of one warmup checkpoint, keyed by canonical LoRA weight name.

    ``step`` is the number of optimizer steps already taken; the update LESS simulates is
    step ``step + 1``, so bias correction uses ``1 - beta**(step + 1)`` (torch's Adam
    convention for the next step).
    """

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: int
    betas: tuple[float, float]
    eps: float


def adam_update(
    grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, state: AdamState, cfg: GradientConfig
) -> torch.Tensor:
    """Γ(z) of Definition 3.1 for a (b, n) block of gradients; m, v are (n,) moments."""
    b1, b2 = state.betas
    m_new = grad.mul(1 - b1).add_(m.flatten().float(), alpha=b1)
    v_new = grad.square().mul_(1 - b2).add_(v.flatten().float(), alpha=b2)
    if cfg.adam_bias_correction:
        t = state.step + 1
        m_new.div_(1 - b1**t)
        v_new.div_(1 - b2**t)
    if cfg.adam_eps_inside_sqrt:
        return m_new.div_(v_new.add_(state.eps).sqrt_())
    return m_new.div_(v_new.sqrt_().add_(state.eps))


def to_features(
    blocks: list[torch.Tensor],
    names: Sequence[str],
    kind: str,
    cfg: GradientConfig,
    adam: AdamState | None = None,
) -> list[torch.Tensor]:
    """Turn raw gradient blocks into ``sgd`` (g), ``sign`` (sign g) or ``adam`` (Γ) blocks."""
    if kind == "sgd":
        return blocks
    if kind == "sign":
        return [b.sign() for b in blocks]
    if kind != "adam":
        raise ValueError(f"unknown feature kind {kind!r}; expected adam, sgd or sign")
    if adam is None:
        raise ValueError("adam features need the checkpoint's optimizer state")
    missing = [n for n in names if n not in adam.exp_avg]
    if missing:
        raise KeyError(f"optimizer state lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
    return [
        adam_update(b, adam.exp_avg[n], adam.exp_avg_sq[n], adam, cfg)
        for b, n in zip(blocks, names, strict=True)
    ]


def squared_norms(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row-wise squared L2 norm of a gradient split into blocks."""
    return sum(b.square().sum(1) for b in blocks)


@dataclass
class BatchFeatures:
    """What one batch contributes to a datastore."""

    rows: list[int]
    features: torch.Tensor  # (b, d) projected features, fp32
    loss: torch.Tensor  # (b,)
    grad_norm: torch.Tensor  # (b,) norm of the raw gradient g
    feature_norm: torch.Tensor  # (b,) norm of the unprojected feature (Γ for adam)


def iter_features(
    model: torch.nn.Module,
    modules: Sequence[LoraModule],
    names: Sequence[str],
    batches: Iterator[tuple[list[int], dict[str, torch.Tensor]]],
    projector,
    kind: str,
    cfg: GradientConfig,
    adam: AdamState | None = None,
) -> Iterator[BatchFeatures]:
    """Projected features for each ``(rows, batch)`` pair, one batch at a time."""
    for rows, batch in batches:
        blocks, losses = per_example_gradients(model, modules, batch)
        grad_norm = squared_norms(blocks).sqrt()
        feats = to_features(blocks, names, kind, cfg, adam)
        feat_norm = grad_norm if kind == "sgd" else squared_norms(feats).sqrt()
        projected = projector.project(feats)
        yield BatchFeatures(rows, projected, losses, grad_norm, feat_norm)
