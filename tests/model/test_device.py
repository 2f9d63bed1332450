"""The device and dtype policy: settings resolved (or refused), models loaded straight onto
their device in their dtype, the fp32 CPU fingerprint unchanged, and the host read."""

from __future__ import annotations

import pytest
import torch

from less_lab.errors import ConfigError
from less_lab.model import device as dev
from less_lab.model.handle import ModelHandle
from less_lab.model.loading import load_model, model_fingerprint
from less_lab.model.tiny import tiny_llama


def test_resolve_device(monkeypatch):
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.is_available():
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert dev.resolve_device("auto") == torch.device("cuda", 0)
        assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    else:
        assert dev.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            dev.resolve_device("cuda:1")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            ModelHandle("x", device="cuda")  # refused when the Lab is built, not at load
    with pytest.raises(ConfigError, match="expected auto, cpu"):
        dev.resolve_device("tpu")


def test_resolve_dtype():
    assert dev.resolve_dtype("bfloat16") is torch.bfloat16
    assert dev.resolve_dtype(torch.float16) is torch.float16
    assert dev.resolve_dtype("torch.float32") is torch.float32
    with pytest.raises(ConfigError, match="float32"):
        dev.resolve_dtype("int8")


def test_to_host_and_host_float():
    x = torch.tensor([1.5, 2.25], dtype=torch.bfloat16, requires_grad=True)
    host = dev.to_host(x * 2)
    assert host.dtype == torch.float32 and not host.requires_grad and host.device.type == "cpu"
    assert dev.to_host(torch.tensor([1, 2])).dtype == torch.int64
    assert dev.to_host(torch.tensor([0.1], dtype=torch.float64)).dtype == torch.float64
    assert dev.host_float(x.sum()) == 3.75


def test_model_device_and_dtype(tiny_tokenizer):
    model = tiny_llama(tiny_tokenizer).to(torch.bfloat16)
    assert dev.model_device(model) == torch.device("cpu")
    assert dev.model_dtype(model) is torch.bfloat16
    assert dev.model_device(torch.nn.Module()) == torch.device("cpu")


def test_load_model_onto_device_in_dtype(tmp_path, tiny_tokenizer):
    """fp32 on the CPU: the fingerprint of a plain ``from_pretrained`` load (stores are keyed
    by it); bf16: read in bf16, another fingerprint."""
    from transformers import AutoModelForCausalLM

    tiny_llama(tiny_tokenizer).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    fp32, _ = load_model(str(tmp_path))
    assert model_fingerprint(fp32) == model_fingerprint(plain)
    assert not hasattr(fp32, "hf_device_map") or fp32.hf_device_map in (None, {"": "cpu"})
    bf16, _ = load_model(str(tmp_path), dtype="bfloat16", device="auto")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert dev.model_device(bf16) == dev.resolve_device("auto")
    assert model_fingerprint(bf16) != model_fingerprint(fp32)
    handle = ModelHandle(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    assert handle.placement == {"device": torch.device("cpu"), "dtype": "bfloat16"}
    assert dev.model_dtype(handle.loaded()) is torch.bfloat16
