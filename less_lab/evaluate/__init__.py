"""Layer 4, evaluate: what a selection is worth once trained on.

Pure answer metrics (``metrics``), model calls (``inference``: log-likelihoods,
generation, held-out loss), the evaluators in the paper's formats (``evaluators``, with
the multiple-choice ones in ``choice_evals`` and the generative ones in
``generation_evals``) and
LoRA fine-tuning on a selection (``finetune``).

May import: the base modules, ``data``, ``model`` and ``core``; never ``checks`` (a
sibling layer), ``views`` or the facade.
"""
