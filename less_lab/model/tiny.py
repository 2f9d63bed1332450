"""A tiny tokenizer and tiny random models (Llama, and every architecture the tests cover),
built in-process in well under a second.

Why: unit tests and teaching notebooks need a real ``transformers`` model and tokenizer
(same classes, same code paths as SmolLM2) without downloading anything and without the
~15 s first load of the embedded GGUF model. Everything here is deterministic: the corpus
is generated from fixed word lists, the BPE trainer is deterministic for a fixed corpus,
and the model weights are drawn from a seeded generator.
"""

from __future__ import annotations

import itertools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""User/assistant turns: ``<|role|>\\ncontent`` per turn, assistant turns end with EOS.

Deliberately close to the ``tulu`` format so tests can compare the two chat formats."""

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our model", "the robot"]
_VERBS = ["reads", "writes", "answers", "solves", "counts", "explains", "selects"]
_OBJECTS = ["a book", "the question", "two problems", "the data", "a short story", "math"]
_ENDINGS = [".", "!", "?", ", then stops.", "; it works.", " (quickly)."]
_QUESTIONS = [
    "What is {a} plus {b}?",
    "How many apples are left if you have {a} and eat {b}?",
    "Explain why {a} is larger than {b}.",
    "Write a sentence about the number {a}.",
]


def _corpus() -> list[str]:
    """A few hundred deterministic English sentences with digits, punctuation and the
    ``<|user|>`` / ``<|assistant|>`` markers as ordinary text."""
    lines = []
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS)
    for i, (subj, verb, obj) in enumerate(combos):
        ending = _ENDINGS[i % len(_ENDINGS)]
        lines.append(f"{subj.capitalize()} {verb} {obj}{ending}")
    for i, template in enumerate(_QUESTIONS * 20):
        a, b = (7 * i + 3) % 100, (13 * i + 5) % 50
        q = template.format(a=a, b=b)
        lines.append(f"<|user|>\n{q}\n<|assistant|>\nThe answer is {a + b}.")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -5 + - * / = % # @ & ' \" : ; ( ) [ ]")
    return lines


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus.

    Byte-level means any text (including untrusted unicode) round-trips exactly, like the
    real SmolLM2 tokenizer. Special tokens: ``<s>`` (bos), ``</s>`` (eos), ``<pad>``
    (pad, distinct from eos so padding can never be confused with an end of answer) and
    ``<unk>``. Padding is on the right.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama sized for ``tokenizer``, in eval mode.

    Uses grouped-query attention (``kv_heads < heads``) like SmolLM2, so code paths that
    depend on k/v projection shapes are exercised. Same seed, same weights.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(torch.float32)
    model.eval()
    return model


_DIMS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_GQA = {**_DIMS, "intermediate_size": 128, "num_key_value_heads": 2}
TINY_ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaForCausalLM", _GQA),
    "mistral": ("MistralForCausalLM", _GQA),
    "qwen2": ("Qwen2ForCausalLM", _GQA),
    "gemma": ("GemmaForCausalLM", {**_GQA, "head_dim": 16}),
    # soft-capping at 1 (Gemma2 ships 30): large enough an effect on tiny logits that a
    # loss skipping it is caught
    "gemma2": ("Gemma2ForCausalLM", {**_GQA, "head_dim": 16, "final_logit_softcapping": 1.0}),
    "phi3": ("Phi3ForCausalLM", _GQA),
    "phi": ("PhiForCausalLM", {**_DIMS, "intermediate_size": 128}),
    "gpt_neox": ("GPTNeoXForCausalLM", {**_DIMS, "intermediate_size": 128}),
    "gpt2": ("GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}),
    "opt": ("OPTForCausalLM", {**_DIMS, "ffn_dim": 128, "word_embed_proj_dim": 64}),
    "falcon": ("FalconForCausalLM", _DIMS),
    "cohere": ("CohereForCausalLM", _GQA),  # logits * logit_scale (0.0625)
    "granite": ("GraniteForCausalLM", {**_GQA, "logits_scaling": 8.0}),  # logits / 8
}
"""``model_type`` -> (``transformers`` class, tiny config) of the architectures the tests
cover (README "Models and tokenizers covered")."""


def tiny_causal_lm(model_type: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """A randomly initialised fp32 2-layer model of architecture ``model_type`` (a key of
    :data:`TINY_ARCHITECTURES`) sized for ``tokenizer``, in eval mode, built offline from
    its config. Same seed, same weights."""
    import transformers

    if model_type not in TINY_ARCHITECTURES:
        raise ValueError(f"no tiny {model_type!r}; known: {', '.join(TINY_ARCHITECTURES)}")
    class_name, dims = TINY_ARCHITECTURES[model_type]
    model_class = getattr(transformers, class_name)
    config = model_class.config_class(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.to(torch.float32)
    model.eval()
    return model
