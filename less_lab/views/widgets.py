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

from collections.abc import Mapping

import ipywidgets as W
import polars as pl

from less_lab.views import frames, plots
from less_lab.views.base import BUTTONS, View, dropdown
from less_lab.views.curves import LengthBiasView, LossAccuracyView, SimilarityCurveView
from less_lab.views.frames import MAX_SUBTASK
from less_lab.views.html import conversation_html, esc, fmt, html_table


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
        n_max = max(n, min(100, scores.height if scores.height > 10_000 else
                               scores["example_id"].n_unique()))  # fmt: skip
        self.controls = {
            "subtask": dropdown("subtask", [MAX_SUBTASK, *frames.subtasks_of(scores)]),
            "direction": W.ToggleButtons(options=["top", "negative"], value="top", style=BUTTONS),
            "n": W.IntSlider(value=n, min=1, max=n_max, description="n", continuous_update=False),
            "example": dropdown("example", []),
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
                self.scores, self.pool, c["subtask"], c["n"], negative, rows=self.frame
            )
        )
        unit = "tokens" if self.tokenized is not None else "chars"
        cols = ["rank", "score", "example_id", "source", f"prompt_{unit}", f"completion_{unit}"]
        specs = {"score": "+.4f"}
        rows = [[fmt(r[c], specs.get(c, "")) for c in cols]
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
                f" · rank {fmt(r['rank'])} · score {fmt(r['score'], '+.4f')} · {esc(r['source'])}"
            )
        messages = frames.messages_for(self.pool, [example_id]).get(example_id)
        self.detail.value = f"<div><b>{esc(example_id)}</b>{info}</div>" + conversation_html(
            messages
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
        self._messages: dict[str, list] = {}
        self._target_messages = frames.messages_by_id(targets)
        subtask = (
            dict(zip(targets["example_id"], targets["subtask"], strict=True))
            if "subtask" in targets.columns
            else {}
        )
        options = [
            (f"{t} ({subtask[t]})" if t in subtask else str(t), t) for t in neighbors_by_target
        ]
        self.controls = {"target": dropdown("target", options)}
        self.detail = W.HTML()
        self._build(above=[self.detail])

    def update(self) -> None:
        target = self.controls["target"].value
        by_method = self.neighbors[target]
        self.detail.value = f"<div><b>Target {esc(target)}</b></div>" + conversation_html(
            self._target_messages.get(target)
        )
        self._draw(plots.neighbors_figure(by_method, self.pool))
        ranked = {m: plots.with_source(f, self.pool).sort("rank") for m, f in by_method.items()}
        shown = [i for f in ranked.values() for i in f["example_id"].to_list()]
        self._messages = frames.messages_for(self.pool, shown)
        depth = max((f.height for f in ranked.values()), default=0)
        rows = []
        for k in range(depth):
            rows.append([fmt(k + 1)] + [self._cell(f, k) for f in ranked.values()])
        self.table.value = html_table(["rank", *(esc(m) for m in ranked)], rows)

    def _cell(self, frame: pl.DataFrame, k: int) -> str:
        if k >= frame.height:
            return ""
        r = frame.row(k, named=True)
        text = frames.conversation_text(self._messages.get(r["example_id"]))
        return (
            f"<b>{esc(r['example_id'])}</b> {fmt(r['score'], '+.4f')} "
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
        self.controls = {"by": dropdown("by", groups)}
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
