"""Execute every notebook headless (DESIGN §5.2) and check what it displays.

Each notebook runs top to bottom in a kernel on this venv (nbclient, widget state stored,
working directory = ``notebooks/``). A notebook passes when no cell raised or printed a
traceback, it displayed widgets whose models are all in the stored widget state, and it
showed plotly figures (static figures or ``FigureWidget`` models). Each notebook ends with
a hidden cell tagged ``check`` that asserts on what it computed and showed, so a notebook
that displays something wrong fails here too. Executed copies go to
``artifacts/executed/`` for inspection.

Static checks (no kernel, fast) keep the notebooks on the package's public API: imports
from ``less_lab`` or its subpackages only, and no private copies of package helpers.

Cached pipeline stages live under ``$LESS_LAB_RUN_DIR`` when it is set (a second run then
takes seconds), else under this session's pytest temp dir; ``test_browser.py`` reuses the
same directory. Notebook 02 reads the shared real data (``shared_data`` fixture) through
``$LESS_LAB_DATA_DIR``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest
from notebook_utils import (
    CHECK_TAG,
    DATA_DIR_ENV,
    NOTEBOOK_DIR,
    PLOTLY,
    REPO_ROOT,
    RUN_DIR_ENV,
    WIDGET_VIEW,
    cell_source,
    code_cells,
    displayed_model_names,
    error_outputs,
    execute_notebook,
    mimetype_cells,
    parse_cell,
    read_json,
    widget_models,
    write_kernelspec,
)

SLOW = {"01_quickstart", "02_qualitative_tables", "04_loss_vs_accuracy"}
"""Notebooks that train SmolLM2 (over 60 s on two CPU cores when nothing is cached)."""
EXPECTED = [
    "01_quickstart",
    "02_qualitative_tables",
    "03_teaching",
    "04_loss_vs_accuracy",
    "05_explore_an_existing_run",
]
PACKAGE_HELPERS = {"stratified", "stratified_sample", "spearman", "correlation", "top_k"}
"""Helpers ``less_lab`` owns (``stratified_sample``, ``frames.spearman``, ``correlation``,
``top_k``): a notebook uses them, never a second copy of its own."""
PACKAGE = "less_lab"
SUBPACKAGES = sorted(p.parent.name for p in (REPO_ROOT / PACKAGE).glob("*/__init__.py"))
"""``less_lab``'s layered subpackages (data, model, core, ...); notebooks import from the
top level or, where truly needed, from these, never from facade or base modules."""


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


def _notebook_paths() -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert paths, f"no notebooks in {NOTEBOOK_DIR}"
    return paths


def test_notebooks_end_with_a_check_cell():
    """The last cell is a hidden code cell tagged ``check`` with real assertions."""
    for path in _notebook_paths():
        last = read_json(path)["cells"][-1]
        tags = last.get("metadata", {}).get("tags", [])
        assert last["cell_type"] == "code" and CHECK_TAG in tags, (
            f"{path.name}: the last cell is not a code cell tagged {CHECK_TAG!r}"
        )
        asserts = [n for n in ast.walk(parse_cell(cell_source(last))) if isinstance(n, ast.Assert)]
        assert asserts, f"{path.name}: the {CHECK_TAG!r} cell has no assert statement"
        hidden = last["metadata"].get("jupyter", {}).get("source_hidden")
        assert hidden is True, f"{path.name}: the {CHECK_TAG!r} cell's source is not hidden"


def test_notebooks_do_not_redefine_package_helpers():
    """No code cell defines a function named like a helper the package owns."""
    found = []
    for path in _notebook_paths():
        for i, source in code_cells(read_json(path)):
            for node in ast.walk(parse_cell(source)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    names = [node.name]
                elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                    names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                else:
                    continue
                found += [f"{path.name} cell {i}: {n}" for n in names if n in PACKAGE_HELPERS]
    assert not found, f"use the package's helpers instead: {found}"


def _less_lab_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, module)`` of every import that names ``less_lab`` or one of its modules."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == PACKAGE:
                found.append((node.lineno, node.module))
    return found


def test_notebooks_import_the_public_api():
    """Every import of less_lab is ``less_lab`` itself or one of its subpackages (or a
    module in one): the facade and base modules are reached through the top level."""
    assert SUBPACKAGES, f"no subpackages found under {REPO_ROOT / PACKAGE}"
    bad = []
    for path in _notebook_paths():
        for i, source in code_cells(read_json(path)):
            for line, module in _less_lab_modules(parse_cell(source)):
                parts = module.split(".")
                if len(parts) > 1 and parts[1] not in SUBPACKAGES:
                    bad.append(f"{path.name} cell {i} line {line}: {module}")
    assert not bad, (
        f"import from {PACKAGE!r} or a subpackage ({', '.join(SUBPACKAGES)}), not: {bad}"
    )


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path: Path, notebook_env, request, monkeypatch):
    if path.stem.startswith("02"):
        monkeypatch.setenv(DATA_DIR_ENV, str(request.getfixturevalue("shared_data")))
    if path.stem.startswith("05"):  # a synthetic run in exactly the reference's layout
        from reference_tree import write_reference_run

        tree = write_reference_run(request.getfixturevalue("tmp_path") / "reference")
        monkeypatch.setenv("LESS_LAB_REFERENCE_RUN", str(tree["root"]))
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
