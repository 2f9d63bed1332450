"""Layer 1, data: everything that reads examples and turns them into token ids.

Pool readers (``pool``), target readers in the LESS layouts (``targets``), test-set
readers for the evaluators (``evalsets``), chat formatting and tokenization
(``formatting``; ``encoding`` encodes the whole text once, as open-instruct does),
token-budget batching (``batching``) and the embedded demo pool (``demo_pool``, built
from ``demo_skills`` and ``demo_words``).

May import: the base modules (``less_lab.config``, ``errors``, ``layout``, ``_io``) only.
No torch model code lives here (``batching`` builds tensors, nothing more).
"""
