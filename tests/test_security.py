"""User files and dataset text are untrusted: nothing in less_lab may execute them.

Static checks over every ``less_lab/*.py`` (parsed with ``ast``, so comments and
docstrings cannot hide or fake a call): every ``torch.load`` passes
``weights_only=True``; no pickle-family import, no ``np.load(allow_pickle=True)``, no
builtin ``eval``/``exec``; ``trust_remote_code`` is never set to ``True`` and defaults to
``False``. Each checker is first shown a bad snippet, so a broken checker fails too.
Then behaviour: ``load_model`` passes ``trust_remote_code=False`` unless asked, and the
HTML views escape dataset text.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import polars as pl
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "less_lab"
SOURCES = sorted(PACKAGE.rglob("*.py"))
PICKLE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def problems(source: str, name: str = "<src>") -> list[str]:
    """Every unsafe construct in ``source``, as ``name:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [
                f"{where}: imports {m}" for m in mods if m and m.split(".")[0] in PICKLE_MODULES
            ]
        if isinstance(node, ast.Call):
            func = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load") or func in ("load", "torch.serialization.load"):
                if not _is_true(kw.get("weights_only")):
                    found.append(f"{where}: {func} without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and _is_true(kw.get("allow_pickle")):
                found.append(f"{where}: np.load(allow_pickle=True)")
            if func in ("eval", "exec"):
                found.append(f"{where}: builtin {func}")
            if _is_true(kw.get("trust_remote_code")):
                found.append(f"{where}: trust_remote_code=True")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "trust_remote_code"
                    and _is_true(value)
                ):
                    found.append(f"{where}: 'trust_remote_code': True")
        if isinstance(node, ast.FunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = (
                [None] * (len(node.args.args) - len(node.args.defaults))
                + node.args.defaults
                + node.args.kw_defaults
            )
            for arg, default in zip(args, defaults, strict=True):
                if arg.arg == "trust_remote_code" and not (
                    isinstance(default, ast.Constant) and default.value is False
                ):
                    found.append(f"{where}: {node.name}(trust_remote_code) must default to False")
    return found


BAD = {
    "torch.load(path)": "without weights_only=True",
    "torch.load(path, weights_only=False)": "without weights_only=True",
    "import pickle": "imports pickle",
    "from joblib import load": "imports joblib",
    "np.load(f, allow_pickle=True)": "allow_pickle",
    "eval(text)": "builtin eval",
    "AutoModel.from_pretrained(p, trust_remote_code=True)": "trust_remote_code=True",
    "kw = {'trust_remote_code': True}": "'trust_remote_code': True",
    "def load(p, trust_remote_code=True): pass": "must default to False",
    "def load(p, *, trust_remote_code): pass": "must default to False",
}


@pytest.mark.parametrize("snippet", sorted(BAD))
def test_the_checker_flags_each_unsafe_construct(snippet):
    found = problems(snippet)
    assert len(found) == 1 and BAD[snippet] in found[0], found


def test_the_checker_accepts_the_safe_forms():
    ok = (
        "torch.load(p, map_location='cpu', weights_only=True)\nmodel.eval()\n"
        "np.load(f)\nkw = {'trust_remote_code': trust_remote_code}\n"
        "def load(p, trust_remote_code: bool = False): pass\n"
    )
    assert problems(ok) == []


def test_package_sources_have_no_unsafe_loading():
    assert len(SOURCES) > 10
    found = [p for path in SOURCES for p in problems(path.read_text(), path.name)]
    assert found == []


def test_load_model_trusts_remote_code_only_when_asked(monkeypatch, tmp_path, tiny_tokenizer):
    import transformers

    from less_lab.model import loading as models
    from less_lab.model.tiny import tiny_llama

    tiny_llama(tiny_tokenizer).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code", "absent"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    models.load_model(str(tmp_path))
    assert seen == [False, False]
    models.load_model(str(tmp_path), trust_remote_code=True)
    assert seen[2:] == [True, True]


# ---------------------------------------------------------------------------- HTML

EVIL = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def _raw_markup(text: str) -> list[str]:
    """Markup that could run: a script or img tag, or an event handler inside any tag."""
    low = text.lower()
    found = [tag for tag in ("<script", "<img") if tag in low]
    return found + re.findall(r"<[a-z][^>]*\son\w+=", low)


def test_dataset_text_is_inert_in_the_html_views():
    widgets = pytest.importorskip("less_lab.views.widgets")
    html_views = pytest.importorskip("less_lab.views.html")
    ids = [f"{EVIL}{i}" for i in range(3)]
    pool = pl.DataFrame(
        {
            "example_id": ids,
            "source": [EVIL] * 3,
            "messages": [
                [{"role": "user", "content": EVIL}, {"role": "assistant", "content": EVIL}]
                for _ in ids
            ],
        }
    )
    scores = pl.DataFrame(
        {"example_id": ids, "source": [EVIL] * 3, "subtask": [EVIL] * 3, "score": [0.3, 0.2, 0.1]}
    )
    view = widgets.TopExamplesView(scores, pool, n=3)
    # Every string plotly may render (JSON-decoded, so no \\u003c disguise). ``customdata``
    # is data for click handlers, never drawn unless a hovertemplate names it.
    figure_strings, stack = [], [json.loads(view.fig.to_json())]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [v for k, v in item.items() if k != "customdata"]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            figure_strings.append(item)
    assert not any("customdata" in t for t in figure_strings)
    assert any("alert(1)" in t for t in figure_strings)  # the text is in the figure...
    outputs = {
        "table": view.table.value,
        "detail": view.detail.value,
        "figure": "\n".join(figure_strings),
        "conversation": html_views.conversation_html(pool["messages"][0].to_list()),
    }
    assert _raw_markup(EVIL) and _raw_markup('<b class=x onmouseover="y">')  # the check bites
    for name, text in outputs.items():
        assert _raw_markup(text) == [], f"{name}: {text[:400]}"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in outputs["detail"]
