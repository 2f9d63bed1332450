"""A small offline pool and target set with known structure, for ``less-lab demo``.

Why synthetic: the demo must run offline on a laptop CPU in minutes, and it must be able
to *explain* what LESS picked. So every pool row carries its hidden ``skill`` (what it
teaches) and ``form`` (how it is phrased). Nine skills appear in four surface forms each,
plus generic chit-chat as noise. The targets test three of those skills in formats the
pool never uses (BBH-like "Let's think step by step ... So the answer is X." and MMLU-like
lettered multiple choice), so a good selection concentrates on the targets' skills rather
than on their surface format. Everything is built from templates and word tables by a
seeded ``random.Random``; every answer is computed or looked up, never written by hand.

This module assembles the examples (distinct, seeded per skill and form) into the pool and
target frames and files; what each skill and target subtask says is in ``demo_skills``,
the word tables it draws from in ``demo_words``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from less_lab.data.demo_skills import SKILLS, TARGETS

DEMO_SKILLS: dict[str, str] = {
    "arithmetic": "Word problems that add, subtract or multiply small whole numbers.",
    "capitals": "Capital cities of countries.",
    "weekdays": "Which day of the week comes N days before or after a given day.",
    "antonyms": "Opposites (antonyms) and synonyms of common English words.",
    "sentiment": "Labelling short reviews as positive or negative.",
    "units": "Converting quantities between units (km to m, hours to minutes, ...).",
    "spelling": "Spelling, reversing and counting the letters of a word.",
    "french": "Translating simple English words into French.",
    "sorting": "Sorting short lists of numbers and finding the largest or smallest.",
    "chitchat": "Generic small talk with no task to solve (noise / distractors).",
}

DEMO_SUBTASKS: dict[str, str] = {
    "arithmetic_cot": "BBH-like two-step word problems, chain of thought (arithmetic).",
    "capitals_mc": "MMLU-like multiple choice with lettered options (capitals).",
    "weekdays_cot": "BBH-like weekday reasoning, chain of thought (weekdays).",
}

FORM_SOURCE: dict[str, str] = {
    "qa": "flan_like",
    "fill_in": "flan_like",
    "instruction": "dolly_like",
    "rationale": "cot_like",
    "chat": "chat_like",
}
"""Pool source of each surface form; chit-chat rows all come from source ``noise``."""


@dataclass(frozen=True)
class DemoExample:
    """One generated example and the facts it was built from (tests recompute answers)."""

    skill: str
    form: str
    source: str
    turns: tuple[str, ...]
    facts: dict[str, Any] = field(hash=False)

    @property
    def messages(self) -> list[dict[str, str]]:
        roles = ("user", "assistant")
        return [{"role": roles[i % 2], "content": t} for i, t in enumerate(self.turns)]


def _generate(skill: str, form: str, n: int, rng: random.Random, source: str) -> list[DemoExample]:
    """``n`` examples of one (skill, form) with distinct prompts; fails loudly if the
    word tables cannot supply that many rather than silently repeating rows."""
    draw, templates = SKILLS[skill]
    out: dict[str, DemoExample] = {}
    for _ in range(200 * n):
        if len(out) >= n:
            break
        facts = draw(rng, form)
        turns = tuple(t.format(**facts) for t in templates[form])
        out.setdefault(turns[0], DemoExample(skill, form, source, turns, facts))
    if len(out) >= n:
        return list(out.values())
    raise ValueError(f"demo_data: cannot draw {n} distinct {skill}/{form} examples")


def demo_examples(seed: int = 0, n_per_form: int = 7) -> list[DemoExample]:
    """All pool examples in pool order (shuffled so skills interleave as in a real pool).

    Each (skill, form) has its own seeded stream, so adding a skill or changing another
    form's count never changes the rows of an existing form.
    """
    rows: list[DemoExample] = []
    for skill, (_, templates) in SKILLS.items():
        for form in templates:
            rng = random.Random(f"less_lab.demo.pool.{seed}.{skill}.{form}")
            source = "noise" if skill == "chitchat" else FORM_SOURCE[form]
            rows.extend(_generate(skill, form, n_per_form, rng, source))
    random.Random(f"less_lab.demo.order.{seed}").shuffle(rows)
    return rows


def _frame(records: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    """Build a frame with explicit dtypes: ``messages`` must be list[struct] even when
    polars would infer something else from a few rows."""
    return pl.DataFrame(records, schema=schema, orient="row")


_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def demo_pool(seed: int = 0, n_per_form: int = 7) -> pl.DataFrame:
    """The demo pool in the package's pool-frame layout, plus ``skill`` and ``form``.

    ``raw`` is exactly the JSONL line ``write_demo`` writes (open-instruct ``dataset`` /
    ``id`` / ``messages`` keys, then ``skill`` / ``form``, which readers ignore).
    Default size: 10 skills x 4 forms x 7 = 280 rows.
    """
    counters: dict[str, int] = {}
    records = []
    for line, ex in enumerate(demo_examples(seed, n_per_form), start=1):
        counters[ex.source] = counters.get(ex.source, 0) + 1
        ex_id = f"{ex.source}_{counters[ex.source]}"
        obj = {"dataset": ex.source, "id": ex_id, "messages": ex.messages,
               "skill": ex.skill, "form": ex.form}  # fmt: skip
        records.append((ex_id, ex.source, "messages", ex.messages, json.dumps(obj),
                        "<demo>", line, ex.skill, ex.form))  # fmt: skip
    schema = {"example_id": pl.String, "source": pl.String, "format": pl.String,
              "messages": _MESSAGES, "raw": pl.String, "file": pl.String,
              "line": pl.Int64, "skill": pl.String, "form": pl.String}  # fmt: skip
    return _frame(records, schema)


def demo_target_examples(seed: int = 0, n_shots: int = 4) -> list[DemoExample]:
    """Target shots per subtask (distinct prompts), in subtask order; ``form`` is the
    target format and ``source`` the subtask name."""
    out: list[DemoExample] = []
    for subtask, (skill, form, make) in TARGETS.items():
        rng = random.Random(f"less_lab.demo.target.{seed}.{subtask}")
        seen: dict[str, DemoExample] = {}
        while len(seen) < n_shots:
            turns, facts = make(rng)
            seen.setdefault(turns[0], DemoExample(skill, form, subtask, turns, facts))
        out.extend(seen.values())
    return out


def demo_targets(seed: int = 0, n_shots: int = 4) -> pl.DataFrame:
    """Target frame: ``example_id, source ("demo_target"), subtask, messages, raw, skill,
    form``; ``raw`` is the line ``write_demo`` writes (``id`` / ``subtask`` / ``messages``
    plus ``skill``)."""
    records = []
    counters: dict[str, int] = {}
    for ex in demo_target_examples(seed, n_shots):
        counters[ex.source] = counters.get(ex.source, 0) + 1
        ex_id = f"{ex.source}_{counters[ex.source]}"
        obj = {"id": ex_id, "subtask": ex.source, "messages": ex.messages, "skill": ex.skill}
        records.append((ex_id, "demo_target", ex.source, ex.messages, json.dumps(obj),
                        ex.skill, ex.form))  # fmt: skip
    schema = {"example_id": pl.String, "source": pl.String, "subtask": pl.String,
              "messages": _MESSAGES, "raw": pl.String, "skill": pl.String,
              "form": pl.String}  # fmt: skip
    return _frame(records, schema)


def write_demo(dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``pool.jsonl`` and ``targets.jsonl`` into ``dir`` (created if missing) so a
    user can inspect the demo data and run the CLI on real files."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "pool.jsonl", out / "targets.jsonl")
    for path, frame in zip(paths, (demo_pool(seed), demo_targets(seed)), strict=True):
        path.write_text("".join(line + "\n" for line in frame["raw"]), encoding="utf-8")
    return paths
