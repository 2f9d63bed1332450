"""The three ways to install less_lab (pyproject, environment.yml, setup.sh) must agree.

Why: drift between them is silent until a user's fresh install breaks, and an unpinned
torch next to transformers makes pip download a multi-GB CUDA build.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

import less_lab

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"
CI_LINE = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"

# Import-name spellings people write by mistake, mapped to the PyPI distribution name.
_ALIASES = {"trak": "traker"}


def normalise(name: str) -> str:
    """PEP 503-style distribution name (lowercase, ``_`` and ``.`` as ``-``)."""
    name = re.sub(r"[-_.]+", "-", name).lower()
    return _ALIASES.get(name, name)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_names() -> set[str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return {normalise(Requirement(r).name) for r in reqs}


def environment_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, "environment.yml must have exactly one pip section"
    return [p for p in pips[0] if not p.startswith("-")]  # skip "-e ." and options


def setup_pip_commands() -> list[list[str]]:
    """Every pip install command of setup.sh as argv lists (continuations joined)."""
    text = (ROOT / "scripts" / "setup.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if re.search(r"\bpip install\b", line):
            commands.append(shlex.split(line))
    return commands


def test_normalise() -> None:
    assert normalise("rank_bm25") == "rank-bm25"
    assert normalise("Rank.BM25") == "rank-bm25"
    assert normalise("trak") == "traker"
    assert normalise("traker") == "traker"


def test_environment_matches_pyproject() -> None:
    env_names = {normalise(Requirement(r).name) for r in environment_pip()}
    py_names = pyproject_names()
    assert env_names == py_names, (
        f"only in environment.yml: {sorted(env_names - py_names)}; "
        f"only in pyproject.toml: {sorted(py_names - env_names)}"
    )


def test_environment_pins_torch_and_python() -> None:
    assert TORCH_PIN in environment_pip()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "less_lab"
    assert "python=3.11" in env["dependencies"]


def test_pyproject_metadata() -> None:
    data = _pyproject()
    project = data["project"]
    assert project["version"] == less_lab.__version__
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["less-lab"] == "less_lab.cli:main"
    assert {"torch", "transformers", "peft", "traker"} <= pyproject_names()
    pytest_cfg = data["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in pytest_cfg["markers"])
    assert data["tool"]["ruff"]["line-length"] == 100


def test_setup_pins_torch_in_the_same_pip_command() -> None:
    commands = setup_pip_commands()
    with_torch = [c for c in commands if any(a.startswith("torch") for a in c)]
    assert len(with_torch) == 1, f"torch must be installed by exactly one command: {commands}"
    (cmd,) = with_torch
    assert TORCH_PIN in cmd
    names = {normalise(Requirement(a).name) for a in cmd if re.match(r"^[A-Za-z]", a)}
    assert {"transformers", "peft", "traker"} <= names, cmd
    assert "-e" in cmd and ".[test]" in cmd, cmd
    # Every other pip command must not be able to touch torch's dependents.
    for other in commands:
        if other is not cmd:
            assert "--no-deps" in other, other


def test_ci_runs_the_readme_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    lines = [ln.strip() for ln in ci.read_text().splitlines()]
    assert CI_LINE in lines
    assert "set -euo pipefail" in lines
    assert "export LESS_LAB_REQUIRE_SHARED=1" in lines
    assert lines.index("export LESS_LAB_REQUIRE_SHARED=1") < lines.index(CI_LINE)
