"""Every number a user might tune, as frozen dataclasses with documented defaults.

Defaults follow the paper (Xia et al. 2024, §4-5 and appendix A.2) unless a field says
otherwise. Each config validates its own fields when built (types, ranges, known
literals) and raises :class:`~less_lab.errors.ConfigError` naming the key, the value and
what is allowed, so a bad setting stops before any expensive stage. Each stage records
the config that made its artifacts (``to_dict``) so that a cached artifact is refused
when reused with different settings.

Settings also come as text, ``section.field=value`` (the CLI's ``--set``, a notebook's
list of overrides): ``less_lab.overrides.build_configs`` applies them on top of the
defaults or of a named preset.

Scoring and selection settings live in ``selection_config`` (re-exported here), the
validation machinery in ``validation``.

Base layer: imports nothing from less_lab but ``errors``, ``_io``, ``validation`` and
``selection_config``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from less_lab._io import write_json
from less_lab.errors import SettingsMismatchError
from less_lab.selection_config import ScoreConfig as ScoreConfig  # re-exported: one import
from less_lab.selection_config import SelectConfig as SelectConfig  # for every config
from less_lab.validation import Validated, is_fraction, positive
from less_lab.validation import from_dict as from_dict

ChatFormat = Literal["tulu", "template"]
Truncation = Literal["prompt_left", "prompt_middle", "right"]
FeatureKind = Literal["adam", "sgd", "sign"]
ProjectionKind = Literal["sparse_sign", "rademacher", "trak_basic", "none"]
LossTokens = Literal["all", "content"]


NOT_RECORDED = {"recorded": False}
"""Field metadata of a setting that changes speed or memory but never a result: left out
of ``to_dict`` (hence of fingerprints, store names and recorded settings)."""


@dataclass(frozen=True)
class DataConfig(Validated):
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

    def _rules(self):
        return [("max_length", lambda v: v >= 8, "at least 8 tokens")]


@dataclass(frozen=True)
class LoraSettings(Validated):
    """LoRA adapter shape (appendix A.2: r=128, alpha=512, dropout 0.1, attention only)."""

    r: int = 128
    alpha: int = 512
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("auto",)
    """Modules to adapt, as PEFT matches names; ``auto``: the architecture's attention
    projections (``less_lab.model.architectures``), alone or with more names. Sorted."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "target_modules", tuple(sorted(set(self.target_modules))))

    def _rules(self):
        return [
            ("r", positive, "a rank >= 1"),
            ("alpha", positive, "a positive scale"),
            ("dropout", lambda v: 0 <= v < 1, "a probability in [0, 1)"),
            ("target_modules", lambda v: v and all(map(str.strip, v)), "module names (>= 1)"),
        ]


@dataclass(frozen=True)
class TrainConfig(Validated):
    """LoRA training, used for the warmup and for fine-tuning on a selection."""

    epochs: int = 4
    """Warmup epochs N (one checkpoint per epoch)."""
    learning_rate: float = 2e-5
    """Peak learning rate."""
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    """Decay after warmup: ``linear`` (the reference scripts) or ``cosine`` (appendix A.2)."""
    warmup_ratio: float = 0.03
    """Share of steps warming up (``ceil``; HF's schedulers step for step)."""
    batch_size: int = 128
    """Examples per optimizer step (effective batch size; micro-batches are formed by
    ``token_budget``)."""
    loss_average: Literal["example", "token"] = "example"
    """``example``: mean over the step's examples of each one's mean token loss (the
    reference's HF Trainer); ``token``: mean over all the step's completion tokens."""
    token_budget: int = 4096
    """Most padded tokens in one micro-batch: bounds memory whatever the lengths are."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    """Seed of the optimisation (data order, dropout, LoRA init)."""
    lora: LoraSettings = field(default_factory=LoraSettings)

    def _rules(self):
        return [
            ("epochs", positive, "at least 1 epoch (each epoch is one checkpoint)"),
            ("learning_rate", positive, "a positive learning rate"),
            ("warmup_ratio", lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
            ("batch_size", positive, "at least 1 example per step"),
            ("token_budget", positive, "a positive number of tokens"),
            ("weight_decay", lambda v: v >= 0, "a value >= 0"),
            ("betas", lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
            ("eps", positive, "a positive epsilon"),
        ]


@dataclass(frozen=True)
class WarmupConfig(Validated):
    """The warmup run on a random subset of the pool (§4.1 step 1)."""

    fraction: float = 0.05
    """Share of the pool used for warmup training."""
    seed: int = 0
    """Seed of the warmup subset draw (the reference code ignored it; we do not)."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def _rules(self):
        return [("fraction", is_fraction, "a share of the pool in (0, 1]")]


@dataclass(frozen=True)
class GradientConfig(Validated):
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
    pool_feature: FeatureKind = "adam"
    """Gradient feature of pool examples: ``adam`` (the paper's Γ, Def. 3.1), ``sgd``
    (the raw gradient, Table 5's ablation) or ``sign``."""
    target_feature: FeatureKind = "sgd"
    """Gradient feature of target examples: ``sgd`` (the paper: targets are never
    preconditioned)."""
    pool_tokens: LossTokens = "all"
    """Completion tokens whose loss a pool gradient is taken of: ``all`` (paper) or
    ``content``: without the end-of-sequence / end-of-turn tokens and the chat template's
    whitespace after them (``data.token_kinds``)."""
    target_tokens: LossTokens = "all"
    """The same for target examples. ``content`` is the remedy for one-token answers
    (multiple choice) whose gradient is mostly their EOS token."""
    sketch_cache_mb: int | None = field(default=None, metadata=NOT_RECORDED)
    """MB of device memory the ``sparse_sign`` sketch may keep its hash tables in (4 bytes
    per non-zero: ``4 x sparse_nnz x P``, 2.1 GB for LoRA r=128 on a 7B model). ``None``
    (auto): enough for every block, up to 4096 MB; ``0``: no cache. Blocks beyond the cap
    are rehashed every batch: the same features, slower. Speed and memory only, so it is
    not recorded (not in ``to_dict``, fingerprints or store names)."""

    def _rules(self):
        return [
            ("proj_dim", positive, "a positive dimension"),
            ("sparse_nnz", positive, "at least 1 non-zero per coordinate"),
            ("token_budget", positive, "a positive number of tokens"),
            ("max_batch_examples", positive, "at least 1 example per batch"),
            (
                "sketch_cache_mb",
                lambda v: v is None or v >= 0,
                "None (auto: every block, up to 4096 MB) or a size in MB >= 0",
            ),
        ]

    def feature(self, split: str) -> FeatureKind:
        """The feature kind of ``split`` (``"pool"`` or a target name)."""
        return self.pool_feature if split == "pool" else self.target_feature

    def tokens(self, split: str) -> LossTokens:
        """Which completion tokens ``split``'s loss keeps (``"pool"`` or a target name)."""
        return self.pool_tokens if split == "pool" else self.target_tokens

    def store_key(self, split: str) -> dict[str, Any]:
        """The recorded settings that name ``split``'s stores: the other split's token
        choice is left out (a target-only remedy reuses the pool stores), and so is this
        split's while it is the default ``all`` (stores made before the option existed
        keep their names)."""
        key = to_dict(self)
        mine = "pool_tokens" if split == "pool" else "target_tokens"
        for name in ("pool_tokens", "target_tokens"):
            if name != mine or key[name] == "all":
                key.pop(name)
        return key


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists. Fields marked
    ``NOT_RECORDED`` (speed and memory knobs that never change a result) are left out, so
    they change no fingerprint and no recorded setting."""
    return json.loads(json.dumps(_recorded(cfg)))


def _recorded(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _recorded(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("recorded", True)
        }
    if isinstance(value, list | tuple):
        return [_recorded(v) for v in value]
    if isinstance(value, dict):
        return {k: _recorded(v) for k, v in value.items()}
    return value


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config or any JSON-serialisable value (sorted keys)."""
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """One line per differing leaf setting: ``key: on disk X, now Y`` (nested dicts are
    walked, so the line names the innermost key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for k in sorted(set(old) | set(new)):
            lines += settings_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return lines
    if old == new:
        return []
    return [f"  {prefix.rstrip('.')}: on disk {old!r}, now {new!r}"]


def check_settings(
    path: Path, settings: dict, refused: str = "existing run was made with different settings"
) -> bool:
    """Whether ``path`` records ``settings`` (False when it does not exist); when it
    records other settings, :class:`SettingsMismatchError` names the file, ``refused``
    and every differing key with both values. Keys starting with ``_`` (provenance such
    as the package version) are shown but never compared."""
    path = Path(path)
    if not path.exists():
        return False
    old = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    new = {k: v for k, v in json.loads(json.dumps(settings)).items() if not k.startswith("_")}
    lines = settings_diff(old, new)
    if lines:
        raise SettingsMismatchError(
            f"{path}: {refused}:\n" + "\n".join(lines) + "\nUse another directory."
        )
    return True


def record_settings(
    path: Path, settings: dict, refused: str = "existing run was made with different settings"
) -> None:
    """Write ``settings`` (what made a run) to ``path`` atomically, or, when ``path``
    exists, refuse to continue a run recorded with other settings (``check_settings``)."""
    if not check_settings(path, settings, refused):
        write_json(path, json.loads(json.dumps(settings)))
