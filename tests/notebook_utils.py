"""Helpers shared by the notebook tests: a kernel on this venv, headless execution, and
what the outputs of an executed notebook contain.

Why a kernelspec of our own: the ``python3`` kernelspec runs whatever ``python`` is first
on PATH, which need not be the interpreter that has less_lab installed. A spec written to
a temporary ``JUPYTER_PATH`` entry that names ``sys.executable`` makes nbclient and
JupyterLab run the notebooks with exactly the Python running the tests.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "python3"
"""The notebooks' own kernelspec name, shadowed by our spec (JUPYTER_PATH wins)."""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PLOTLY = "application/vnd.plotly.v1+json"
RUN_DIR_ENV = "LESS_LAB_RUN_DIR"
DATA_DIR_ENV = "LESS_LAB_DATA_DIR"
CHECK_TAG = "check"
"""Tag of the hidden last cell of every notebook that asserts on what the notebook showed."""
_IPYTHON_LINE = re.compile(r"^\s*[%!?]")


def notebooks() -> list[Path]:
    """Every notebook shipped in ``notebooks/``, in name order (01 first)."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def read_json(path: Path) -> dict:
    """The raw notebook JSON (no nbformat upgrade, validation or kernel): for static checks."""
    return json.loads(path.read_text(encoding="utf-8"))


def cell_source(cell: dict) -> str:
    """A cell's source as one string (stored either as a string or as a list of lines)."""
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """``(cell index, source)`` of every code cell of a raw notebook."""
    return [(i, cell_source(c)) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def parse_cell(source: str) -> ast.Module:
    """A code cell's syntax tree; IPython magics and shell lines (``%``, ``!``, ``?``)
    become blank lines so line numbers stay right."""
    lines = ["" if _IPYTHON_LINE.match(line) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def write_kernelspec(root: Path) -> Path:
    """Write ``<root>/kernels/python3/kernel.json`` running ``sys.executable``; return
    ``root``, to be put first on ``JUPYTER_PATH``."""
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (less_lab tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return root


def execute_notebook(path: Path, *, cwd: Path | None = None, timeout: int = 900):
    """Run every cell of ``path`` headless (nbclient, widget state stored) in ``cwd``
    (default: the notebook's directory, as Jupyter would). Returns ``(notebook, seconds)``.
    Raises ``nbclient.exceptions.CellExecutionError`` naming the failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=timeout,
        store_widget_state=True,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def outputs(nb) -> Iterator[tuple[int, dict]]:
    """``(cell index, output)`` for every output of every code cell."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                yield i, out


def error_outputs(nb) -> list[str]:
    """Readable descriptions of error outputs (and stderr lines that hold a traceback)."""
    found = []
    for i, out in outputs(nb):
        if out.get("output_type") == "error":
            found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
        elif out.get("name") == "stderr" and "Traceback (most recent call last)" in out.get(
            "text", ""
        ):
            found.append(f"cell {i}: traceback on stderr: {out['text'][:500]}")
    return found


def mimetype_cells(nb, mimetype: str) -> list[int]:
    """Indices of the cells that have an output of ``mimetype``."""
    return sorted({i for i, out in outputs(nb) if mimetype in out.get("data", {})})


def widget_models(nb) -> dict[str, dict]:
    """The stored widget state (model id -> {model_name, state, ...}), empty if none."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {})
    return state.get("state", {})


def displayed_model_names(nb) -> list[str]:
    """``model_name`` of every widget displayed in an output (e.g. ``VBoxModel``)."""
    models = widget_models(nb)
    names = []
    for _, out in outputs(nb):
        view = out.get("data", {}).get(WIDGET_VIEW)
        if view is not None:
            names.append(models.get(view["model_id"], {}).get("model_name", "<missing>"))
    return names


def env_with(**values: str | None) -> dict[str, str]:
    """A copy of ``os.environ`` with ``values`` set (None removes a variable)."""
    env = dict(os.environ)
    for key, value in values.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
