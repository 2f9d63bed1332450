"""Layer 3, core: the LESS method itself.

Warmup training (``training``), per-example gradient features (``gradients``), random
projections (``projection``), the on-disk gradient datastore (``datastore``, sharded by
``distributed``), the stages as plain functions (``pipeline``), Eq. 2 scoring
(``scoring``), selection (``selection``), the baselines (``baselines``) and nearest pool
examples of one target example (``neighbors``).

May import: the base modules, ``less_lab.data`` and ``less_lab.model``.
"""
