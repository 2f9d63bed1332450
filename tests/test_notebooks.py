"""Execute every notebook headless (DESIGN §5.2) and check what it displays.

Each notebook runs top to bottom in a kernel on this venv (nbclient, widget state stored,
working directory = ``notebooks/``). A notebook passes when no cell raised or printed a
traceback, it displayed widgets whose models are all in the stored widget state, and it
showed plotly figures (static figures or ``FigureWidget`` models). Executed copies go to
``artifacts/executed/`` for inspection.

Cached pipeline stages live under ``$LESS_LAB_RUN_DIR`` when it is set (a second run then
takes seconds), else under this session's pytest temp dir; ``test_browser.py`` reuses the
same directory. Notebook 02 reads the shared real data (``shared_data`` fixture) through
``$LESS_LAB_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from notebook_utils import (
    DATA_DIR_ENV,
    NOTEBOOK_DIR,
    PLOTLY,
    REPO_ROOT,
    RUN_DIR_ENV,
    WIDGET_VIEW,
    displayed_model_names,
    error_outputs,
    execute_notebook,
    mimetype_cells,
    widget_models,
    write_kernelspec,
)

SLOW = {"01_quickstart", "02_qualitative_tables", "04_loss_vs_accuracy"}
"""Notebooks that train SmolLM2 (over 60 s on two CPU cores when nothing is cached)."""
EXPECTED = ["01_quickstart", "02_qualitative_tables", "03_teaching", "04_loss_vs_accuracy"]


def _params():
    found = {p.stem: p for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))}
    return [
        pytest.param(found.get(name, NOTEBOOK_DIR / f"{name}.ipynb"), id=name,
                     marks=[pytest.mark.slow] if name in SLOW else [])
        for name in sorted(set(EXPECTED) | set(found))
    ]  # fmt: skip


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory):
    """JUPYTER_PATH with a kernelspec on this interpreter, and the shared run directory."""
    base = tmp_path_factory.getbasetemp()
    jupyter = write_kernelspec(base / "jupyter-path")
    run_dir = Path(os.environ.get(RUN_DIR_ENV) or base / "notebook_runs")
    with pytest.MonkeyPatch.context() as mp:
        old = os.environ.get("JUPYTER_PATH")
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter), *([old] if old else [])]))
        mp.setenv(RUN_DIR_ENV, str(run_dir))
        yield run_dir


def _is_plotly_widget(model: dict) -> bool:
    """A plotly ``FigureWidget`` model: its synced state holds the figure's data/layout."""
    state = model.get("state", {})
    return "_widget_data" in state and "_widget_layout" in state


def test_all_notebooks_present():
    """Every notebook the README promises exists and is valid nbformat v4."""
    for name in EXPECTED:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        assert path.exists(), f"{path} is missing"
        nbformat.validate(nbformat.read(path, as_version=4))


def test_notebooks_are_stored_without_outputs():
    """Outputs are produced by running, never committed (they would hold stale numbers)."""
    for path in NOTEBOOK_DIR.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.outputs]
        assert not dirty, f"{path.name}: cells {dirty} have stored outputs"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), (
            f"{path.name}: no cell tagged 'parameters'"
        )


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path: Path, notebook_env, request, monkeypatch):
    if path.stem.startswith("02"):
        monkeypatch.setenv(DATA_DIR_ENV, str(request.getfixturevalue("shared_data")))
    nb, seconds = execute_notebook(path)
    out_dir = REPO_ROOT / "artifacts" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    print(f"{path.name}: executed in {seconds:.1f} s")

    assert not error_outputs(nb), f"{path.name}: {error_outputs(nb)}"
    widget_cells = mimetype_cells(nb, WIDGET_VIEW)
    assert widget_cells, f"{path.name}: no widget was displayed"
    names = displayed_model_names(nb)
    assert "<missing>" not in names, f"{path.name}: displayed widgets without stored state"
    assert {"VBoxModel", "TabModel"} & set(names), f"{path.name}: no view displayed: {names}"
    figures = [m for m in widget_models(nb).values() if _is_plotly_widget(m)]
    static = mimetype_cells(nb, PLOTLY)
    assert figures or static, f"{path.name}: no plotly figure (widget or static)"
    for model in figures:
        assert model["state"]["_widget_data"], f"{path.name}: a FigureWidget has no traces"
