"""What each demo skill generates: one draw function and one set of turn templates per
skill and surface form for the pool, and one generator per target subtask.

Why its own module: these are the demo's content (what an example says and why its answer
is right); ``demo_pool`` only assembles them into seeded, distinct examples and frames.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from less_lab.data.demo_words import (
    ANTONYMS,
    ASKS,
    CAPITALS,
    DAYS,
    EVENTS,
    FRENCH,
    GREETINGS,
    ITEMS,
    NAMES,
    NEGATIVE,
    OPINIONS,
    POSITIVE,
    REPLIES,
    SUBJECTS,
    SYNONYMS,
    TAILS,
    THINGS,
    TIPS,
    UNITS,
    WORDS,
    plural,
)


def _draw_arithmetic(rng: random.Random, form: str) -> dict[str, Any]:
    name, items, op = rng.choice(NAMES), rng.choice(ITEMS), rng.choice("+-*")
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
    country = rng.choice(sorted(CAPITALS))
    return dict(country=country, capital=CAPITALS[country])


def _draw_weekdays(rng: random.Random, form: str) -> dict[str, Any]:
    start = rng.randrange(7)
    n = {"qa": rng.randint(1, 20), "fill_in": rng.randint(1, 9)}.get(form, rng.randint(2, 5))
    step = -1 if form in ("rationale", "chat") else 1
    chain = ", ".join(DAYS[(start + step * i) % 7] for i in range(1, n + 1))
    return dict(day=DAYS[start], n=n, step=step, res=DAYS[(start + step * n) % 7],
                chain=chain, n_days=plural(n, "day"))  # fmt: skip


def _draw_antonyms(rng: random.Random, form: str) -> dict[str, Any]:
    table = SYNONYMS if form == "instruction" else ANTONYMS
    word = rng.choice(sorted(table))
    anchor = rng.choice(sorted(set(ANTONYMS) - {word}))
    return dict(relation="synonym" if form == "instruction" else "antonym", word=word,
                answer=table[word], anchor=anchor, anchor_answer=ANTONYMS[anchor])  # fmt: skip


def _draw_sentiment(rng: random.Random, form: str) -> dict[str, Any]:
    label = rng.choice(["positive", "negative"])
    adj = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    review = f"{rng.choice(SUBJECTS)} was {adj}. {rng.choice(TAILS[label])}".strip()
    liked = "Yes, they liked it" if label == "positive" else "No, they did not like it"
    return dict(label=label, Label=label.capitalize(), adj=adj, review=review, liked=liked,
                kind="praise" if label == "positive" else "criticism")  # fmt: skip


def _draw_units(rng: random.Random, form: str) -> dict[str, Any]:
    frm, one, to, factor = rng.choice(UNITS)
    v = rng.randint(2, 12)
    return dict(frm=frm, one=one, to=to, f=factor, v=v, r=v * factor)


def _draw_spelling(rng: random.Random, form: str) -> dict[str, Any]:
    w = rng.choice(WORDS)
    return dict(word=w, rev=w[::-1], n=len(w), first=w[0], last=w[-1],
                spelled="-".join(w.upper()))  # fmt: skip


def _draw_french(rng: random.Random, form: str) -> dict[str, Any]:
    en = rng.choice(sorted(FRENCH))
    return dict(en=en, fr=FRENCH[en])


def _draw_sorting(rng: random.Random, form: str) -> dict[str, Any]:
    nums = rng.sample(range(1, 100), rng.randint(4, 6))

    def join(xs: list[int]) -> str:
        return ", ".join(map(str, xs))

    return dict(nums=nums, listed=join(nums), asc=join(sorted(nums)),
                desc=join(sorted(nums, reverse=True)), mx=max(nums), mn=min(nums),
                and_list=f"{join(nums[:-1])} and {nums[-1]}")  # fmt: skip


def _draw_chitchat(rng: random.Random, form: str) -> dict[str, Any]:
    topic, thing = rng.choice(sorted(TIPS)), rng.choice(THINGS)
    return dict(greet=rng.choice(GREETINGS), ask=rng.choice(ASKS),
                reply=rng.choice(REPLIES), topic=topic, tip=TIPS[topic], thing=thing,
                opinion=rng.choice(OPINIONS).format(thing=thing),
                event=rng.choice(EVENTS))  # fmt: skip


Templates = dict[str, tuple[str, ...]]
"""form -> alternating user/assistant turn templates (``str.format`` over the draw)."""

SKILLS: dict[str, tuple[Callable[[random.Random, str], dict[str, Any]], Templates]] = {
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
"""skill -> (draw function, templates of each of its surface forms)."""


def _target_arithmetic(rng: random.Random) -> tuple[tuple[str, str], dict[str, Any]]:
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
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
    country = rng.choice(sorted(CAPITALS))
    capital = CAPITALS[country]
    options = rng.sample(sorted(set(CAPITALS.values()) - {capital}), 3) + [capital]
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
    day, res = DAYS[start], DAYS[(start + n) % 7]
    prompt = (f"Q: Today is {day}. What day of the week will it be {n} days from now?"
              "\nA: Let's think step by step.")  # fmt: skip
    answer = (f"A week has 7 days, so {n} days is {plural(q, 'week')} and "
              f"{plural(m, 'day')}. After {plural(q, 'week')} it is {day} again, and "
              f"{plural(m, 'day')} after {day} is {res}. So the answer is {res}.")  # fmt: skip
    return (prompt, answer), dict(day=day, n=n, res=res)


TARGETS: dict[
    str, tuple[str, str, Callable[[random.Random], tuple[tuple[str, str], dict[str, Any]]]]
] = {
    "arithmetic_cot": ("arithmetic", "bbh_cot", _target_arithmetic),
    "capitals_mc": ("capitals", "mmlu_mc", _target_capitals),
    "weekdays_cot": ("weekdays", "bbh_cot", _target_weekdays),
}
"""subtask -> (skill it tests, target format, generator of one ``(turns, facts)``)."""
