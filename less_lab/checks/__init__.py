"""Layer 4, checks: when to trust a selection.

Split-half projection reliability (``reliability``), Adam preconditioner health
(``adam_health``) and the combined report (``diagnostics``).

May import: the base modules, ``data``, ``model`` and ``core``; never ``evaluate`` (a
sibling layer), ``views`` or the facade.
"""
