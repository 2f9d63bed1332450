"""The shape every interactive view shares: controls, a plotly ``FigureWidget``, an HTML
table and the box to display, redrawn synchronously when a control moves (so tests drive
views without a browser)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
from plotly.graph_objects import FigureWidget  # imported eagerly: its first import is slow

ALL_SUBTASKS = "all"
BUTTONS = {"button_width": "auto"}


class View:
    """Common shape of the views: controls, figure, table, and display delegation."""

    controls: dict[str, W.ValueWidget]
    fig: FigureWidget | None = None
    table: W.HTML | None = None
    widget: W.Box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def update(self) -> None:
        """Redraw figure and table from the controls' current values."""
        raise NotImplementedError

    def _draw(self, figure: go.Figure) -> None:
        """Show ``figure`` in ``self.fig`` (created on first draw, then updated in place so
        the displayed widget stays the same object)."""
        if self.fig is None:
            self.fig = FigureWidget(figure)
            return
        with self.fig.batch_update():
            self.fig.data = []
            self.fig.add_traces(list(figure.data))
            self.fig.layout = figure.layout

    def _build(
        self,
        above: Sequence[W.Widget] = (),
        below: Sequence[W.Widget] = (),
        redraw_on: Sequence[str] | None = None,
    ) -> None:
        """First draw, observers that redraw on the ``redraw_on`` controls (default: all),
        and the displayed box: controls, ``above``, figure, table, ``below``."""
        self.table = W.HTML()
        self.update()
        for name in self.controls if redraw_on is None else redraw_on:
            self.controls[name].observe(lambda _change: self.update(), names="value")
        bar = W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap"))
        parts = [bar, *above, self.fig, self.table, *below]
        self.widget = W.VBox([p for p in parts if p is not None])


def dropdown(description: str, options: Sequence, value: Any = None) -> W.Dropdown:
    options = list(options)
    first = options[0][1] if options and isinstance(options[0], tuple) else (options or [None])[0]
    return W.Dropdown(
        options=options,
        value=first if value is None else value,
        description=description,
        style={"description_width": "initial"},
    )
