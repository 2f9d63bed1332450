"""Interactive views of LESS results: ipywidgets controls + a plotly ``FigureWidget`` + a table.

Every view is a small class with the same shape, so notebooks and tests drive them alike:
``.controls`` (name -> ipywidget), ``.fig`` (``FigureWidget``), ``.table`` (``HTML``) and
``.widget`` (the box to display; displaying the view displays it). Control observers run
synchronously, so setting ``view.controls["n"].value = 5`` has already redrawn ``.fig``
and ``.table`` when it returns: tests assert on them directly, no browser needed.

Views only read frames (scores, selections, pool, lengths, stats, histories) and redraw
with :mod:`less_lab.plots`; they never recompute a pipeline stage. All dataset text is
escaped with ``html.escape`` before it enters HTML or a figure.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.graph_objects import FigureWidget  # imported eagerly: its first import is slow

from less_lab.views import frames, plots
from less_lab.views.frames import MAX_SUBTASK

ALL_SUBTASKS = "all"
BUTTONS = {"button_width": "auto"}
TABLE_STYLE = (
    "<style>.less-lab-table{border-collapse:collapse;font-size:12px}"
    ".less-lab-table th,.less-lab-table td{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}</style>"
)


def esc(value: object) -> str:
    """HTML-escaped ``str(value)`` for the widgets' HTML, quotes included (unlike
    :func:`less_lab.plots.esc`, which feeds Plotly, where ``&quot;`` would print literally)."""
    return html.escape("" if value is None else str(value), quote=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from header labels and cells that are ALREADY safe HTML: build each cell
    with :func:`esc` (or ``_fmt``) around every piece of data."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'{TABLE_STYLE}<table class="less-lab-table"><tr>{head}</tr>{body}</table>'


def _fmt(value: Any, spec: str = "") -> str:
    """Escaped cell text; numbers formatted with ``spec`` (None/NaN shown as an en dash)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if spec and isinstance(value, (int, float, np.number)):
        return esc(format(value, spec))
    return esc(value)


def conversation_html(messages: Sequence[Mapping[str, str]] | None) -> str:
    """The full example, every turn escaped, roles in bold, whitespace kept."""
    if not messages:
        return "<i>(text not available)</i>"
    turns = [
        f"<b>{esc(frames.ROLE_NAMES.get(m['role'], m['role']))}:</b> {esc(m['content'])}"
        for m in messages
    ]
    return (
        '<div style="white-space:pre-wrap;font-family:monospace;font-size:12px;'
        'max-height:400px;overflow:auto">' + "\n\n".join(turns) + "</div>"
    )


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


def _dropdown(description: str, options: Sequence, value: Any = None) -> W.Dropdown:
    options = list(options)
    first = options[0][1] if options and isinstance(options[0], tuple) else (options or [None])[0]
    return W.Dropdown(
        options=options,
        value=first if value is None else value,
        description=description,
        style={"description_width": "initial"},
    )


class TopExamplesView(View):
    """Top (or most negative, appendix K.2) pool examples for a subtask or for the max over
    subtasks: bars of their scores, a table of rank, score, source, lengths and text, and
    the full text of the example picked in ``example`` in ``.detail``."""

    def __init__(
        self,
        scores: pl.DataFrame,
        pool: pl.DataFrame,
        tokenized: pl.DataFrame | None = None,
        n: int = 10,
        *,
        text_chars: int = 160,
    ):
        self.scores, self.pool, self.tokenized = scores, pool, tokenized
        self.text_chars = text_chars
        self._messages = frames.messages_by_id(pool)
        n_max = max(n, min(100, scores["example_id"].n_unique()))
        self.controls = {
            "subtask": _dropdown("subtask", [MAX_SUBTASK, *frames.subtasks_of(scores)]),
            "direction": W.ToggleButtons(options=["top", "negative"], value="top", style=BUTTONS),
            "n": W.IntSlider(value=n, min=1, max=n_max, description="n", continuous_update=False),
            "example": _dropdown("example", []),
        }
        self.detail = W.HTML()
        self.frame = pl.DataFrame()
        self._busy = False
        self._build(below=[self.detail], redraw_on=["subtask", "direction", "n"])
        self.controls["example"].observe(lambda ch: self.show_example(ch["new"]), names="value")

    def update(self) -> None:
        if self._busy:
            return
        c = {k: w.value for k, w in self.controls.items()}
        negative = c["direction"] == "negative"
        rows = frames.top_examples(self.scores, c["subtask"], c["n"], negative)
        self.frame = frames.with_examples(rows, self.pool, self.tokenized)
        self._draw(
            plots.top_examples_figure(
                self.scores, self.pool, c["subtask"], c["n"], negative, tokenized=self.tokenized
            )
        )
        unit = "tokens" if self.tokenized is not None else "chars"
        cols = ["rank", "score", "example_id", "source", f"prompt_{unit}", f"completion_{unit}"]
        specs = {"score": "+.4f"}
        rows = [[_fmt(r[c], specs.get(c, "")) for c in cols]
                + [esc(plots.shorten(r["text"], self.text_chars))]
                for r in self.frame.iter_rows(named=True)]  # fmt: skip
        header = ["rank", "score", "example", "source", f"prompt {unit}", f"completion {unit}"]
        self.table.value = html_table([*header, "text"], rows)
        self._set_examples()

    def _set_examples(self) -> None:
        """Offer the shown ids in ``example``, keeping the current pick when still shown."""
        picker = self.controls["example"]
        options = [(f"{r}. {i}", i) for r, i in self.frame.select("rank", "example_id").iter_rows()]
        keep = picker.value if picker.value in {i for _, i in options} else None
        self._busy = True
        try:
            picker.options = options
            picker.value = keep if keep is not None else (options[0][1] if options else None)
        finally:
            self._busy = False
        self.show_example(picker.value)

    def show_example(self, example_id: str | None) -> None:
        """Full text of one example in ``.detail`` (also called when ``example`` changes)."""
        if example_id is None:
            self.detail.value = ""
            return
        row = self.frame.filter(pl.col("example_id") == example_id)
        info = ""
        if row.height:
            r = row.row(0, named=True)
            info = (
                f" · rank {_fmt(r['rank'])} · score {_fmt(r['score'], '+.4f')} · {esc(r['source'])}"
            )
        self.detail.value = f"<div><b>{esc(example_id)}</b>{info}</div>" + conversation_html(
            self._messages.get(example_id)
        )


class NeighborsView(View):
    """Each method's nearest pool examples to one chosen target example, side by side
    (paper Tables 16-18); ``.detail`` shows the target example itself."""

    def __init__(
        self,
        neighbors_by_target: Mapping[str, Mapping[str, pl.DataFrame]],
        pool: pl.DataFrame,
        targets: pl.DataFrame,
        *,
        text_chars: int = 200,
    ):
        if not neighbors_by_target:
            raise ValueError("neighbors_by_target is empty: compute neighbors for a target first")
        self.neighbors, self.pool, self.targets = neighbors_by_target, pool, targets
        self.text_chars = text_chars
        self._messages = frames.messages_by_id(pool)
        self._target_messages = frames.messages_by_id(targets)
        subtask = (
            dict(zip(targets["example_id"], targets["subtask"], strict=True))
            if "subtask" in targets.columns
            else {}
        )
        options = [
            (f"{t} ({subtask[t]})" if t in subtask else str(t), t) for t in neighbors_by_target
        ]
        self.controls = {"target": _dropdown("target", options)}
        self.detail = W.HTML()
        self._build(above=[self.detail])

    def update(self) -> None:
        target = self.controls["target"].value
        by_method = self.neighbors[target]
        self.detail.value = f"<div><b>Target {esc(target)}</b></div>" + conversation_html(
            self._target_messages.get(target)
        )
        self._draw(plots.neighbors_figure(by_method, self.pool))
        frames = {m: plots.with_source(f, self.pool).sort("rank") for m, f in by_method.items()}
        depth = max((f.height for f in frames.values()), default=0)
        rows = []
        for k in range(depth):
            rows.append([_fmt(k + 1)] + [self._cell(f, k) for f in frames.values()])
        self.table.value = html_table(["rank", *(esc(m) for m in frames)], rows)

    def _cell(self, frame: pl.DataFrame, k: int) -> str:
        if k >= frame.height:
            return ""
        r = frame.row(k, named=True)
        text = frames.conversation_text(self._messages.get(r["example_id"]))
        return (
            f"<b>{esc(r['example_id'])}</b> {_fmt(r['score'], '+.4f')} "
            f"<i>{esc(r['source'])}</i><br>{esc(plots.shorten(text, self.text_chars))}"
        )


class SubsetDistributionView(View):
    """Share of each pool source (or skill/form, when the pool has them) in each method's
    selection (appendix K.3), as stacked bars and as a count/percent table."""

    def __init__(
        self,
        selections: Mapping[str, pl.DataFrame],
        pool: pl.DataFrame,
        *,
        include_pool: bool = False,
    ):
        self.selections, self.pool, self.include_pool = selections, pool, include_pool
        groups = [c for c in ("source", "skill", "form") if c in pool.columns]
        if not groups:
            raise ValueError("pool has no source/skill/form column to group by")
        self.controls = {"by": _dropdown("by", groups)}
        self.shares = pl.DataFrame()
        self._build()

    def update(self) -> None:
        by = self.controls["by"].value
        self.shares = frames.subset_shares(self.selections, self.pool, by, self.include_pool)
        self._draw(
            plots.subset_distribution_figure(self.selections, self.pool, by, self.include_pool)
        )
        methods = list(frames.selections_with_pool(self.selections, self.pool, self.include_pool))
        cells = {(m, g): (c, s) for m, g, c, s in self.shares.iter_rows()}
        groups = sorted(self.shares[by].unique().to_list())
        rows = [[esc(g)] + [self._cell(cells.get((m, g))) for m in methods] for g in groups]
        self.table.value = html_table([esc(by), *(esc(m) for m in methods)], rows)

    @staticmethod
    def _cell(count_share: tuple[int, float] | None) -> str:
        count, share = count_share or (0, 0.0)
        return f"{count} ({share:.1%})"


class LengthBiasView(View):
    """Completion lengths of each method's selection (Table 13: dot product picks short
    completions) or, with ``stats``, gradient and update norms against length (Figures 3-4)."""

    def __init__(
        self,
        selections: Mapping[str, pl.DataFrame],
        tokenized_pool: pl.DataFrame,
        stats: pl.DataFrame | None = None,
        *,
        include_pool: bool = False,
    ):
        self.selections, self.tokenized, self.stats = selections, tokenized_pool, stats
        self.include_pool = include_pool
        kinds = ["selected lengths"] + (["norm vs length"] if stats is not None else [])
        self.controls = {"kind": W.ToggleButtons(options=kinds, value=kinds[0], style=BUTTONS)}
        self._build()

    def update(self) -> None:
        if self.controls["kind"].value == "norm vs length":
            self._draw(plots.norm_vs_length_figure(self.stats, self.tokenized))
            data = self.stats.join(
                self.tokenized.select("example_id", "n_completion_tokens"),
                on="example_id",
                how="inner",
            )
            rows = [
                [
                    esc(col),
                    _fmt(data.height),
                    _fmt(frames.spearman(data["n_completion_tokens"], data[col]), "+.3f"),
                ]
                for col in ("grad_norm", "feature_norm")
            ]
            self.table.value = html_table(["norm", "examples", "Spearman ρ with length"], rows)
            return
        self._draw(
            plots.length_bias_figure(
                self.selections, self.tokenized, include_pool=self.include_pool
            )
        )
        lengths = frames.selected_lengths(
            self.selections, self.tokenized, include_pool=self.include_pool
        )
        summary = lengths.group_by("method", maintain_order=True).agg(
            pl.len().alias("n"),
            pl.col("length").mean().alias("mean"),
            pl.col("length").median().alias("median"),
        )
        rows = [
            [esc(m), _fmt(n), _fmt(mean, ".1f"), _fmt(med, ".1f")]
            for m, n, mean, med in summary.iter_rows()
        ]
        self.table.value = html_table(
            ["method", "selected", "mean completion tokens", "median"], rows
        )


class LossAccuracyView(View):
    """Validation loss against a chosen metric over fine-tuning epochs, per method
    (appendix I); the table puts the lowest-loss epoch next to the best-metric epoch."""

    def __init__(self, histories: Mapping[str, pl.DataFrame], *, loss: str = "val_loss"):
        self.histories, self.loss = histories, loss
        metrics = plots.metric_columns(histories, loss)
        if not metrics:
            raise ValueError(f"histories have no numeric column besides epoch/step/lr/{loss}")
        default = next((m for m in metrics if m != "train_loss"), metrics[0])
        self.controls = {"metric": _dropdown("metric", metrics, default)}
        self._build()

    def update(self) -> None:
        metric = self.controls["metric"].value
        self._draw(plots.loss_accuracy_figure(self.histories, metric, self.loss))
        maximize = "loss" not in metric
        rows = []
        for method, h in self.histories.items():
            cols = [self.loss, metric]
            h = h.with_columns(pl.col(cols).cast(pl.Float64).fill_nan(None)).drop_nulls(cols)
            if h.is_empty():
                rows.append([esc(method)] + ["–"] * 5)
                continue
            low = h.sort([self.loss, "epoch"]).row(0, named=True)
            best = h.sort([metric, "epoch"], descending=[maximize, False]).row(0, named=True)
            rows.append([esc(method), _fmt(low["epoch"]), _fmt(low[self.loss], ".4f"),
                         _fmt(low[metric], ".4f"), _fmt(best["epoch"]),
                         _fmt(best[metric], ".4f")])  # fmt: skip
        loss, metric = esc(self.loss), esc(metric)
        header = ["method", f"lowest {loss} epoch", loss, f"{metric} there",
                  f"best {metric} epoch", f"best {metric}"]  # fmt: skip
        self.table.value = html_table(header, rows)


class SimilarityCurveView(View):
    """Sorted similarity of the pool to each target subtask (appendix J, Figure 9)."""

    def __init__(self, scores: pl.DataFrame):
        self.scores = scores
        self.subtasks = frames.subtasks_of(scores)
        options = [ALL_SUBTASKS, *self.subtasks, MAX_SUBTASK]
        self.controls = {"subtask": _dropdown("subtask", options)}
        self._build()

    def shown(self) -> list[str]:
        """Subtasks drawn for the current choice."""
        choice = self.controls["subtask"].value
        return self.subtasks if choice == ALL_SUBTASKS else [choice]

    def update(self) -> None:
        shown = self.shown()
        self._draw(plots.similarity_curve_figure(self.scores, shown))
        rows = []
        for name in shown:
            s = frames.sorted_similarities(self.scores, name)
            if not len(s):
                rows.append([esc(name), "0"] + ["–"] * 4)
                continue
            stats = [(s[0], "+.4f"), (float(np.median(s)), "+.4f"), (s[-1], "+.4f"),
                     (float((s < 0).mean()), ".1%")]  # fmt: skip
            rows.append([esc(name), _fmt(len(s))] + [_fmt(v, spec) for v, spec in stats])
        self.table.value = html_table(
            ["subtask", "examples", "max", "median", "min", "share < 0"], rows
        )


def explore(
    scores: pl.DataFrame,
    selection: pl.DataFrame,
    pool: pl.DataFrame,
    *,
    targets: pl.DataFrame | None = None,
    selections: Mapping[str, pl.DataFrame] | None = None,
    histories: Mapping[str, pl.DataFrame] | None = None,
    neighbors: Mapping[str, Mapping[str, pl.DataFrame]] | None = None,
    tokenized: pl.DataFrame | None = None,
    pool_stats: pl.DataFrame | None = None,
) -> W.Tab:
    """A tab per view that the given frames have data for (``Lab.explore`` gathers them
    from a run directory).

    ``scores`` (long, one row per example and subtask) and ``selection`` (LESS's pick)
    make the top-examples, similarity and subset views; ``selections`` adds other
    methods' selections (e.g. baselines) next to LESS; ``tokenized`` (pool token counts)
    adds the length view, with the norm-vs-length plot when ``pool_stats`` (a store's
    per-example stats) is given; ``neighbors`` (target id -> method -> frame, from
    :mod:`less_lab.core.neighbors`, with ``targets``) adds the neighbors view;
    ``histories`` (method -> fine-tuning history) adds the loss/accuracy view."""
    chosen = {"LESS": selection, **(selections or {})}
    views: dict[str, View] = {
        "Top examples": TopExamplesView(scores, pool, tokenized),
        "Similarity": SimilarityCurveView(scores),
        "Subsets": SubsetDistributionView(chosen, pool, include_pool=True),
    }
    if tokenized is not None:
        views["Lengths"] = LengthBiasView(chosen, tokenized, pool_stats, include_pool=True)
    if neighbors and targets is not None:
        views["Neighbors"] = NeighborsView(neighbors, pool, targets)
    if histories:
        views["Loss vs accuracy"] = LossAccuracyView(histories)
    tab = W.Tab(children=[v.widget for v in views.values()])
    tab.titles = tuple(views)
    tab.views = views  # the view objects, for tests and further use
    return tab
