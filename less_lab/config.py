"""Every number a user might tune, as frozen dataclasses with documented defaults.

Defaults follow the paper (Xia et al. 2024, §4-5 and appendix A.2) unless a field says
otherwise. Each stage records the config that made its artifacts (``to_dict``) so that a
cached artifact is refused when reused with different settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ChatFormat = Literal["tulu", "template"]
Truncation = Literal["prompt_left", "prompt_middle", "right"]
FeatureKind = Literal["adam", "sgd", "sign"]
ProjectionKind = Literal["sparse_sign", "rademacher", "trak_basic", "none"]
ScoreMethod = Literal["paper", "mean_of_shots", "dot"]


@dataclass(frozen=True)
class DataConfig:
    """How examples become token ids and completion-only labels."""

    chat_format: ChatFormat = "tulu"
    """``tulu``: the ``<|user|>`` / ``<|assistant|>`` format LESS trained with;
    ``template``: the tokenizer's own chat template."""
    max_length: int = 2048
    """Longest tokenized example (the reference code's ``max_seq_length``). CPU runs use
    256-512."""
    truncation: Truncation = "prompt_left"
    """What to cut when an example is too long. ``prompt_left`` / ``prompt_middle`` cut
    the prompt (from its start or its middle) so the completion survives; ``right`` is the
    reference code's behaviour (cut the end, which can remove the whole completion)."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape (appendix A.2: r=128, alpha=512, dropout 0.1, attention only)."""

    r: int = 128
    alpha: int = 512
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    """LoRA training, used for the warmup and for fine-tuning on a selection."""

    epochs: int = 4
    """Warmup epochs N (one checkpoint per epoch)."""
    learning_rate: float = 2e-5
    """Peak learning rate."""
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    """Decay after warmup: ``linear`` (the reference scripts) or ``cosine`` (appendix A.2)."""
    warmup_ratio: float = 0.03
    """Fraction of steps with linearly increasing learning rate."""
    batch_size: int = 128
    """Examples per optimizer step (effective batch size; micro-batches are formed by
    ``token_budget``)."""
    token_budget: int = 4096
    """Most padded tokens in one micro-batch: bounds memory whatever the lengths are."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    """Seed of the optimisation (data order, dropout, LoRA init)."""
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass(frozen=True)
class WarmupConfig:
    """The warmup run on a random subset of the pool (§4.1 step 1)."""

    fraction: float = 0.05
    """Share of the pool used for warmup training."""
    seed: int = 0
    """Seed of the warmup subset draw (the reference code ignored it; we do not)."""
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class GradientConfig:
    """Per-example gradient features and their random projection (§4.1 step 2)."""

    proj_dim: int = 8192
    """Projection dimension d (paper default 8192; Table 11 ablates it)."""
    projection: ProjectionKind = "sparse_sign"
    """``sparse_sign``: a sparse JL sketch, never materialises a P x d matrix (CPU
    default); ``rademacher``: dense +-1/sqrt(d) matrix generated block-wise (trak's
    ``CudaProjector`` on GPU); ``trak_basic``: trak's ``BasicProjector`` (the reference,
    slow on CPU); ``none``: keep unprojected features (small pools only)."""
    proj_seed: int = 0
    """Seed of the projection matrix; pool and targets must share it."""
    sparse_nnz: int = 4
    """Non-zeros per input coordinate in the ``sparse_sign`` sketch."""
    token_budget: int = 4096
    """Most padded tokens per batch during extraction."""
    max_batch_examples: int = 16
    """Most examples per batch: bounds the per-example gradient buffer (P floats each)."""
    adam_bias_correction: bool = True
    """Divide m' and v' by (1 - beta^t) as the paper's Definition 3.1 does (the reference
    code does not)."""
    adam_eps_inside_sqrt: bool = True
    """``m / sqrt(v + eps)`` as in the paper and reference code; False gives torch's
    ``m / (sqrt(v) + eps)``."""
    store_dtype: Literal["float32", "float16"] = "float32"
    """On-disk dtype of the features (fp16 halves the store; the paper's 17.7 GB)."""


@dataclass(frozen=True)
class ScoreConfig:
    """Turning features into one score per pool example (§4.2, Eq. 2)."""

    method: ScoreMethod = "paper"
    """``paper``: cosine with each subtask's mean target gradient (Eq. 2);
    ``mean_of_shots``: mean over the subtask's shots of per-shot cosines (reference code);
    ``dot``: unnormalised inner product with the mean target gradient (Table 13)."""
    aggregate: Literal["max", "mean"] = "max"
    """Across subtasks: ``max`` (paper) or ``mean``."""
    normalize_lr: bool = True
    """Rescale the checkpoint learning-rate weights to sum to one (ranking unchanged)."""
    chunk_rows: int = 16384
    """Pool rows read per chunk while scoring: bounds memory on paper-scale stores."""


@dataclass(frozen=True)
class SelectConfig:
    """How many examples to keep."""

    fraction: float | None = 0.05
    """Share of the pool to select (paper: 5%). Ignored when ``k`` is set."""
    k: int | None = None
    """Exact number of examples to select."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config or any JSON-serialisable value."""
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys fail."""
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"{cls.__name__} has no field {key!r}")
        ftype = fields[key].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


_DATACLASSES = {
    "LoraSettings": LoraSettings,
    "TrainConfig": TrainConfig,
    "DataConfig": DataConfig,
    "GradientConfig": GradientConfig,
}


def record_settings(
    path: Path, settings: dict, refused: str = "existing run was made with different settings"
) -> None:
    """Write ``settings`` (what made a run) to ``path``, or, when ``path`` exists, refuse to
    continue a run recorded with other settings: ``ValueError`` names the file, ``refused``
    and every differing key as ``(on disk, now)``. The write is atomic (a kill never leaves
    half a file)."""
    settings = json.loads(json.dumps(settings))
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = {
                k: (old.get(k), settings.get(k))
                for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)
            }
            raise ValueError(
                f"{path}: {refused} (key: (on disk, now)) {diff}; use another directory"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path)
