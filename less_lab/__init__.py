"""less_lab: LESS data selection (Xia et al. 2024) by LoRA-gradient similarity.

Start with ``from less_lab import Lab`` (see ``lab.py``) or the ``less-lab`` command.
Everything a notebook needs is importable from here; heavy modules (torch,
transformers, plotly) load on first use of a name, so ``import less_lab`` stays cheap.

The package is layered (each subpackage's docstring says what it holds and what it may
import): base modules (``config``, ``selection_config``, ``validation``, ``overrides``,
``errors``, ``layout``, ``_io``) → ``data`` → ``model`` → ``core`` → ``checks`` /
``evaluate`` → ``views`` → the facade (``compare``, ``inspection``, ``selecting``,
``explain`` → ``lab`` → ``demo`` → ``cli``).
"""

from __future__ import annotations

import importlib

from less_lab._version import __version__
from less_lab.config import (
    DataConfig,
    GradientConfig,
    LoraSettings,
    ScoreConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
    fingerprint,
)
from less_lab.errors import (
    ConfigError,
    DataError,
    LessLabError,
    SettingsMismatchError,
    StorageError,
    StoreCorruptError,
)
from less_lab.overrides import PRESETS, REMEDIES, build_configs

_LAZY = {
    # facade
    "Lab": "less_lab.lab",
    "Selection": "less_lab.lab",
    "compare": "less_lab.compare",
    "paper_table": "less_lab.compare",
    "demo_configs": "less_lab.demo",
    "run_demo": "less_lab.demo",
    "ReferenceRun": "less_lab.reference_run",
    "export_reference": "less_lab.reference_run",
    # data
    "read_pool": "less_lab.data.pool",
    "stratified_sample": "less_lab.data.pool",
    "read_targets": "less_lab.data.targets",
    "tokenize": "less_lab.data.formatting",
    "collate": "less_lab.data.batching",
    "demo_pool": "less_lab.data.demo_pool",
    "demo_targets": "less_lab.data.demo_pool",
    "DEMO_SKILLS": "less_lab.data.demo_pool",
    # model
    "load_model": "less_lab.model.loading",
    "tiny_llama": "less_lab.model.tiny",
    "tiny_tokenizer": "less_lab.model.tiny",
    "add_lora": "less_lab.model.lora",
    "lora_modules": "less_lab.model.lora",
    "block_names": "less_lab.model.lora",
    "block_shapes": "less_lab.model.lora",
    "example_losses": "less_lab.model.lora",
    # core
    "train_lora": "less_lab.core.training",
    "load_adapter": "less_lab.core.training",
    "stats_frame": "less_lab.core.datastore",
    "import_hf_checkpoint": "less_lab.core.hf_import",
    "read_reference_selection": "less_lab.core.reference",
    "scan_reference": "less_lab.core.reference_files",
    "plan": "less_lab.core.plan",
    "per_example_gradients": "less_lab.core.gradients",
    "to_features": "less_lab.core.gradients",
    "make_projector": "less_lab.core.projection",
    "data_fingerprint": "less_lab.core.pipeline",
    "aggregate": "less_lab.core.scoring",
    "select_top": "less_lab.core.selection",
    "select_balanced": "less_lab.core.selection",
    "random_scores": "less_lab.core.baselines",
    "bm25_scores": "less_lab.core.baselines",
    "dsir_scores": "less_lab.core.baselines",
    "last_token_states": "less_lab.core.baselines",
    "less_neighbors": "less_lab.core.neighbors",
    "bm25_neighbors": "less_lab.core.neighbors",
    "rds_neighbors": "less_lab.core.neighbors",
    "correlation": "less_lab.core.stats",
    "top_k": "less_lab.core.stats",
    # evaluate
    "make_eval": "less_lab.evaluate.evaluators",
    "finetune": "less_lab.evaluate.finetune",
    "validation_fn": "less_lab.evaluate.finetune",
    "frame_metrics": "less_lab.evaluate.finetune",
    "choice_logliks": "less_lab.evaluate.inference",
    "encode_prompts": "less_lab.evaluate.inference",
    "generate": "less_lab.evaluate.inference",
    "parse_bbh_answer": "less_lab.evaluate.metrics",
    "summarize": "less_lab.evaluate.metrics",
    # views
    "frames": "less_lab.views.frames",
    "plots": "less_lab.views.plots",
    "widgets": "less_lab.views.widgets",
    "token_figure": "less_lab.views.tokens",
    "token_html": "less_lab.views.tokens",
    "paired_figure": "less_lab.views.paired",
    "kind_shares": "less_lab.core.contributions",
    "module_summary": "less_lab.core.contributions",
    "beats_random": "less_lab.compare",
    "explore": "less_lab.views.widgets",
    "TopExamplesView": "less_lab.views.widgets",
    "SimilarityCurveView": "less_lab.views.widgets",
    "SubsetDistributionView": "less_lab.views.widgets",
    "LengthBiasView": "less_lab.views.widgets",
    "NeighborsView": "less_lab.views.widgets",
    "LossAccuracyView": "less_lab.views.widgets",
}
_MODULES = {"frames", "plots", "widgets"}


def __getattr__(name: str):
    """Heavy modules (torch, transformers, plotly) load only when a name is first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'less_lab' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    "PRESETS",
    "REMEDIES",
    "DataConfig",
    "GradientConfig",
    "LoraSettings",
    "ScoreConfig",
    "SelectConfig",
    "TrainConfig",
    "WarmupConfig",
    "build_configs",
    "fingerprint",
    "ConfigError",
    "DataError",
    "LessLabError",
    "SettingsMismatchError",
    "StorageError",
    "StoreCorruptError",
    *_LAZY,
]
