"""A small offline pool and target set with known structure, for ``less-lab demo``.

Why synthetic: the demo must run offline on a laptop CPU in minutes, and it must be able
to *explain* what LESS picked. So every pool row carries its hidden ``skill`` (what it
teaches) and ``form`` (how it is phrased). Nine skills appear in four surface forms each,
plus generic chit-chat as noise. The targets test three of those skills in formats the
pool never uses (BBH-like "Let's think step by step ... So the answer is X." and MMLU-like
lettered multiple choice), so a good selection concentrates on the targets' skills rather
than on their surface format. Everything is built from templates and the tables below by
a seeded ``random.Random``; every answer is computed or looked up, never written by hand.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

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


def _pairs(text: str) -> dict[str, str]:
    """Parse ``"a:b,c:d"`` into a dict: keeps the word tables compact and readable."""
    return dict(item.split(":") for item in text.split(","))


_CAPITALS = _pairs(
    "France:Paris,Germany:Berlin,Italy:Rome,Spain:Madrid,Portugal:Lisbon,Japan:Tokyo,"
    "China:Beijing,India:New Delhi,Canada:Ottawa,Australia:Canberra,Brazil:Brasilia,"
    "Argentina:Buenos Aires,Mexico:Mexico City,Egypt:Cairo,Kenya:Nairobi,Nigeria:Abuja,"
    "Russia:Moscow,Turkey:Ankara,Greece:Athens,Norway:Oslo,Sweden:Stockholm,"
    "Finland:Helsinki,Denmark:Copenhagen,Poland:Warsaw,Austria:Vienna,Ireland:Dublin,"
    "Peru:Lima,Chile:Santiago,Colombia:Bogota,Thailand:Bangkok,Vietnam:Hanoi,"
    "South Korea:Seoul,Iran:Tehran,Iraq:Baghdad,Morocco:Rabat,Ghana:Accra,"
    "Ethiopia:Addis Ababa,Hungary:Budapest,Cuba:Havana,Iceland:Reykjavik,"
    "Pakistan:Islamabad,Belgium:Brussels,New Zealand:Wellington,Ukraine:Kyiv,"
    "Romania:Bucharest,Bulgaria:Sofia,Croatia:Zagreb,Serbia:Belgrade,Uruguay:Montevideo,"
    "Venezuela:Caracas,Nepal:Kathmandu,Bangladesh:Dhaka,Saudi Arabia:Riyadh"
)
_ANTONYMS = _pairs(
    "hot:cold,big:small,up:down,early:late,happy:sad,fast:slow,young:old,full:empty,"
    "high:low,strong:weak,wet:dry,rich:poor,loud:quiet,thick:thin,win:lose,push:pull,"
    "buy:sell,inside:outside,above:below,first:last,true:false,open:closed,day:night,"
    "clean:dirty,heavy:light,easy:hard,begin:end,love:hate,question:answer,north:south"
)
_SYNONYMS = _pairs(
    "big:large,small:little,fast:quick,happy:glad,begin:start,smart:clever,"
    "angry:mad,easy:simple,shut:close,buy:purchase,help:assist,rich:wealthy,"
    "hard:difficult,end:finish,choose:pick,gift:present,sick:ill,quiet:silent"
)
_FRENCH = _pairs(
    "cat:chat,dog:chien,house:maison,water:eau,bread:pain,book:livre,apple:pomme,"
    "tree:arbre,sun:soleil,moon:lune,car:voiture,sea:mer,red:rouge,green:vert,blue:bleu,"
    "black:noir,white:blanc,milk:lait,cheese:fromage,door:porte,hand:main,day:jour,"
    "night:nuit,city:ville,flower:fleur,horse:cheval,fish:poisson,chair:chaise,sky:ciel,"
    "girl:fille,rain:pluie,snow:neige,bird:oiseau,mouse:souris,wine:vin"
)
_UNITS = [  # (plural, singular, target unit, exact factor)
    ("kilometers", "kilometer", "meters", 1000),
    ("meters", "meter", "centimeters", 100),
    ("kilograms", "kilogram", "grams", 1000),
    ("liters", "liter", "milliliters", 1000),
    ("hours", "hour", "minutes", 60),
    ("minutes", "minute", "seconds", 60),
    ("days", "day", "hours", 24),
    ("weeks", "week", "days", 7),
    ("feet", "foot", "inches", 12),
    ("yards", "yard", "feet", 3),
]
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_NAMES = "Tom Anna Li Maria Sam Priya Omar Lucy Ben Sara Kofi Elena".split()
_ITEMS = "apples pencils stickers cookies marbles books coins cards shells stamps".split()
_WORDS = (
    "apple garden window planet rocket yellow guitar pencil bridge candle forest island "
    "monkey orange silver tomato winter button castle dragon"
).split()
_POSITIVE = "wonderful excellent delightful great fantastic lovely superb".split()
_NEGATIVE = "terrible awful boring disappointing dreadful poor dull".split()
_SUBJECTS = [
    "The movie", "This phone", "The hotel room", "The pasta", "The concert",
    "This book", "The service", "The new album",
]  # fmt: skip
_TAILS = {
    "positive": ["I would happily recommend it.", "I will come back again.", ""],
    "negative": ["I want my money back.", "I would not recommend it.", ""],
}
_GREETINGS = ["Hi!", "Hello there.", "Hey!", "Good morning!", "Good evening."]
_ASKS = [
    "How are you today?", "How is your day going?", "What's up?", "Are you doing well?",
]  # fmt: skip
_REPLIES = [
    "I'm doing well, thank you for asking! How can I help you today?",
    "All good here, thanks! What would you like to talk about?",
    "Hello! I'm happy to chat. Is there anything on your mind?",
]
_TIPS = {
    "sleeping better": "Try going to bed at the same time every night and keep screens "
    "out of the bedroom.",
    "staying focused": "Work in short blocks of 25 minutes and put your phone in another room.",
    "drinking more water": "Keep a bottle on your desk and refill it every time it is empty.",
    "keeping my desk tidy": "Spend two minutes clearing it at the end of each day.",
    "waking up early": "Move your alarm a little earlier each week and get daylight soon "
    "after waking.",
    "reading more books": "Carry a book with you and read a few pages whenever you wait.",
    "saving money": "Write down what you spend for a month to see where it goes.",
    "learning to cook": "Start with three simple recipes and cook each one a few times.",
    "making friends in a new city": "Join a club or class that meets every week.",
    "staying calm before an exam": "Breathe slowly, sleep well the night before and arrive early.",
    "writing emails": "Put the request in the first sentence and keep it short.",
    "running a first race": "Start slower than you think you should and enjoy it.",
}
_THINGS = (
    "rainy days,long walks,board games,jazz music,gardening,road trips,winter,"
    "camping,spicy food,old movies,museums,early mornings"
).split(",")
_OPINIONS = [
    "Many people love {thing}, and others do not. It really comes down to personal "
    "taste. What do you enjoy about it?",
    "I think {thing} can be a lot of fun, especially with good company. Do you have "
    "a favorite memory about it?",
]
_EVENTS = (
    "finished a long week at work,adopted a puppy,moved to a new apartment,"
    "started a new hobby,came back from a holiday,baked my first loaf of bread,"
    "ran my first 5k,planted some tomatoes,got a new job,painted my kitchen,"
    "learned to ride a bike,finished reading a big novel"
).split(",")


def _plural(n: int, word: str) -> str:
    """``1 day`` / ``3 days``: grammatical text keeps the demo's model on-distribution."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _draw_arithmetic(rng: random.Random, form: str) -> dict[str, Any]:
    name, items, op = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        story = f"{name} buys {a} bags with {b} {items} in each."
        question, r, word = f"How many {items} does {name} have in total?", a * b, "times"
    else:
        a = rng.randint(10, 60)
        b = rng.randint(2, 9) if op == "+" else rng.randint(2, a - 1)
        verb = f"gets {b} more" if op == "+" else f"gives {b} away"
        story = f"{name} has {a} {items} and {verb}."
        question = f"How many {items} does {name} have now?"
        r, word = (a + b, "plus") if op == "+" else (a - b, "minus")
    return dict(name=name, items=items, op=op, a=a, b=b, r=r, word=word, story=story,
                question=question)  # fmt: skip


def _draw_capitals(rng: random.Random, form: str) -> dict[str, Any]:
    country = rng.choice(sorted(_CAPITALS))
    return dict(country=country, capital=_CAPITALS[country])


def _draw_weekdays(rng: random.Random, form: str) -> dict[str, Any]:
    start = rng.randrange(7)
    n = {"qa": rng.randint(1, 20), "fill_in": rng.randint(1, 9)}.get(form, rng.randint(2, 5))
    step = -1 if form in ("rationale", "chat") else 1
    chain = ", ".join(_DAYS[(start + step * i) % 7] for i in range(1, n + 1))
    return dict(day=_DAYS[start], n=n, step=step, res=_DAYS[(start + step * n) % 7],
                chain=chain, n_days=_plural(n, "day"))  # fmt: skip


def _draw_antonyms(rng: random.Random, form: str) -> dict[str, Any]:
    table = _SYNONYMS if form == "instruction" else _ANTONYMS
    word = rng.choice(sorted(table))
    anchor = rng.choice(sorted(set(_ANTONYMS) - {word}))
    return dict(relation="synonym" if form == "instruction" else "antonym", word=word,
                answer=table[word], anchor=anchor, anchor_answer=_ANTONYMS[anchor])  # fmt: skip


def _draw_sentiment(rng: random.Random, form: str) -> dict[str, Any]:
    label = rng.choice(["positive", "negative"])
    adj = rng.choice(_POSITIVE if label == "positive" else _NEGATIVE)
    review = f"{rng.choice(_SUBJECTS)} was {adj}. {rng.choice(_TAILS[label])}".strip()
    liked = "Yes, they liked it" if label == "positive" else "No, they did not like it"
    return dict(label=label, Label=label.capitalize(), adj=adj, review=review, liked=liked,
                kind="praise" if label == "positive" else "criticism")  # fmt: skip


def _draw_units(rng: random.Random, form: str) -> dict[str, Any]:
    frm, one, to, factor = rng.choice(_UNITS)
    v = rng.randint(2, 12)
    return dict(frm=frm, one=one, to=to, f=factor, v=v, r=v * factor)


def _draw_spelling(rng: random.Random, form: str) -> dict[str, Any]:
    w = rng.choice(_WORDS)
    return dict(word=w, rev=w[::-1], n=len(w), first=w[0], last=w[-1],
                spelled="-".join(w.upper()))  # fmt: skip


def _draw_french(rng: random.Random, form: str) -> dict[str, Any]:
    en = rng.choice(sorted(_FRENCH))
    return dict(en=en, fr=_FRENCH[en])


def _draw_sorting(rng: random.Random, form: str) -> dict[str, Any]:
    nums = rng.sample(range(1, 100), rng.randint(4, 6))

    def join(xs: list[int]) -> str:
        return ", ".join(map(str, xs))

    return dict(nums=nums, listed=join(nums), asc=join(sorted(nums)),
                desc=join(sorted(nums, reverse=True)), mx=max(nums), mn=min(nums),
                and_list=f"{join(nums[:-1])} and {nums[-1]}")  # fmt: skip


def _draw_chitchat(rng: random.Random, form: str) -> dict[str, Any]:
    topic, thing = rng.choice(sorted(_TIPS)), rng.choice(_THINGS)
    return dict(greet=rng.choice(_GREETINGS), ask=rng.choice(_ASKS),
                reply=rng.choice(_REPLIES), topic=topic, tip=_TIPS[topic], thing=thing,
                opinion=rng.choice(_OPINIONS).format(thing=thing),
                event=rng.choice(_EVENTS))  # fmt: skip


Templates = dict[str, tuple[str, ...]]
"""form -> alternating user/assistant turn templates (``str.format`` over the draw)."""

_SKILLS: dict[str, tuple[Callable[[random.Random, str], dict[str, Any]], Templates]] = {
    "arithmetic": (_draw_arithmetic, {
        "qa": ("{story} {question}", "{r}"),
        "rationale": ("{story} {question} Explain briefly.",
                      "{name} computes {a} {op} {b} = {r}, which gives {r} {items}."),
        "instruction": ("Calculate {a} {word} {b}.", "{a} {op} {b} = {r}"),
        "chat": ("My kid asked me this and I am not sure: {story} {question}",
                 "{name} has {r} {items}. You get it from {a} {op} {b} = {r}."),
    }),
    "capitals": (_draw_capitals, {
        "qa": ("What is the capital of {country}?", "{capital}"),
        "instruction": ("Name the capital city of {country}.",
                        "The capital city of {country} is {capital}."),
        "fill_in": ("Fill in the blank: The capital of {country} is ____.", "{capital}"),
        "chat": ("I am visiting {capital} next month. Which country is it the capital of?",
                 "{capital} is the capital of {country}. Enjoy your trip!"),
    }),
    "weekdays": (_draw_weekdays, {
        "qa": ("If today is {day}, what day of the week will it be in {n_days}?", "{res}"),
        "fill_in": ("Fill in the blank: The day that comes {n_days} after {day} is ____.",
                    "{res}"),
        "rationale": ("Today is {day}. What day of the week was it {n_days} ago? Give a "
                      "short explanation.",
                      "Counting back from {day}: {chain}. It was {res}."),
        "chat": ("My meeting is on {day} and my report is due {n_days} before it. Which "
                 "day is the report due?", "Your report is due on {res}."),
    }),
    "antonyms": (_draw_antonyms, {
        "qa": ('What is the opposite of "{word}"?', "{answer}"),
        "instruction": ('Give one synonym for the word "{word}".', "{answer}"),
        "fill_in": ("Complete the analogy: {anchor} is to {anchor_answer} as {word} is "
                    "to ____.", "{answer}"),
        "chat": ("I keep mixing up words. What is the opposite of {word}?",
                 'The opposite of "{word}" is "{answer}".'),
    }),
    "sentiment": (_draw_sentiment, {
        "qa": ('Review: "{review}"\nIs this review positive or negative?', "{label}"),
        "instruction": ("Classify the sentiment of this sentence as positive or "
                        "negative.\n{review}", "{Label}"),
        "rationale": ('What is the sentiment of this review? "{review}" Give a short '
                      "reason.", 'Calling it "{adj}" is {kind}, so the review is {label}.'),
        "chat": ('My friend texted me: "{review}" Do you think they liked it?',
                 '{liked}: calling it "{adj}" is clearly {label}.'),
    }),
    "units": (_draw_units, {
        "qa": ("How many {to} are in {v} {frm}?", "{r}"),
        "instruction": ("Convert {v} {frm} to {to}.", "{v} {frm} = {r} {to}"),
        "fill_in": ("Fill in the blank: {v} {frm} = ____ {to}.", "{r}"),
        "rationale": ("How many {to} is {v} {frm}? Explain the conversion.",
                      "One {one} is {f} {to}, so {v} {frm} is {v} * {f} = {r} {to}."),
    }),
    "spelling": (_draw_spelling, {
        "qa": ('How many letters are in the word "{word}"?', "{n}"),
        "instruction": ('Write the word "{word}" backwards.', "{rev}"),
        "fill_in": ('Fill in the blanks: the word "{word}" starts with the letter ____ '
                    "and ends with the letter ____.", "{first}, {last}"),
        "chat": ("How do you spell {word}? Please list the letters one by one.",
                 "Sure, it is spelled {spelled}."),
    }),
    "french": (_draw_french, {
        "qa": ('What is the French word for "{en}"?', "{fr}"),
        "instruction": ("Translate this word into French: {en}", "{fr}"),
        "fill_in": ('Fill in the blank: the English word "{en}" is "____" in French.',
                    "{fr}"),
        "chat": ("I am learning French. How do I say {en}?", 'In French, {en} is "{fr}".'),
    }),
    "sorting": (_draw_sorting, {
        "instruction": ("Sort these numbers from smallest to largest: {listed}", "{asc}"),
        "qa": ("What is the largest number in the list {listed}?", "{mx}"),
        "fill_in": ("Fill in the blank: {listed} sorted from largest to smallest is ____.",
                    "{desc}"),
        "chat": ("My game scores this week were {and_list}. What was my lowest score?",
                 "Your lowest score was {mn}."),
    }),
    "chitchat": (_draw_chitchat, {
        "greeting": ("{greet} {ask}", "{reply}"),
        "advice": ("Can you give me a tip for {topic}?", "{tip}"),
        "opinion": ("What do you think about {thing}?", "{opinion}"),
        "smalltalk": ("I just {event}.", "That is great to hear, congratulations! How do "
                      "you feel about it?", "Pretty good, thanks.",
                      "Glad to hear it. Enjoy the moment!"),
    }),
}  # fmt: skip


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
    draw, templates = _SKILLS[skill]
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
    for skill, (_, templates) in _SKILLS.items():
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


def _target_arithmetic(rng: random.Random) -> tuple[tuple[str, str], dict[str, Any]]:
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(5, 30), rng.randint(2, 6), rng.randint(2, 9)
    bc = b * c
    d = rng.randint(2, min(9, a + bc - 1))
    s, r = a + bc, a + bc - d
    prompt = (f"Q: {name} has {a} {items}, buys {b} packs of {c} and then gives {d} "
              f"away. How many {items} does {name} have now?\n"
              "A: Let's think step by step.")  # fmt: skip
    answer = (f"{b} packs of {c} is {b} * {c} = {bc}. {a} + {bc} = {s}. After giving {d} "
              f"away, {s} - {d} = {r}. So the answer is {r}.")  # fmt: skip
    return (prompt, answer), dict(a=a, b=b, c=c, d=d, r=r)


def _target_capitals(rng: random.Random) -> tuple[tuple[str, str], dict[str, Any]]:
    country = rng.choice(sorted(_CAPITALS))
    capital = _CAPITALS[country]
    options = rng.sample(sorted(set(_CAPITALS.values()) - {capital}), 3) + [capital]
    rng.shuffle(options)
    letter = "ABCD"[options.index(capital)]
    lines = "\n".join(f"{k}. {o}" for k, o in zip("ABCD", options, strict=True))
    prompt = ("The following are multiple choice questions (with answers) about world "
              f"geography.\n\nWhich city is the capital of {country}?\n{lines}\n"
              "Answer:")  # fmt: skip
    # The option text follows the letter so the capital itself is in the completion.
    return (prompt, f"{letter}. {capital}"), dict(
        country=country, capital=capital, options=options, letter=letter
    )


def _target_weekdays(rng: random.Random) -> tuple[tuple[str, str], dict[str, Any]]:
    start = rng.randrange(7)
    n = rng.choice([k for k in range(8, 41) if k % 7])
    q, m = divmod(n, 7)
    day, res = _DAYS[start], _DAYS[(start + n) % 7]
    prompt = (f"Q: Today is {day}. What day of the week will it be {n} days from now?"
              "\nA: Let's think step by step.")  # fmt: skip
    answer = (f"A week has 7 days, so {n} days is {_plural(q, 'week')} and "
              f"{_plural(m, 'day')}. After {_plural(q, 'week')} it is {day} again, and "
              f"{_plural(m, 'day')} after {day} is {res}. So the answer is {res}.")  # fmt: skip
    return (prompt, answer), dict(day=day, n=n, res=res)


_TARGETS = {
    "arithmetic_cot": ("arithmetic", "bbh_cot", _target_arithmetic),
    "capitals_mc": ("capitals", "mmlu_mc", _target_capitals),
    "weekdays_cot": ("weekdays", "bbh_cot", _target_weekdays),
}


def demo_target_examples(seed: int = 0, n_shots: int = 4) -> list[DemoExample]:
    """Target shots per subtask (distinct prompts), in subtask order; ``form`` is the
    target format and ``source`` the subtask name."""
    out: list[DemoExample] = []
    for subtask, (skill, form, make) in _TARGETS.items():
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
