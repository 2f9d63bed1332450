"""Layer 2, model: loading a causal LM and the LoRA plumbing around it.

``architectures`` (the LoRA targets of an architecture: ``auto`` = its attention
projections, names matching nothing refused), ``device`` (the one device and dtype
policy: resolving ``auto``/``cuda:i``/``bfloat16``, the model's device, and ``to_host``,
the one way stages read results back), ``handle`` (a model loaded on first use and
wrapped with LoRA once), ``loading`` (the embedded SmolLM2 or any local Hugging Face
model, straight onto its device in its dtype), ``lora`` (attach adapters, stable block
names, the completion-only loss through the model's own head path) and ``tiny`` (a tiny
random Llama, and every covered architecture, with a tokenizer, for tests and teaching).

May import: the base modules and ``less_lab.data``.
"""
