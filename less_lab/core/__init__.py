"""Layer 3, core: the LESS method itself.

Warmup training (``training``), per-example gradient features (``gradients``), random
projections (``projection``: ``projection_base``, ``projection_sparse``,
``projection_dense``), the on-disk gradient datastore (``datastore`` with its files in
``store_files`` and per-rank shards in ``store_shards``, sharded by ``distributed``),
the stages as plain functions (``pipeline``), Eq. 2 scoring (``scoring``), selection
(``selection``; ``shaping`` for length quotas and near-duplicate suppression), a
stronger scorer without a store (``loss_drop``: CoLoR-Filter), why a gradient points
where it does (``contributions``), paired statistics against random (``paired``), the
baselines (``baselines``: ``baseline_common``, ``baseline_bm25``, ``baseline_dsir``,
``baseline_rds``), nearest pool examples of one target example (``neighbors``), the
memory plan of a store build (``plan``) and small shared statistics (``stats``).

May import: the base modules, ``less_lab.data`` and ``less_lab.model``.
"""
