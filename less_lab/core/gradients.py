"""Per-example LoRA gradients in batches, and the features LESS builds from them.

A LoRA layer computes ``y = B(A(x))`` (PEFT then adds ``y * scaling`` to the base output).
Its weight gradients are sums over tokens of outer products,
``dL/dB = sum_t dy_t h_t^T`` and ``dL/dA = sum_t dh_t x_t^T`` with ``h = A x``.
Capturing ``x``, ``h`` and the gradients w.r.t. ``y`` and ``h`` for a padded batch, and
summing over each row's own tokens, gives every example's gradient from ONE backward pass,
equal to a batch-1 backward (rows never interact: causal attention never looks at the
right padding, and padding carries no loss). No param.grad is ever accumulated.

Block by block: tensor hooks on ``h`` and ``y`` form each LoRA weight's per-example gradient
the moment the backward pass reaches it and hand it on (``stream_gradients``); the
datastore build turns it into its feature (Adam per block, fp32 whatever the model dtype),
projects it and adds it to a ``(b, d)`` output (``iter_features``), so the ``(b, P)``
gradient (8.6 GB at batch 16 for a 7B model's LoRA r=128) never exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from less_lab.config import GradientConfig
from less_lab.model.lora import LoraModule, example_losses

BlockSink = Callable[[int, torch.Tensor], None]
"""Receives ``(block index, (b, numel) fp32 gradient)`` as each LoRA weight's per-example
gradient is produced during the backward pass (blocks arrive in backward order)."""


class _Capture:
    """Forward hooks that keep each LoRA layer's input and A-output, and hang a tensor hook
    on the A- and B-outputs so that each block's gradient is formed (and handed to ``sink``)
    the moment the backward pass reaches it: the ``(b, T, out)`` gradients of the B-outputs
    are consumed one module at a time and never all held at once."""

    def __init__(self, modules: Sequence[LoraModule], sink: BlockSink):
        self.modules, self.sink = modules, sink
        self.x: list[torch.Tensor | None] = [None] * len(modules)
        self.h: list[torch.Tensor | None] = [None] * len(modules)
        self.produced = [False] * (2 * len(modules))
        self._handles: list = []

    def __enter__(self) -> _Capture:
        for i, m in enumerate(self.modules):
            if m.layer is not None:  # x as the layer got it: shared by q/k/v, model dtype
                self._handles.append(m.layer.register_forward_pre_hook(self._keep_x(i)))
            self._handles.append(m.lora_a.register_forward_hook(self._keep_a(i)))
            self._handles.append(m.lora_b.register_forward_hook(self._keep_b(i)))
        return self

    def _keep_x(self, i: int):
        def hook(_mod, args):
            self.x[i] = args[0] if args else None

        return hook

    def _keep_a(self, i: int):
        def hook(_mod, inputs, output):
            if self.x[i] is None or self.modules[i].layer is None:
                self.x[i] = inputs[0]
            self.h[i] = output
            if output.requires_grad:
                output.register_hook(self._grad_a(i))

        return hook

    def _keep_b(self, i: int):
        def hook(_mod, _inputs, output):
            if output.requires_grad:
                output.register_hook(self._grad_b(i))

        return hook

    def _grad_b(self, i: int):
        def hook(gy: torch.Tensor) -> None:  # dL/dB = sum_t dy_t h_t^T
            with torch.no_grad():
                h = self.h[i].detach().float()
                self._emit(2 * i + 1, torch.einsum("bto,btr->bor", gy.float(), h))

        return hook

    def _grad_a(self, i: int):
        def hook(gh: torch.Tensor) -> None:  # dL/dA = sum_t dh_t x_t^T
            with torch.no_grad():
                x = self.x[i].detach().float()
                self.x[i] = self.h[i] = None  # this module is done: drop our references
                self._emit(2 * i, torch.einsum("btr,bti->bri", gh.float(), x))

        return hook

    def _emit(self, block: int, grad: torch.Tensor) -> None:
        self.produced[block] = True
        self.sink(block, grad.flatten(1))

    def finish(self, batch: int) -> None:
        """Zero blocks for layers the loss never reached (cannot happen for attention)."""
        for block, done in enumerate(self.produced):
            if not done:
                lora = self.modules[block // 2]
                weight = (lora.lora_b if block % 2 else lora.lora_a).weight
                self._emit(block, weight.new_zeros(batch, weight.numel(), dtype=torch.float32))

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.x = [None] * len(self.modules)
        self.h = [None] * len(self.modules)


@contextlib.contextmanager
def _activations_only(model: torch.nn.Module, modules: Sequence[LoraModule]) -> Iterator[None]:
    """Build the graph for activation gradients only: the LoRA weights are frozen for the
    pass and the input embeddings become a leaf that requires grad. The hooks need only
    dL/dh and dL/dy, so autograd then keeps no weight-gradient inputs: not the fp32 copy of
    ``x`` PEFT makes for each fp32 adapter of a bf16 model (4 x H x 4 B per token per layer,
    17 GB at 7B and 8192 tokens) nor ``h``. A model without input embeddings runs as is."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if embeddings is None:
        yield
        return
    weights = [w.weight for m in modules for w in (m.lora_a, m.lora_b)]
    flags = [w.requires_grad for w in weights]
    handle = embeddings.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_())
    for w in weights:
        w.requires_grad_(False)
    try:
        yield
    finally:
        handle.remove()
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)


def stream_gradients(
    model: torch.nn.Module,
    modules: Sequence[LoraModule],
    batch: dict[str, torch.Tensor],
    sink: BlockSink,
) -> torch.Tensor:
    """One forward and one backward pass; every block's per-example gradient goes to
    ``sink`` as soon as it exists (fp32, ``(b, numel)``, A then B per layer in
    ``lora.block_names`` numbering); returns the ``(b,)`` losses.

    Peak extra memory: one block's gradient (plus whatever ``sink`` keeps), never the
    ``(b, P)`` whole. Run the model in eval mode: dropout would make the features random.
    """
    with _Capture(modules, sink) as cap, _activations_only(model, modules), torch.enable_grad():
        losses = example_losses(model, batch)
        wanted = [h for h in cap.h if h is not None and h.requires_grad]
        if wanted:  # the A-outputs: every LoRA branch lies on a path from the loss to them
            torch.autograd.grad(losses.sum(), wanted, allow_unused=True)
        cap.finish(int(batch["input_ids"].shape[0]))
    return losses.detach()


def per_example_gradients(
    model: torch.nn.Module, modules: Sequence[LoraModule], batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of each example's mean completion loss w.r.t. every LoRA weight.

    Returns ``(blocks, losses)``: one fp32 tensor of shape ``(b, numel)`` per LoRA weight
    (A then B for each layer, the order of ``lora.block_names``) and the ``(b,)`` losses.
    Holds the whole ``(b, P)`` gradient: for inspection and tests; the datastore build
    streams blocks instead (``iter_features``). Run the model in eval mode.
    """
    blocks: list[torch.Tensor | None] = [None] * (2 * len(modules))

    def keep(block: int, grad: torch.Tensor) -> None:
        blocks[block] = grad

    losses = stream_gradients(model, modules, batch, keep)
    return blocks, losses  # type: ignore[return-value]


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


def check_feature_kind(kind: str, names: Sequence[str], adam: AdamState | None) -> None:
    """Refuse an unknown feature kind, or ``adam`` without moments for every block."""
    if kind not in ("adam", "sgd", "sign"):
        raise ValueError(f"unknown feature kind {kind!r}; expected adam, sgd or sign")
    if kind != "adam":
        return
    if adam is None:
        raise ValueError("adam features need the checkpoint's optimizer state")
    missing = [n for n in names if n not in adam.exp_avg]
    if missing:
        raise KeyError(f"optimizer state lacks {len(missing)} LoRA weights, e.g. {missing[0]}")


def block_feature(
    grad: torch.Tensor, name: str, kind: str, cfg: GradientConfig, adam: AdamState | None
) -> torch.Tensor:
    """The feature of one fp32 gradient block: g, sign g, or Γ(g) with this block's moments."""
    if kind == "sgd":
        return grad
    if kind == "sign":
        return grad.sign()
    return adam_update(grad, adam.exp_avg[name], adam.exp_avg_sq[name], adam, cfg)


def to_features(
    blocks: list[torch.Tensor],
    names: Sequence[str],
    kind: str,
    cfg: GradientConfig,
    adam: AdamState | None = None,
) -> list[torch.Tensor]:
    """Turn raw gradient blocks into ``sgd`` (g), ``sign`` (sign g) or ``adam`` (Γ) blocks."""
    check_feature_kind(kind, names, adam)
    return [block_feature(b, n, kind, cfg, adam) for b, n in zip(blocks, names, strict=True)]


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


class _FeatureSink:
    """Turns each gradient block into its feature, adds its projection to the batch's
    ``(b, d)`` fp32 output and its squares to the norms, then lets the block go."""

    def __init__(self, projector, names, kind, cfg, adam, batch: int, device) -> None:
        self.projector, self.names, self.kind = projector, names, kind
        self.cfg, self.adam = cfg, adam
        self.partial = projector.begin(batch)
        self.grad_sq = torch.zeros(batch, device=device)
        self.feat_sq = self.grad_sq if kind == "sgd" else torch.zeros(batch, device=device)

    def __call__(self, block: int, grad: torch.Tensor) -> None:
        self.grad_sq += grad.square().sum(1)
        feat = block_feature(grad, self.names[block], self.kind, self.cfg, self.adam)
        if feat is not grad:
            self.feat_sq += feat.square().sum(1)
        self.projector.add(self.partial, block, feat)


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
    """Projected features for each ``(rows, batch)`` pair, one batch at a time.

    Block by block: each LoRA weight's per-example gradient is turned into its feature
    (Adam transform per block, fp32) and projected as the backward pass produces it, and
    the projections are summed (the projection is linear and separable by blocks). Peak
    extra memory is one block's ``(b, n_i)`` gradient and feature plus the ``(b, d)``
    output, never the ``(b, P)`` gradient. Equal to projecting the whole vector up to fp32
    summation order (``tests/core/test_gradients.py``)."""
    check_feature_kind(kind, names, adam)
    for rows, batch in batches:
        ids = batch["input_ids"]
        sink = _FeatureSink(projector, names, kind, cfg, adam, ids.shape[0], ids.device)
        losses = stream_gradients(model, modules, batch, sink)
        projected = projector.finish(sink.partial)
        yield BatchFeatures(rows, projected, losses, sink.grad_sq.sqrt(), sink.feat_sq.sqrt())
