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

Base layer: imports nothing from less_lab but ``errors`` and ``_io``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from less_lab._io import write_json
from less_lab.errors import ConfigError, SettingsMismatchError

ChatFormat = Literal["tulu", "template"]
Truncation = Literal["prompt_left", "prompt_middle", "right"]
FeatureKind = Literal["adam", "sgd", "sign"]
ProjectionKind = Literal["sparse_sign", "rademacher", "trak_basic", "none"]
ScoreMethod = Literal["paper", "mean_of_shots", "dot"]


NOT_RECORDED = {"recorded": False}
"""Field metadata of a setting that changes speed or memory but never a result: left out
of ``to_dict`` (hence of fingerprints, store names and recorded settings)."""


class _Validated:
    """Checks every field against its annotation when the dataclass is built, then the
    class's own range rules (``_rules``: ``(field, ok(value), what is allowed)``)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        for name, ok, allowed in self._rules():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name}={value!r}: expected {allowed}", key=name)

    def _rules(self) -> list[tuple[str, Any, str]]:
        return []


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` wants it (int -> float, list -> tuple) or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{name}={value!r}: expected one of {', '.join(map(repr, args))}", key=name
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r}: expected a list", key=name)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}={value!r}: expected {len(args)} values", key=name)
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false", key=name)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r}: expected a whole number", key=name)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}={value!r}: expected a number", key=name)
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r}: expected a finite number", key=name)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected text", key=name)
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return from_dict(hint, value)
        if not isinstance(value, hint):
            raise ConfigError(f"{name}={value!r}: expected a {hint.__name__}", key=name)
    return value


def _positive(v: Any) -> bool:
    return v > 0


def _fraction(v: Any) -> bool:
    return 0 < v <= 1


@dataclass(frozen=True)
class DataConfig(_Validated):
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
class LoraSettings(_Validated):
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
            ("r", _positive, "a rank >= 1"),
            ("alpha", _positive, "a positive scale"),
            ("dropout", lambda v: 0 <= v < 1, "a probability in [0, 1)"),
            ("target_modules", lambda v: v and all(map(str.strip, v)), "module names (>= 1)"),
        ]


@dataclass(frozen=True)
class TrainConfig(_Validated):
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
            ("epochs", _positive, "at least 1 epoch (each epoch is one checkpoint)"),
            ("learning_rate", _positive, "a positive learning rate"),
            ("warmup_ratio", lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
            ("batch_size", _positive, "at least 1 example per step"),
            ("token_budget", _positive, "a positive number of tokens"),
            ("weight_decay", lambda v: v >= 0, "a value >= 0"),
            ("betas", lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
            ("eps", _positive, "a positive epsilon"),
        ]


@dataclass(frozen=True)
class WarmupConfig(_Validated):
    """The warmup run on a random subset of the pool (§4.1 step 1)."""

    fraction: float = 0.05
    """Share of the pool used for warmup training."""
    seed: int = 0
    """Seed of the warmup subset draw (the reference code ignored it; we do not)."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def _rules(self):
        return [("fraction", _fraction, "a share of the pool in (0, 1]")]


@dataclass(frozen=True)
class GradientConfig(_Validated):
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
    sketch_cache_mb: int | None = field(default=None, metadata=NOT_RECORDED)
    """MB of device memory the ``sparse_sign`` sketch may keep its hash tables in (4 bytes
    per non-zero: ``4 x sparse_nnz x P``, 2.1 GB for LoRA r=128 on a 7B model). ``None``
    (auto): enough for every block, up to 4096 MB; ``0``: no cache. Blocks beyond the cap
    are rehashed every batch: the same features, slower. Speed and memory only, so it is
    not recorded (not in ``to_dict``, fingerprints or store names)."""

    def _rules(self):
        return [
            ("proj_dim", _positive, "a positive dimension"),
            ("sparse_nnz", _positive, "at least 1 non-zero per coordinate"),
            ("token_budget", _positive, "a positive number of tokens"),
            ("max_batch_examples", _positive, "at least 1 example per batch"),
            (
                "sketch_cache_mb",
                lambda v: v is None or v >= 0,
                "None (auto: every block, up to 4096 MB) or a size in MB >= 0",
            ),
        ]

    def feature(self, split: str) -> FeatureKind:
        """The feature kind of ``split`` (``"pool"`` or a target name)."""
        return self.pool_feature if split == "pool" else self.target_feature


@dataclass(frozen=True)
class ScoreConfig(_Validated):
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

    def _rules(self):
        return [("chunk_rows", _positive, "at least 1 row per chunk")]


@dataclass(frozen=True)
class SelectConfig(_Validated):
    """How many examples to keep."""

    fraction: float | None = 0.05
    """Share of the pool to select (paper: 5%). Ignored when ``k`` is set."""
    k: int | None = None
    """Exact number of examples to select."""

    def _rules(self):
        return [
            ("fraction", lambda v: v is None or _fraction(v), "a share of the pool in (0, 1]"),
            ("k", lambda v: v is None or v >= 1, "at least 1 example"),
            ("fraction", lambda v: v is not None or self.k is not None, "fraction or k"),
        ]

    def size(self, n: int) -> int:
        """How many of ``n`` pool examples to keep (at least 1, the fraction rounded up as
        ``select_top`` does); ``k > n`` is refused."""
        if self.k is not None:
            if self.k > n:
                raise ConfigError(
                    f"select.k={self.k}: expected at most the pool size ({n})", key="select.k"
                )
            return self.k
        return max(1, math.ceil(self.fraction * n))


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


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})",
            key=unknown[0],
        )
    return cls(**data)  # nested dicts and lists are coerced by the field checks


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
