"""Layer 5, views: pictures of frames.

``frames`` builds the small frames a view shows (pure polars), ``plots`` turns frames into
static plotly figures (``tokens``: a gradient's per-token shares; ``paired``: the
beats-random forest plot), ``html`` escapes text for the widgets' tables, ``base`` /
``curves`` / ``widgets`` wrap figures and tables in ipywidgets. Views take frames: they
never open a datastore, train, load a model or touch a ``Lab`` (the facade gathers the
frames and hands them over).

May import: the base modules, ``data`` and the pure helpers of ``core.scoring`` /
``core.stats`` / ``core.paired``; never ``core.datastore``, ``core.pipeline``, ``core.training``,
``model.loading`` or the facade.
"""
