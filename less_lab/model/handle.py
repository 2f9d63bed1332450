"""A selection model loaded on first use, with its LoRA wrapper made once.

The facade (``Lab``) holds one: loading a 7B model is the slowest thing a notebook does,
so it happens only when a stage needs the model, and a model built in memory (a tiny
random one in tests, one the user already loaded) can stand in for the named one. A named
model is loaded straight onto ``device`` in ``dtype``; an in-memory one stays where it is.
"""

from __future__ import annotations

from typing import Any

import torch

from less_lab.config import LoraSettings
from less_lab.model.device import dtype_name, resolve_device, resolve_dtype
from less_lab.model.loading import load_model, model_fingerprint
from less_lab.model.lora import add_lora


class _Loaded:
    """What a handle and its copies share: the model, tokenizer, fingerprint and the
    LoRA wrapper (one object, so that a wrapper made through any copy is seen by all)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.peft: Any = None
        self.fingerprint = ""


class ModelHandle:
    """The base model, its tokenizer and fingerprint, and the LoRA-wrapped model."""

    def __init__(
        self, name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
    ):
        self.name = name
        self.device = resolve_device(device)  # a bad or unavailable device is refused now
        self.dtype = dtype_name(resolve_dtype(dtype))
        self._shared = _Loaded()

    def _load(self) -> None:
        s = self._shared
        if s.model is None:
            s.model, s.tokenizer = load_model(self.name, dtype=self.dtype, device=self.device)
            s.fingerprint = model_fingerprint(s.model)

    @property
    def fingerprint(self) -> str:
        return self._shared.fingerprint

    @property
    def placement(self) -> dict[str, Any]:
        """``{"device": ..., "dtype": ...}`` as given (what a copy of the Lab passes on)."""
        return {"device": self.device, "dtype": self.dtype}

    def use(self, model: Any, tokenizer: Any) -> None:
        """Use an in-memory model instead of loading ``name`` (it stays where it is); this
        handle stops sharing with its copies."""
        self._shared = _Loaded()
        self._shared.model, self._shared.tokenizer = model, tokenizer
        self._shared.fingerprint = model_fingerprint(model)

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._shared.tokenizer

    def peft(self, lora: LoraSettings, seed: int) -> Any:
        """The model with its LoRA adapter (made on first call, then the same object)."""
        self._load()
        if self._shared.peft is None:
            self._shared.peft = add_lora(self._shared.model, lora, seed=seed)
        return self._shared.peft

    def loaded(self) -> Any:
        """The model as it is now: LoRA-wrapped once ``peft`` was called (through this
        handle or a copy), else the base."""
        self._load()
        return self._shared.peft if self._shared.peft is not None else self._shared.model

    def copy_for(self, name: str | None = None) -> ModelHandle:
        """A handle sharing this one's model, tokenizer and LoRA wrapper (loaded or not
        yet: whichever loads or wraps first, both see it)."""
        other = ModelHandle(name or self.name, self.device, self.dtype)
        other._shared = self._shared
        return other
