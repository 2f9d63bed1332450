"""Peak memory of a datastore build and the store's size, before a run (``plan``).

The build runs one token-budget batch at a time: a forward pass, then a backward pass in
which each LoRA weight's per-example gradient is formed, turned into its feature and
projected block by block (``core.gradients``). Its peak on the model's device is

    peak = weights + LoRA + Adam moments + sketch tables
           + T x (L x per_layer + per_token) + T x V x c x (s + 8)
           + h-gradients + backward working set + one block's buffers + b x d output

with T the token budget (padded tokens per batch), L layers, H hidden, I intermediate,
V vocabulary, r the LoRA rank, k the LoRA'd attention modules per layer, s the model's
bytes per value (2 for bf16), b ``max_batch_examples`` and c the share of tokens that are
completions (1: the worst case). Terms, in bytes:

* weights: every base parameter at the model's dtype, ``s x N``;
* LoRA: ``4 x P`` (PEFT keeps adapters in fp32 on a bf16 model), P = the LoRA weights;
* Adam moments (``adam`` pool features only): ``2 x 4 x P``, fp32 on the device;
* sketch tables (``sparse_sign``): ``4 x nnz x P + 8 x d`` per block, capped by
  ``gradients.sketch_cache_mb`` (auto: up to 4096 MB);
* per_layer, the activations autograd keeps per token and layer (measured on this code
  with ``saved_tensors_hooks``: the LoRA weights are frozen for the pass, so no
  weight-gradient input is kept): RMSNorm's fp32 inputs ``8H``; attention q, k, v and
  output ``2sH + 2s x kv``; the MLP's gate, SiLU and up outputs ``3sI``; the layer inputs
  the hooks hold ``2sH``; the A-outputs ``4kr``; softmax statistics ``4 x heads + 8``;
* per_token: embeddings, final norm and the gathered hidden states, ``(2s + 4) H``;
* logits of the completion tokens: ``V x (s + 8)`` each (head output, fp32 copy, saved
  log-softmax);
* h-gradients: ``4 x T x r x k x L`` (returned by the one ``autograd.grad`` call);
* backward working set: one layer's transient gradients, ``T x (3sI + 16H)``;
* one block's buffers: its fp32 gradient, Adam temporaries and the sketch's row buffer,
  ``5 x 4 x b x n_max``, plus ``3 x 4 x 2d x b`` of sketch bags; the output ``4 x b x d``.

The ``(b x P)`` gradient and its Adam copy are never held (they were 8.6 GB each at
batch 16 on a 7B model). Llama-2-7B in bf16, LoRA r=128 on q/k/v/o (P = 134M), d = 8192,
T = 8192, b = 16, adam features, sparse_sign (``plan(LLAMA2_7B, ...)``): weights 13.48 GB,
LoRA 0.54, Adam 1.07, sketch tables 2.16, activations 39.36 (32 layers x 8192 tokens x
147 KiB), embeddings 0.27, logits 2.62 (every token a completion; 1.31 at half, 0.58 at
the real pool's 22%), h-gradients 0.54, working set 1.08, block buffers 0.17: **61.3 GB**
worst case, 60.0 GB at half completions, 59.2 GB at the pool's 22%; T = 4096: 39.4 GB.
The activations scale with T x L. On a 2-layer 7B-shaped slice in fp32 on the CPU
(``benchmarks/memory_7b_slice.py``) the measured peak RSS was 0.86x this formula with
large blocks mmapped (1.29x under glibc's defaults, which keep freed blocks resident).
The store: ``pool x d x (2 | 4) B`` per checkpoint, plus 13 B of bookkeeping per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from less_lab.config import GradientConfig, LoraSettings
from less_lab.core.projection_sparse import AUTO_CACHE_LIMIT, sketch_table_bytes
from less_lab.model.architectures import ATTENTION_PROJECTIONS, expand_targets

GB = 1e9
_ROW_BOOKKEEPING = 13


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-like causal LM that its memory depends on."""

    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int | None = None
    tied_embeddings: bool = False
    dtype_bytes: int = 2
    """Bytes per weight and activation value: 2 (bf16, fp16) or 4 (fp32)."""

    @classmethod
    def from_config(cls, config: Any, dtype_bytes: int | None = None) -> ModelShape:
        """From a ``transformers`` config (``LlamaConfig``, ``MistralConfig``, ...)."""
        if dtype_bytes is None:
            dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", ""))
            dtype_bytes = 4 if "float32" in dtype else 2
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            vocab=config.vocab_size,
            intermediate=config.intermediate_size,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            dtype_bytes=dtype_bytes,
        )

    @property
    def kv_dim(self) -> int:
        return (self.kv_heads or self.heads) * (self.hidden // self.heads)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.module_shapes().values()) + 2 * self.hidden
        heads = 1 if self.tied_embeddings else 2
        return heads * self.vocab * self.hidden + self.layers * per_layer + self.hidden


LLAMA2_7B = ModelShape(hidden=4096, layers=32, vocab=32000, intermediate=11008, heads=32)
"""Llama-2-7B (Mistral-7B: ``ModelShape(4096, 32, 32000, 14336, 32, kv_heads=8)``)."""


@dataclass
class MemoryPlan:
    """Peak device memory of a store build, term by term, and the store's size."""

    terms: list[tuple[str, float, str]] = field(default_factory=list)
    """``(term, bytes, how it is computed)`` in the order of the module's formula."""
    store_bytes: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> float:
        return sum(b for _, b, _ in self.terms)

    def term(self, name: str) -> float:
        return next(b for n, b, _ in self.terms if n == name)

    def text(self) -> str:
        """A readable table: one line per term, the peak and the store size."""
        lines = ["  ".join(f"{k}={v}" for k, v in self.settings.items()), ""]
        lines.append(f"{'term':<24}{'GB':>9}  formula")
        for name, size, how in self.terms:
            lines.append(f"{name:<24}{size / GB:>9.2f}  {how}")
        lines.append(f"{'peak (device)':<24}{self.peak_bytes / GB:>9.2f}")
        lines.append(f"{'store (disk)':<24}{self.store_bytes / GB:>9.2f}")
        return "\n".join(lines)


def lora_size(model: ModelShape, lora: LoraSettings) -> tuple[int, int, int]:
    """(P, largest block, LoRA'd modules per layer) for LoRA on ``lora.target_modules``
    (``auto``: the attention projections of this Llama-like shape)."""
    targets = expand_targets(lora.target_modules, ATTENTION_PROJECTIONS["llama"])
    shapes = [s for n, s in model.module_shapes().items() if n in targets]
    per_layer = sum(lora.r * (a + b) for a, b in shapes)
    biggest = max((lora.r * max(a, b) for a, b in shapes), default=0)
    return model.layers * per_layer, biggest, len(shapes)


def activation_bytes_per_token(model: ModelShape, lora: LoraSettings) -> tuple[float, float]:
    """(per layer, outside the layers) bytes autograd and the hooks keep per token."""
    s, h = model.dtype_bytes, model.hidden
    _, _, k = lora_size(model, lora)
    per_layer = (
        8 * h
        + 2 * s * h
        + 2 * s * model.kv_dim
        + 3 * s * model.intermediate
        + 2 * s * h
        + 4 * k * lora.r
        + 4 * model.heads
        + 8
    )
    return per_layer, (2 * s + 4) * h


def plan(
    model: ModelShape | Any,
    lora: LoraSettings,
    grad: GradientConfig,
    pool_size: int,
    *,
    checkpoints: int = 4,
    completion_share: float = 1.0,
    feature: str | None = None,
) -> MemoryPlan:
    """Peak memory of building ``pool_size`` examples' store, and the store's size.

    ``model``: a ``ModelShape`` or a ``transformers`` config. ``feature``: the pool's
    (default ``grad.pool_feature``). See the module docstring for the formula."""
    if not isinstance(model, ModelShape):
        model = ModelShape.from_config(model)
    feature = feature or grad.pool_feature
    p, n_max, k = lora_size(model, lora)
    t, b, d, s = grad.token_budget, grad.max_batch_examples, grad.proj_dim, model.dtype_bytes
    per_layer, per_token = activation_bytes_per_token(model, lora)
    out = MemoryPlan(settings=_settings(model, lora, grad, pool_size, p))
    add = out.terms.append
    add(("weights", s * model.parameters(), f"{s} B x {model.parameters() / 1e9:.2f}B params"))
    add(("LoRA weights", 4 * p, "4 B x P (fp32 adapters)"))
    add(("Adam moments", 8 * p if feature == "adam" else 0, "2 x 4 B x P (adam features)"))
    add(("sketch tables", _sketch_bytes(model, lora, grad, p), "4 B x nnz x P, capped"))
    add(("activations", t * model.layers * per_layer, f"T x L x {per_layer / 1024:.0f} KiB"))
    add(("embeddings, norm", t * per_token, f"T x {per_token / 1024:.0f} KiB"))
    logits = t * completion_share * model.vocab * (s + 8)
    add(("logits", logits, f"T x {completion_share:g} x V x (s + 8) B"))
    add(("h-gradients", 4 * t * lora.r * k * model.layers, "4 B x T x r x k x L"))
    working = t * (3 * s * model.intermediate + 16 * model.hidden)
    add(("backward working set", working, "T x (3sI + 16H) B"))
    add(("block buffers", 20 * b * n_max + 24 * d * b, "5 x 4 B x b x n_max + bags"))
    add(("features (b x d)", 4 * b * d, "4 B x b x d"))
    row = d * (2 if grad.store_dtype == "float16" else 4) + _ROW_BOOKKEEPING
    out.store_bytes = pool_size * row * checkpoints
    return out


def _sketch_bytes(model: ModelShape, lora: LoraSettings, grad: GradientConfig, p: int) -> int:
    if grad.projection != "sparse_sign":
        return 0
    _, _, k = lora_size(model, lora)
    blocks = 2 * k * model.layers
    full = sketch_table_bytes([p // blocks] * blocks, grad.proj_dim, grad.sparse_nnz)
    cap = AUTO_CACHE_LIMIT if grad.sketch_cache_mb is None else grad.sketch_cache_mb * 2**20
    return min(full, cap)


def _settings(model, lora, grad, pool_size, p) -> dict[str, Any]:
    return {
        "H": model.hidden,
        "L": model.layers,
        "bytes/value": model.dtype_bytes,
        "r": lora.r,
        "P": f"{p / 1e6:.0f}M",
        "d": grad.proj_dim,
        "T": grad.token_budget,
        "b": grad.max_batch_examples,
        "projection": grad.projection,
        "pool": pool_size,
    }
