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


class ModelHandle:
    """The base model, its tokenizer and fingerprint, and the LoRA-wrapped model."""

    def __init__(
        self, name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
    ):
        self.name = name
        self.device = resolve_device(device)  # a bad or unavailable device is refused now
        self.dtype = dtype_name(resolve_dtype(dtype))
        self._model: Any = None
        self._tokenizer: Any = None
        self._peft: Any = None
        self.fingerprint = ""

    def _load(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = load_model(
                self.name, dtype=self.dtype, device=self.device
            )
            self.fingerprint = model_fingerprint(self._model)

    @property
    def placement(self) -> dict[str, Any]:
        """``{"device": ..., "dtype": ...}`` as given (what a copy of the Lab passes on)."""
        return {"device": self.device, "dtype": self.dtype}

    def use(self, model: Any, tokenizer: Any) -> None:
        """Use an in-memory model instead of loading ``name`` (it stays where it is)."""
        self._model, self._tokenizer, self._peft = model, tokenizer, None
        self.fingerprint = model_fingerprint(model)

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._tokenizer

    def peft(self, lora: LoraSettings, seed: int) -> Any:
        """The model with its LoRA adapter (made on first call, then the same object)."""
        self._load()
        if self._peft is None:
            self._peft = add_lora(self._model, lora, seed=seed)
        return self._peft

    def loaded(self) -> Any:
        """The model as it is now: LoRA-wrapped once ``peft`` was called, else the base."""
        self._load()
        return self._peft if self._peft is not None else self._model

    def copy_for(self, name: str | None = None) -> ModelHandle:
        """A handle sharing this one's loaded model and wrapper (same settings)."""
        other = ModelHandle(name or self.name, self.device, self.dtype)
        other._model, other._tokenizer, other._peft = self._model, self._tokenizer, self._peft
        other.fingerprint = self.fingerprint
        return other
