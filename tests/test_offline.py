"""Offline means offline: the demo's stages on the tiny model never open a connection,
even without ``HF_HUB_OFFLINE`` (PEFT and transformers look models up on the hub when
they are not told otherwise)."""

from __future__ import annotations

import socket

import pytest

from less_lab import (
    LoraSettings,
)
from less_lab.data.demo_pool import demo_pool, demo_targets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every attempt to connect or resolve a host raises, and is recorded."""
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what.endswith('connect') else args}")
            raise OSError(f"network blocked in this test: {what}")

        return blocked

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


def test_network_is_blocked_here(no_network) -> None:
    with pytest.raises(OSError, match="network blocked"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert no_network


def test_demo_stages_open_no_connection(tmp_path, tiny_model, make_tiny_lab, no_network):
    # What a model loaded by name carries: PEFT looks this id up on the hub when saving.
    tiny_model.name_or_path = "smollm2-135m"
    lab = make_tiny_lab(tmp_path / "run")
    lab.set_pool(demo_pool().head(40))
    lab.add_target("demo", demo_targets())
    assert len(lab.warmup()) == 2
    assert len(lab.datastore("pool")) == 2 and len(lab.datastore("demo")) == 2
    sel = lab.select("demo")
    assert sel.frame.height == 5
    assert no_network == [], f"network was attempted: {no_network}"


def _benchmark_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "datastore_throughput.py"
    spec = importlib.util.spec_from_file_location("datastore_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_checkpoint_is_saved_without_the_hub(tmp_path, tiny_model, no_network):
    from less_lab.model.lora import add_lora

    bench = _benchmark_module()
    tiny_model.name_or_path = "smollm2-135m"  # as load_model() names SmolLM2
    model = add_lora(tiny_model, LoraSettings(r=2, alpha=4, dropout=0.0))
    ckpt = bench.fake_checkpoint(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    assert ckpt.adam_state() is not None
    assert no_network == [], f"network was attempted: {no_network}"
