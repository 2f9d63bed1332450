"""Safe HTML for the widgets' tables and example panes.

Dataset text is untrusted: every piece of data goes through :func:`esc` (quotes included)
before it enters HTML; :func:`html_table` takes cells that are already safe. Kept apart
from the widgets so the escaping rules live in one short module that a reviewer can read
whole.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from less_lab.views import frames

TABLE_STYLE = (
    "<style>.less-lab-table{border-collapse:collapse;font-size:12px}"
    ".less-lab-table th,.less-lab-table td{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}</style>"
)


def esc(value: object) -> str:
    """HTML-escaped ``str(value)`` for the widgets' HTML, quotes included (unlike
    :func:`less_lab.plots.esc`, which feeds Plotly, where ``&quot;`` would print literally)."""
    return html.escape("" if value is None else str(value), quote=True)


TABLE_ROWS = 200
"""Rows a table shows at most; the rest are counted in a last line (a page at a time)."""


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, max_rows: int = TABLE_ROWS
) -> str:
    """A table from header labels and cells that are ALREADY safe HTML: build each cell
    with :func:`esc` (or ``fmt``) around every piece of data. Only the first ``max_rows``
    rows are sent; a last line says how many more there are."""
    head = "".join(f"<th>{h}</th>" for h in header)
    shown = rows[:max_rows]
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in shown)
    if len(rows) > len(shown):
        more = f"… {len(rows) - len(shown):,} more rows (first {len(shown):,} shown)"
        body += f'<tr><td colspan="{max(len(header), 1)}"><i>{more}</i></td></tr>'
    return f'{TABLE_STYLE}<table class="less-lab-table"><tr>{head}</tr>{body}</table>'


def fmt(value: Any, spec: str = "") -> str:
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
