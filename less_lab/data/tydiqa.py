"""TydiQA prompts as open-instruct builds them, one template per language.

Shared by the target reader (``targets``: the few-shot TydiQA targets LESS scores
against, built with the same per-language templates as the reference's
``get_tydiqa_dataset``) and the test-set reader (``evalsets``), so target and test
prompts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": (
        "أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
        "المقطع:",
        "السؤال:",
        "الإجابة:",
    ),
    "bengali": (
        "প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।",
        "অধ্যায়:",
        "প্রশ্ন:",
        "উত্তর:",
    ),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": (
        "Ответьте на следующий вопрос на основе информации в данном отрывке.",
        "Отрывок:",
        "Вопрос:",
        "Ответ:",
    ),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": (
        "ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.",
        "పేరా:",
        "ప్రశ్న:",
        "సమాధానం:",
    ),
}
"""open-instruct's ``encoding_templates_with_context`` (``eval/tydiqa/run_eval.py``):
per language, (instruction, passage, question, answer) labels. A language without an
entry (a SQuAD-format set's ``all``) gets the English one."""


def tydiqa_prompt(
    lang: str,
    context: str,
    question: str,
    shots: Sequence[tuple[str, str, str]] = (),
    *,
    per_language: bool = True,
) -> str:
    """A gold-passage QA prompt as open-instruct builds it: the language's instruction,
    ``\n\n``, each shot ``(context, question, answer)`` as ``P: c\nQ: q\nA: a`` joined
    by blank lines, then ``P: c\nQ: q\nA:`` (here the answer label ends the user turn).
    ``per_language=False`` uses the English template for every language."""
    key = lang if per_language and lang in TYDIQA_TEMPLATES else "english"
    instruction, p_label, q_label, a_label = TYDIQA_TEMPLATES[key]
    demo = "".join(f"{p_label} {c}\n{q_label} {q}\n{a_label} {a}\n\n" for c, q, a in shots)
    return f"{instruction}\n\n{demo}{p_label} {context}\n{q_label} {question}\n{a_label}"
