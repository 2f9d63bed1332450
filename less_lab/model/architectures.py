"""Which modules of a causal LM get LoRA: the attention projections of its architecture.

The paper adapts the attention projections only (appendix A.2). Their names differ by
architecture: ``q_proj, k_proj, v_proj, o_proj`` (Llama, Mistral, Qwen2, Gemma, ...),
``qkv_proj, o_proj`` (Phi-3), ``q_proj, k_proj, v_proj, dense`` (Phi-2),
``query_key_value, dense`` (GPT-NeoX/Pythia, Falcon), ``q_proj, k_proj, v_proj, out_proj``
(OPT), ``c_attn, attn.c_proj`` (GPT-2, whose MLP has a ``c_proj`` too: the dotted suffix
keeps it out). ``LoraSettings.target_modules = ("auto",)`` resolves to these
(:data:`ATTENTION_PROJECTIONS` for the known model types, else the linear layers found
directly inside the model's attention modules); explicit names are taken as given, but a
name that matches no module is refused and attention projections they leave out are
named in a warning. Names follow PEFT's matching: a module matches a name when its path
is the name or ends with ``"." + name``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from less_lab.config import LoraSettings
from less_lab.errors import ConfigError

AUTO = "auto"
"""The ``LoraSettings.target_modules`` entry standing for the attention projections."""
_QKVO = ("k_proj", "o_proj", "q_proj", "v_proj")

ATTENTION_PROJECTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
        _QKVO,
    ),
    **dict.fromkeys(("cohere", "granite", "olmo", "olmo2", "starcoder2"), _QKVO),
    "phi3": ("o_proj", "qkv_proj"),
    "phi": ("dense", "k_proj", "q_proj", "v_proj"),
    "gpt_neox": ("dense", "query_key_value"),
    "falcon": ("dense", "query_key_value"),
    "gpt2": ("attn.c_proj", "c_attn"),
    "opt": ("k_proj", "out_proj", "q_proj", "v_proj"),
}
"""``model_type`` -> its attention projections (sorted), as LoRA target names."""


class LoraTargetWarning(UserWarning):
    """Configured LoRA targets leave some of the model's attention projections out."""


def _linear_like(module: torch.nn.Module) -> bool:
    """``nn.Linear`` (and subclasses such as Falcon's) or GPT-2's transposed ``Conv1D``."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def matches(path: str, name: str) -> bool:
    """PEFT's rule for a list of target names: the path is the name or ends with it."""
    return path == name or path.endswith("." + name)


def attention_paths(model: torch.nn.Module) -> list[str]:
    """Paths of the linear layers directly inside the model's attention modules (modules
    whose class name contains ``Attention``), in model order."""
    found = []
    for path, module in model.named_modules():
        if "Attention" in type(module).__name__:
            found += [
                f"{path}.{child}" if path else child
                for child, sub in module.named_children()
                if _linear_like(sub)
            ]
    return found


def discover_attention_projections(model: torch.nn.Module) -> tuple[str, ...]:
    """The attention projections as target names, read from the module tree: each
    linear layer's own name, or ``<attention>.<name>`` when a layer outside attention
    has the same name (GPT-2's ``mlp.c_proj``)."""
    inside = attention_paths(model)
    known = set(inside)
    outside = [p for p, m in model.named_modules() if _linear_like(m) and p not in known]
    names = set()
    for path in inside:
        parts = path.split(".")
        short = parts[-1]
        if any(matches(p, short) for p in outside) and len(parts) > 1:
            short = ".".join(parts[-2:])
        names.add(short)
    return tuple(sorted(names))


def attention_projections(model: torch.nn.Module) -> tuple[str, ...]:
    """The attention projections of ``model``'s architecture as LoRA target names: the
    table entry for its ``model_type``, else what the module tree shows."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ATTENTION_PROJECTIONS:
        return ATTENTION_PROJECTIONS[model_type]
    return discover_attention_projections(model)


def expand_targets(names: Iterable[str], attention: Iterable[str]) -> tuple[str, ...]:
    """``names`` with ``auto`` replaced by ``attention``, sorted, without duplicates."""
    names = set(names)
    if AUTO in names:
        names = (names - {AUTO}) | set(attention)
    return tuple(sorted(names))


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(set(items))) or "(none)"


def resolve_targets(model: torch.nn.Module, lora: LoraSettings) -> tuple[str, ...]:
    """The LoRA target names for ``model``: ``lora.target_modules`` with ``auto``
    replaced by the architecture's attention projections, sorted.

    Refused (``ConfigError``): a name that matches no module of the model (the error
    names the model's attention projections). Warned (``LoraTargetWarning``): attention
    projections no name matches, which would silently stay un-adapted."""
    targets = expand_targets(lora.target_modules, attention_projections(model))
    paths = [p for p, _ in model.named_modules() if p]
    attention = attention_paths(model)
    missing = [n for n in targets if not any(matches(p, n) for p in paths)]
    if missing:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(
            f"lora.target_modules: {_names(missing)} match no module of this {kind} model; "
            f"its attention projections are {_names(discover_attention_projections(model))}"
            f" (lora.target_modules=auto selects them)",
            key="lora.target_modules",
        )
    left_out = [p for p in attention if not any(matches(p, n) for n in targets)]
    if left_out:
        warnings.warn(
            f"lora.target_modules={','.join(targets)} leaves out the attention projections "
            f"{_names(p.rsplit('.', 1)[-1] for p in left_out)} "
            f"({len(left_out)} layers; lora.target_modules=auto adapts them all)",
            LoraTargetWarning,
            stacklevel=3,
        )
    return targets


def conv1d_targets(model: torch.nn.Module, targets: Iterable[str]) -> bool:
    """Whether every module the targets match is a ``Conv1D`` (weights stored (in, out):
    PEFT's ``fan_in_fan_out``)."""
    names = list(targets)
    hit = [m for p, m in model.named_modules() if any(matches(p, n) for n in names)]
    return bool(hit) and all(type(m).__name__ == "Conv1D" for m in hit)
