"""less_lab: LESS data selection (Xia et al. 2024) by LoRA-gradient similarity.

Start with ``from less_lab import Lab`` (see ``lab.py``) or the ``less-lab`` command.
"""

__version__ = "0.1.0"

from less_lab.config import (  # noqa: E402
    DataConfig,
    GradientConfig,
    LoraSettings,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)


def __getattr__(name: str):
    """Heavy modules (torch, transformers) load only when first used."""
    if name == "Lab":
        from less_lab.lab import Lab

        return Lab
    if name == "load_model":
        from less_lab.model.loading import load_model

        return load_model
    raise AttributeError(name)


__all__ = [
    "Lab",
    "load_model",
    "DataConfig",
    "GradientConfig",
    "LoraSettings",
    "ScoreConfig",
    "SelectConfig",
    "TrainConfig",
    "WarmupConfig",
    "__version__",
]
