"""The package's layers, checked from its source with ``ast`` (no import is run).

Layers, lowest first (README "Files"): the base modules (``config``, ``overrides``,
``errors``, ``layout``, ``_io``, ``_version``) → ``data`` → ``model`` → ``core`` → ``checks`` and
``evaluate`` (siblings: neither imports the other) → ``views`` → the facade (``compare``,
``inspection`` → ``lab`` → ``demo`` → ``cli``). A module may import its own subpackage and any lower
layer, never a higher one; ``views`` take frames and never import the datastore, the
pipeline, training, model loading or the facade; no ``_private`` name is imported from
another module; the import graph (function-level imports included) has no cycle. Size:
no module over 400 lines, no function over 60. Each rule is first shown a bad case, so a
broken checker fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "less_lab"
BASE = {
    "config",
    "selection_config",
    "validation",
    "overrides",
    "errors",
    "layout",
    "_io",
    "_version",
}
SUBPACKAGES = {"data": 1, "model": 2, "core": 3, "checks": 4, "evaluate": 4, "views": 5}
FACADE = {
    "compare": 6,
    "inspection": 6,
    "selecting": 6,
    "explain": 6,
    "reference_run": 7,
    "lab": 7,
    "demo": 8,
    "cli": 9,
    "__main__": 10,
}
VIEWS_MUST_NOT_IMPORT = (
    "less_lab.core.datastore",
    "less_lab.core.pipeline",
    "less_lab.core.training",
    "less_lab.model.loading",
)
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a less_lab module; the package ``__init__`` is the public API
    (rank above everything), a subpackage's ``__init__`` belongs to its subpackage."""
    parts = module.split(".")
    if len(parts) == 1:
        return 99, "api"
    head = parts[1]
    if head in BASE:
        return 0, head
    if head in SUBPACKAGES:
        return SUBPACKAGES[head], head
    return FACADE[head], head


def imports(tree: ast.AST, module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every less_lab import, relative ones
    resolved against ``module``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, []) for a in node.names if a.name.startswith("less_lab")
            ]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".")[: -node.level] if node.level else []
                target = ".".join([*base, target] if target else base)
            if target.startswith("less_lab"):
                names = [a.name for a in node.names]
                found.append((node.lineno, target, names))
    return found


def resolve(target: str, names: list[str], known: set[str]) -> list[str]:
    """The modules an import reaches: ``from less_lab.core import pipeline`` reaches
    ``less_lab.core.pipeline``."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return subs or [target]


def problems(sources: dict[str, str]) -> list[str]:
    """Every broken rule in ``{module: source}``, as ``module:line: what``."""
    known = set(sources)
    found, graph = [], {m: set() for m in sources}
    for module, source in sources.items():
        rank, group = layer(module)
        for line, target, names in imports(ast.parse(source), module):
            for dep in resolve(target, names, known):
                if dep == module or dep not in known:
                    continue
                graph[module].add(dep)
                found += _rule_problems(module, rank, group, line, dep, names, target)
    found += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def _rule_problems(module, rank, group, line, dep, names, target) -> list[str]:
    where = f"{module}:{line}"
    dep_rank, dep_group = layer(dep)
    out = []
    if dep_group != group and (dep_rank > rank or (dep_rank == rank and rank != 0)):
        out.append(f"{where}: layer {group} ({rank}) imports {dep} ({dep_group}, {dep_rank})")
    if group == "views" and dep.startswith(VIEWS_MUST_NOT_IMPORT):
        out.append(f"{where}: views import {dep} (views take frames)")
    private = [n for n in names if n.startswith("_") and f"{target}.{n}" != dep]
    if private and target != "less_lab._version":
        out.append(f"{where}: imports private {', '.join(private)} from {target}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other."""
    out, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                out.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return out


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def size_problems(sources: dict[str, str]) -> list[str]:
    found = []
    for module, source in sources.items():
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            found.append(f"{module}: {n} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{module}:{node.lineno}: {node.name} is {length} lines")
    return found


# ------------------------------------------------------------------ the checker bites


@pytest.mark.parametrize(
    "sources, expected",
    [
        ({"less_lab.core.a": "from less_lab.lab import Lab", "less_lab.lab": ""}, "layer core"),
        ({"less_lab.checks.a": "from less_lab.evaluate import b", "less_lab.evaluate.b": ""},
         "layer checks"),
        ({"less_lab.views.a": "from less_lab.core.datastore import Store",
          "less_lab.core.datastore": ""}, "views import"),
        ({"less_lab.core.a": "from less_lab.core.b import _x", "less_lab.core.b": ""}, "private"),
        ({"less_lab.core.a": "def f():\n    from less_lab.core import b",
          "less_lab.core.b": "from less_lab.core.a import f"}, "cycle"),
        ({"less_lab.data.a": "from .b import x", "less_lab.data.b": "from .a import y"}, "cycle"),
    ],
)  # fmt: skip
def test_checker_catches(sources, expected):
    assert any(expected in p for p in problems(sources)), problems(sources)


def test_checker_allows_downward_and_same_layer_imports():
    ok = {
        "less_lab.core.a": "from less_lab.core.b import x\nfrom less_lab.config import C",
        "less_lab.core.b": "from less_lab.data.c import y",
        "less_lab.data.c": "from less_lab.errors import DataError",
        "less_lab.config": "",
        "less_lab.errors": "",
    }
    assert problems(ok) == []


def test_size_checker_bites():
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert size_problems({"less_lab.core.a": long_function})


# ------------------------------------------------------------------------ the package


def test_imports_point_down_with_no_cycle_and_no_private_name():
    sources = package_sources()
    assert len(sources) > 30
    assert problems(sources) == []


def test_modules_and_functions_are_short():
    assert size_problems(package_sources()) == []


def test_every_subpackage_says_what_it_holds_and_may_import():
    for sub in SUBPACKAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
        assert doc and "May import" in doc, sub


def test_every_public_name_resolves():
    import less_lab

    missing = [n for n in less_lab.__all__ if not hasattr(less_lab, n)]
    assert missing == []
