"""Target-task metrics after fine-tuning: MMLU, BBH, span QA (TydiQA/SQuAD), GSM8K,
TruthfulQA MC2, and the held-out completion loss every run records.

Prompts follow the open-instruct evaluation the paper used (appendix B) with one
deliberate change: the answer cue (``Answer:``, ``A:``) ends the *user* turn, exactly as
in :mod:`less_lab.targets`, so the examples LESS selected for are formatted like the ones
the model is tested on (open-instruct appends the cue after ``<|assistant|>``). Prompts
are tokenized by :func:`less_lab.data.tokenize`, i.e. in the training chat format with
the training truncation. Every evaluator returns one row per subtask and an ``average``
row (the macro mean over subtasks, as the paper reports BBH and TydiQA; with equal
subtask sizes it equals open-instruct's micro-averaged MMLU). Scores are percentages;
losses are nats per completion token.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from .batching import IGNORE, collate, token_budget_batches
from .config import DataConfig
from .data import MESSAGES_DTYPE, DataError, tokenize
from .lora import _decoder_and_head, example_losses
from .targets import TARGET_SCHEMA, TYDIQA_INSTRUCTION, _csv_rows, _mmlu_question

EvalFn = Callable[[Any, Any], pl.DataFrame]
"""``(model, tokenizer) -> summary frame``: what fine-tuning and ``compare`` call."""
LETTERS = ("A", "B", "C", "D")
PERCENT = ("accuracy", "exact_match", "f1", "mc2")
DEFAULT_DATA = DataConfig()
_PUNCT = frozenset(string.punctuation)

# --------------------------------------------------------------------------- metrics


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the,
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # SQuAD v2 convention; v1 gives 0 even when both are empty
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-overlap F1 against the best-matching gold answer."""
    return max((_f1(prediction, g) for g in golds), default=0.0)


_BBH_MARK = "So the answer is"


def parse_bbh_answer(generation: str) -> str:
    """The answer of a BBH chain of thought: the rest of the line after the last
    "So the answer is" in the first block (a model that goes on to invent the next
    ``Q:`` after a blank line is not read past it), without trailing period/space."""
    block = generation.strip().split("\n\n")[0]
    if _BBH_MARK in block:
        answer = block.rsplit(_BBH_MARK, 1)[1].split("\n")[0]
    else:  # no marker: the whole block, as open-instruct falls back to
        answer = block
    return " ".join(answer.split()).rstrip(". ").strip()


def bbh_match(prediction: str, target: str, *, lenient: bool = False) -> bool:
    """Exact match after whitespace normalisation. ``lenient`` also ignores case and
    punctuation, like open-instruct's ``exact_match`` (then "A" matches "(A)")."""
    pred, ref = " ".join(prediction.split()), " ".join(target.split())
    if lenient:
        strip = str.maketrans("", "", string.punctuation)
        pred, ref = pred.lower().translate(strip).strip(), ref.lower().translate(strip).strip()
    return pred == ref


_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def parse_last_number(text: str) -> float | None:
    """The last number in ``text`` ("1,234.5" -> 1234.5, "-3" -> -3), or None."""
    found = [m.replace(",", "") for m in _NUMBER.findall(text)]
    found = [m for m in found if m not in ("-", "", ".")]
    return float(found[-1]) if found else None


def gsm8k_gold(answer: str) -> float:
    """The number after ``####`` in a GSM8K answer."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####': {answer[-60:]!r}")
    value = parse_last_number(answer.split("####")[-1])
    if value is None:
        raise ValueError(f"GSM8K answer has no number after '####': {answer[-60:]!r}")
    return value


def mc2_score(logliks: Sequence[float], labels: Sequence[int]) -> float:
    """TruthfulQA MC2: probability mass of the true answers, normalised over all answers
    (sequence probabilities exp(sum log p), combined in log space for stability)."""
    ll, lab = np.asarray(logliks, dtype=np.float64), np.asarray(labels, dtype=bool)
    if ll.shape != lab.shape or not lab.any():
        raise ValueError("mc2 needs one label per choice and at least one true answer")
    total = np.logaddexp.reduce(ll)
    return float(np.exp(np.logaddexp.reduce(ll[lab]) - total))


def summarize(examples: pl.DataFrame, metrics: Sequence[str], by: str = "subtask") -> pl.DataFrame:
    """Per-subtask means (``PERCENT`` metrics x100) with ``n``, then an ``average`` row
    that is the mean over subtasks."""
    scale = [pl.col(m).cast(pl.Float64).mean() * (100 if m in PERCENT else 1) for m in metrics]
    rows = examples.group_by(by).agg(pl.len().alias("n"), *scale).sort(by)
    rows = rows.rename({by: "subtask"}).with_columns(pl.col("n").cast(pl.Int64))
    avg = rows.select(
        pl.lit("average").alias("subtask"), pl.col("n").sum(), *[pl.col(m).mean() for m in metrics]
    )
    return pl.concat([rows, avg])


# --------------------------------------------------------------------------- model calls


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; restores the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_prompts(prompts: Sequence[str], tokenizer: Any, data_cfg: DataConfig) -> list[list[int]]:
    """Token ids of single-turn user prompts up to the assistant header, built by the
    training tokenizer (a dummy completion is cut off), so chat format, BOS and prompt
    truncation are exactly those of training."""
    frame = pl.DataFrame(
        {
            "example_id": [str(i) for i in range(len(prompts))],
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]
                for p in prompts
            ],
        },
        schema={"example_id": pl.String, "messages": MESSAGES_DTYPE},
    )
    tok, _ = tokenize(frame, tokenizer, data_cfg)
    out = []
    for ids, labels in zip(tok["input_ids"].to_list(), tok["labels"].to_list(), strict=True):
        first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
        out.append(ids[:first])
    return out


def _batches(
    lengths: Sequence[int], token_budget: int, max_batch: int | None, desc: str, progress: bool
) -> Iterator[list[int]]:
    batches = token_budget_batches(lengths, token_budget, max_batch)
    yield from tqdm(batches, desc=desc, unit="batch", disable=not progress or len(batches) < 2)


def _score(
    model,
    seqs: list[list[int]],
    starts: list[int],
    cands: list[list[int]] | None,
    token_budget: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, list]:
    """For each sequence: sum of log p(token) over positions >= start, and (if ``cands``)
    the next-token log-probs of its candidate ids after the whole sequence."""
    body, head = _decoder_and_head(model)
    sums, cand_lp = np.zeros(len(seqs)), [None] * len(seqs)
    with inference(model):
        for idx in _batches([len(s) for s in seqs], token_budget, None, desc, progress):
            batch = collate([seqs[i] for i in idx], [seqs[i] for i in idx], 0)
            hidden = body(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            for row, i in enumerate(idx):
                n, a = len(seqs[i]), starts[i]
                if a < n:
                    logp = torch.log_softmax(head(hidden[row, a - 1 : n - 1]).float(), -1)
                    target = torch.as_tensor(seqs[i][a:n]).unsqueeze(1)
                    sums[i] = logp.gather(1, target).sum().item()
                if cands is not None:
                    last = torch.log_softmax(head(hidden[row, n - 1]).float(), -1)
                    cand_lp[i] = last[torch.as_tensor(cands[i])].tolist()
    return sums, cand_lp


def continuation_logliks(
    model,
    prompts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    token_budget: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """log p(continuation | prompt) summed over the continuation's tokens (the plain
    definition; ``choice_logliks`` is the shared-prefix fast path of it)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    return _score(model, seqs, [len(p) for p in prompts], None, token_budget, progress, "score")[0]


def choice_logliks(
    model,
    prompts: Sequence[list[int]],
    choices: Sequence[Sequence[list[int]]],
    *,
    token_budget: int = 4096,
    progress: bool = False,
) -> list[list[float]]:
    """log p(choice | prompt) for every choice of every prompt. When a prompt's choices
    are one shared prefix plus one distinct last token (" A".." D" as one token each, or
    as " " + letter) a single forward pass scores them all."""
    shared_seqs, shared_starts, shared_cands, shared_of = [], [], [], {}
    plain_p, plain_c, plain_of = [], [], []
    for i, (p, cs) in enumerate(zip(prompts, choices, strict=True)):
        prefix = cs[0][:-1] if cs and cs[0] else None
        if prefix is not None and all(len(c) == len(prefix) + 1 and c[:-1] == prefix for c in cs):
            shared_of[i] = len(shared_seqs)
            shared_seqs.append(list(p) + list(prefix))
            shared_starts.append(len(p))
            shared_cands.append([c[-1] for c in cs])
        else:
            for j, c in enumerate(cs):
                plain_p.append(p)
                plain_c.append(c)
                plain_of.append((i, j))
    out = [[0.0] * len(cs) for cs in choices]
    if shared_seqs:
        sums, cand = _score(
            model, shared_seqs, shared_starts, shared_cands, token_budget, progress, "choices"
        )
        for i, k in shared_of.items():
            out[i] = [sums[k] + lp for lp in cand[k]]
    if plain_p:
        lls = continuation_logliks(
            model, plain_p, plain_c, token_budget=token_budget, progress=progress
        )
        for (i, j), ll in zip(plain_of, lls, strict=True):
            out[i][j] = float(ll)
    return out


def generate(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    token_budget: int = 8192,
    max_batch: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of tokenized prompts, batched by length (left padding), each
    cut at EOS and at the first of the ``stop`` strings."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    lengths = [len(p) + max_new_tokens for p in prompts]
    out = [""] * len(prompts)
    with inference(model):
        for idx in _batches(lengths, token_budget, max_batch, "generate", progress):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.as_tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            until = StoppingCriteriaList([_StopText(tokenizer, stop, width)] if stop else [])
            gen = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=cfg, stopping_criteria=until
            )
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id)]
                out[i] = _cut(tokenizer.decode(new, skip_special_tokens=True), stop)
    return out


class _StopText(StoppingCriteria):
    """Stop a row once its generated text contains a stop string. Decoding the new tokens
    each step is cheap next to a forward pass, unlike ``stop_strings``, whose per-call
    vocabulary tables cost seconds with a 49k vocabulary."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, list(stop), start

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _cut(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        text = text.split(s)[0]
    return text


# --------------------------------------------------------------------------- held-out loss


def example_loss_frame(
    model,
    tokenized: pl.DataFrame,
    token_budget: int = 4096,
    *,
    pad_id: int = 0,
    progress: bool = True,
) -> pl.DataFrame:
    """Per-example completion loss (mean token cross-entropy) of a tokenized frame."""
    losses = np.zeros(tokenized.height)
    ids, labels = tokenized["input_ids"].to_list(), tokenized["labels"].to_list()
    with inference(model):
        for idx in _batches(tokenized["n_tokens"].to_list(), token_budget, None, "loss", progress):
            batch = collate([ids[i] for i in idx], [labels[i] for i in idx], pad_id)
            losses[idx] = example_losses(model, batch).double().numpy()
    group = next((c for c in ("subtask", "source") if c in tokenized.columns), None)
    sub = tokenized[group] if group else pl.Series(["all"] * tokenized.height)
    return pl.DataFrame({"example_id": tokenized["example_id"], "subtask": sub, "loss": losses})


def heldout_loss(
    model,
    tokenized: pl.DataFrame,
    token_budget: int = 4096,
    *,
    pad_id: int = 0,
    progress: bool = True,
) -> pl.DataFrame:
    """Mean completion loss per subtask (``subtask``, else ``source`` column) and their
    mean: the cheap metric every fine-tuning run records (appendix I's loss view)."""
    frame = example_loss_frame(model, tokenized, token_budget, pad_id=pad_id, progress=progress)
    return summarize(frame, ["loss"])


# --------------------------------------------------------------------------- readers


def _subsample(rows: list, n: int | None, seed: int, key: str) -> list:
    """At most ``n`` rows, drawn with a seed derived from (seed, key), in file order."""
    if n is None or len(rows) <= n:
        return rows
    rng = np.random.default_rng([seed, *key.encode()])
    keep = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
    return [rows[i] for i in keep]


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "example_id": pl.String,
            "subtask": pl.String,
            "prompt": pl.String,
            "answer": pl.String,
        },
    )


def _mmlu_records(path: Path) -> list[list[str]]:
    recs = []
    for line, fields in _csv_rows(path):
        if not fields:
            continue
        if len(fields) != 6 or fields[5].strip() not in LETTERS:
            raise DataError(
                f"row with {len(fields)} fields",
                path=path,
                line=line,
                expected="question,A,B,C,D,answer with answer in A-D",
            )
        recs.append(fields)
    return recs


def mmlu_examples(
    mmlu_dir: str | Path,
    *,
    k: int = 5,
    max_per_subject: int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """MMLU test questions with their k-shot prompts (first k dev rows, as open-instruct
    and :mod:`less_lab.targets` build them): ``example_id, subtask, prompt, answer``."""
    root = Path(mmlu_dir)
    files = sorted((root / "test").glob("*_test.csv"))
    if not files:
        raise DataError("no test/*_test.csv files", path=root, expected="the MMLU layout")
    rows = []
    for test in files:
        subject = test.name[: -len("_test.csv")]
        if subjects is not None and subject not in subjects:
            continue
        dev = _mmlu_records(root / "dev" / f"{subject}_dev.csv")[:k] if k else []
        header = (
            "The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n"
        )
        shots = "".join(f"{_mmlu_question(f)} {f[5].strip()}\n\n" for f in dev)
        records = list(enumerate(_mmlu_records(test)))
        for i, f in _subsample(records, max_per_subject, seed, subject):
            rows.append(
                {
                    "example_id": f"mmlu_{subject}_test_{i}",
                    "subtask": subject,
                    "prompt": header + shots + _mmlu_question(f),
                    "answer": f[5].strip(),
                }
            )
    return _frame(rows)


def bbh_examples(
    bbh_dir: str | Path,
    *,
    max_per_task: int | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    skip_shots: bool = True,
) -> pl.DataFrame:
    """BBH test questions under their task's 3-shot CoT prompt (``bbh-three-shot.json`` +
    ``\\n\\nQ: {input}\\nA:``). ``skip_shots`` leaves out test questions that appear
    verbatim among the prompt's own exemplars (their answer is in the prompt)."""
    root = Path(bbh_dir)
    shots_file = root / "bbh-three-shot.json"
    prompts = json.loads(shots_file.read_text(encoding="utf-8"))
    rows = []
    for task in sorted(prompts):
        if tasks is not None and task not in tasks:
            continue
        test = root / "test" / f"{task}.json"
        if not test.exists():
            raise DataError(
                f"no test file for task {task!r}",
                path=test,
                expected='{"examples": [{"input", "target"}]}',
            )
        base = prompts[task].strip()
        records = list(enumerate(json.loads(test.read_text(encoding="utf-8"))["examples"]))
        if skip_shots:
            records = [(i, r) for i, r in records if f"Q: {r['input']}\nA:" not in base]
        for i, r in _subsample(records, max_per_task, seed, task):
            rows.append(
                {
                    "example_id": f"bbh_{task}_test_{i}",
                    "subtask": task,
                    "prompt": f"{base}\n\nQ: {r['input']}\nA:",
                    "answer": r["target"],
                }
            )
    return _frame(rows)


def as_targets(examples: pl.DataFrame, answer_prefix: str = "") -> pl.DataFrame:
    """Test questions as target-format rows (user prompt, assistant answer) so held-out
    loss is measured on exactly the evaluation prompts."""
    msgs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": answer_prefix + a}]
        for p, a in zip(examples["prompt"], examples["answer"], strict=True)
    ]
    raw = [
        json.dumps({"id": i, "subtask": s, "messages": m}, ensure_ascii=False)
        for i, s, m in zip(examples["example_id"], examples["subtask"], msgs, strict=True)
    ]
    return pl.DataFrame(
        {
            "example_id": examples["example_id"],
            "source": ["test"] * len(raw),
            "subtask": examples["subtask"],
            "messages": msgs,
            "raw": raw,
        },
        schema=TARGET_SCHEMA,
    )


# --------------------------------------------------------------------------- evaluators


def evaluate_mmlu(
    model,
    tokenizer,
    mmlu_dir,
    *,
    k: int = 5,
    max_per_subject: int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """k-shot MMLU accuracy: the letter whose continuation ``X`` opening the assistant turn
    (the target format's completion, no leading space) is most likely."""
    ex = mmlu_examples(mmlu_dir, k=k, max_per_subject=max_per_subject, subjects=subjects, seed=seed)
    prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, data_cfg)
    letters = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LETTERS]
    lls = choice_logliks(
        model, prompts, [letters] * len(prompts), token_budget=token_budget, progress=progress
    )
    pred = [LETTERS[int(np.argmax(ll))] for ll in lls]
    ex = ex.with_columns(prediction=pl.Series(pred), logliks=pl.Series(lls))
    ex = ex.with_columns(accuracy=pl.col("prediction") == pl.col("answer"))
    return ex if return_examples else summarize(ex, ["accuracy"])


def _generative(
    model,
    tokenizer,
    ex: pl.DataFrame,
    *,
    max_new_tokens: int,
    stop: Sequence[str],
    data_cfg: DataConfig,
    token_budget: int,
    progress: bool,
) -> pl.DataFrame:
    prompts = encode_prompts(ex["prompt"].to_list(), tokenizer, data_cfg)
    text = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        stop=stop,
        token_budget=token_budget,
        progress=progress,
    )
    return ex.with_columns(generation=pl.Series(text, dtype=pl.String))


def evaluate_bbh(
    model,
    tokenizer,
    bbh_dir,
    *,
    max_per_task: int | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    lenient: bool = False,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """3-shot chain-of-thought exact match (greedy; the answer follows the last
    "So the answer is")."""
    ex = bbh_examples(bbh_dir, max_per_task=max_per_task, tasks=tasks, seed=seed)
    ex = _generative(
        model,
        tokenizer,
        ex,
        max_new_tokens=max_new_tokens,
        stop=("\n\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [parse_bbh_answer(g) for g in ex["generation"]]
    em = [bbh_match(p, t, lenient=lenient) for p, t in zip(pred, ex["answer"], strict=True)]
    ex = ex.with_columns(prediction=pl.Series(pred, dtype=pl.String), exact_match=pl.Series(em))
    return ex if return_examples else summarize(ex, ["exact_match"])


def _records(path: Path) -> list[tuple[int, dict]]:
    """``(line, object)`` of a JSONL file, or of a JSON array (line = 1-based index)."""
    from .data import iter_json_lines, load_json_object

    if path.read_bytes()[:1] == b"[":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for line, text in iter_json_lines(path, 8_000_000):
        if isinstance(text, DataError):
            raise text
        out.append((line, load_json_object(text, path, line)))
    return out


def _squad_rows(path: Path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    try:
        for article in data["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    golds = [a["text"] for a in qa["answers"]]
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "context": para["context"],
                            "question": qa["question"],
                            "golds": golds,
                        }
                    )
    except (KeyError, TypeError) as err:
        raise DataError(
            f"not SQuAD format (missing {err})",
            path=path,
            expected='{"data":[{"paragraphs":[{"context","qas":[...]}]}]}',
        ) from None
    return rows


def _qa_block(context: str, question: str) -> str:
    return f"Passage: {context}\nQuestion: {question}\nAnswer:"


def evaluate_squad(
    model,
    tokenizer,
    path,
    *,
    shots: str | Path | dict | None = None,
    n_shot: int = 1,
    max_per_subtask: int | None = None,
    seed: int = 0,
    max_context_tokens: int | None = 512,
    max_new_tokens: int = 50,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """Span QA in the gold-passage setup (TydiQA GoldP or any SQuAD-format JSON): F1 and
    exact match, max over gold answers. Subtask = the id's prefix before ``-`` (TydiQA
    ids start with the language), else ``all``. ``shots``: ``tydiqa-one-shot.json`` or
    ``{subtask: [{context, question, answers}]}``; a subtask without shots is zero-shot.
    Contexts are cut to ``max_context_tokens`` as open-instruct does."""
    if isinstance(shots, (str, Path)):
        shots = json.loads(Path(shots).read_text(encoding="utf-8"))
    shots = shots or {}

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_context_tokens is None or len(ids) <= max_context_tokens:
            return text
        return tokenizer.decode(ids[:max_context_tokens])

    by_sub: dict[str, list] = {}
    for r in _squad_rows(Path(path)):
        by_sub.setdefault(r["id"].split("-")[0] if "-" in r["id"] else "all", []).append(r)
    rows = []
    for sub in sorted(by_sub):
        demo = "".join(
            f"{_qa_block(cut(s['context']), s['question'])} {s['answers'][0]['text']}\n\n"
            for s in shots.get(sub, [])[:n_shot]
        )
        for r in _subsample(by_sub[sub], max_per_subtask, seed, sub):
            prompt = f"{TYDIQA_INSTRUCTION}\n\n{demo}{_qa_block(cut(r['context']), r['question'])}"
            rows.append(
                {
                    "example_id": r["id"],
                    "subtask": sub,
                    "prompt": prompt,
                    "answer": r["golds"][0] if r["golds"] else "",
                    "golds": r["golds"],
                }
            )
    ex = pl.DataFrame(
        rows,
        schema={
            "example_id": pl.String,
            "subtask": pl.String,
            "prompt": pl.String,
            "answer": pl.String,
            "golds": pl.List(pl.String),
        },
    )
    ex = _generative(
        model,
        tokenizer,
        ex,
        max_new_tokens=max_new_tokens,
        stop=("\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [g.strip() for g in ex["generation"]]
    golds = ex["golds"].to_list()
    ex = ex.with_columns(
        prediction=pl.Series(pred, dtype=pl.String),
        f1=pl.Series([squad_f1(p, g) for p, g in zip(pred, golds, strict=True)]),
        exact_match=pl.Series([squad_exact_match(p, g) for p, g in zip(pred, golds, strict=True)]),
    )
    return ex if return_examples else summarize(ex, ["f1", "exact_match"])


def evaluate_tydiqa(model, tokenizer, dev_json, *, shots_json=None, **kw) -> pl.DataFrame:
    """TydiQA GoldP 1-shot F1 (shots from the LESS ``tydiqa-one-shot.json``)."""
    return evaluate_squad(model, tokenizer, dev_json, shots=shots_json, n_shot=1, **kw)


GSM_INSTRUCTION = "Answer the following questions.\n\n"


def _gsm_shot(question: str, answer: str) -> str:
    rationale = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    final = answer.split("####")[-1].strip()
    return f"Question: {question.strip()}\nAnswer: {rationale}\nSo the answer is {final}.\n\n"


def evaluate_gsm8k(
    model,
    tokenizer,
    path,
    *,
    shots_path=None,
    n_shot: int = 8,
    max_examples: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 8192,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """GSM8K n-shot chain-of-thought exact match on the last number generated. Shots are
    the first ``n_shot`` records of ``shots_path`` (e.g. the train split), else of
    ``path`` itself, which are then not evaluated."""
    path = Path(path)
    recs = []
    for line, r in _records(path):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise DataError("needs 'question' and 'answer' strings", path=path, line=line)
        recs.append(r)
    shot_recs = [r for _, r in _records(Path(shots_path))] if shots_path else recs
    demo = "".join(_gsm_shot(r["question"], r["answer"]) for r in shot_recs[:n_shot])
    if not shots_path:
        recs = recs[n_shot:]
    recs = _subsample(list(enumerate(recs)), max_examples, seed, "gsm8k")
    rows = [
        {
            "example_id": f"gsm8k_{i}",
            "subtask": "gsm8k",
            "prompt": f"{GSM_INSTRUCTION}{demo}Question: {r['question'].strip()}\nAnswer:",
            "answer": repr(gsm8k_gold(r["answer"])),
        }
        for i, r in recs
    ]
    ex = _generative(
        model,
        tokenizer,
        _frame(rows),
        max_new_tokens=max_new_tokens,
        stop=("\n\n",),
        data_cfg=data_cfg,
        token_budget=token_budget,
        progress=progress,
    )
    pred = [parse_last_number(g) for g in ex["generation"]]
    em = [
        p is not None and math.isclose(p, float(a), abs_tol=1e-6)
        for p, a in zip(pred, ex["answer"], strict=True)
    ]
    ex = ex.with_columns(prediction=pl.Series(pred, dtype=pl.Float64), exact_match=pl.Series(em))
    return ex if return_examples else summarize(ex, ["exact_match"])


def evaluate_truthfulqa_mc2(
    model,
    tokenizer,
    path,
    *,
    primer: str = "",
    max_examples: int | None = None,
    seed: int = 0,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    progress: bool = True,
    return_examples: bool = False,
) -> pl.DataFrame:
    """TruthfulQA MC2: prompt ``{primer}Q: {question}\\nA:``, each choice scored as the
    continuation " {choice}"; subtask = ``category`` when present."""
    path = Path(path)
    rows = []
    for line, r in _records(path):
        t = r.get("mc2_targets") or {}
        if (
            not isinstance(r.get("question"), str)
            or len(t.get("choices", [])) != len(t.get("labels", [None]))
            or not any(t.get("labels", []))
        ):
            raise DataError(
                "needs 'question' and mc2_targets {choices, labels} with a true label",
                path=path,
                line=line,
            )
        rows.append((line, r))
    rows = _subsample(rows, max_examples, seed, "truthfulqa")
    texts = [f"{primer}Q: {r['question']}\nA:" for _, r in rows]
    prompts = encode_prompts(texts, tokenizer, data_cfg)
    choices = [
        [
            tokenizer(c.strip(), add_special_tokens=False)["input_ids"]
            for c in r["mc2_targets"]["choices"]
        ]
        for _, r in rows
    ]
    lls = choice_logliks(model, prompts, choices, token_budget=token_budget, progress=progress)
    mc2 = [mc2_score(ll, r["mc2_targets"]["labels"]) for ll, (_, r) in zip(lls, rows, strict=True)]
    ex = pl.DataFrame(
        {
            "example_id": [f"truthfulqa_{n}" for n, _ in rows],
            "subtask": [str(r.get("category", "truthfulqa")) for _, r in rows],
            "mc2": mc2,
        }
    )
    return ex if return_examples else summarize(ex, ["mc2"])


def loss_eval(
    targets: pl.DataFrame,
    *,
    data_cfg: DataConfig = DEFAULT_DATA,
    token_budget: int = 4096,
    progress: bool = False,
) -> EvalFn:
    """An ``EvalFn`` giving the held-out loss of target-format rows (tokenized once per
    tokenizer, then reused every epoch)."""
    cache: dict[int, pl.DataFrame] = {}

    def run(model, tokenizer) -> pl.DataFrame:
        if id(tokenizer) not in cache:
            cache[id(tokenizer)] = tokenize(targets, tokenizer, data_cfg)[0]
        return heldout_loss(
            model,
            cache[id(tokenizer)],
            token_budget,
            pad_id=tokenizer.pad_token_id or 0,
            progress=progress,
        )

    return run


EVALS = {
    "mmlu": evaluate_mmlu,
    "bbh": evaluate_bbh,
    "squad": evaluate_squad,
    "tydiqa": evaluate_squad,
    "gsm8k": evaluate_gsm8k,
    "truthfulqa": evaluate_truthfulqa_mc2,
}


def make_eval(
    kind: str,
    path: str | Path,
    *,
    max_per_subtask: int | None = None,
    data_cfg: DataConfig = DEFAULT_DATA,
    progress: bool = False,
    **kw,
) -> EvalFn:
    """An ``EvalFn`` by name: ``mmlu``, ``bbh``, ``squad``/``tydiqa``, ``gsm8k``,
    ``truthfulqa`` (accuracy-type metrics) or ``mmlu-loss``/``bbh-loss`` (held-out loss
    on the same test questions in target format) or ``loss`` (any target layout)."""
    sub = {
        "mmlu": "max_per_subject",
        "mmlu-loss": "max_per_subject",
        "bbh": "max_per_task",
        "bbh-loss": "max_per_task",
        "squad": "max_per_subtask",
        "tydiqa": "max_per_subtask",
        "gsm8k": "max_examples",
        "truthfulqa": "max_examples",
    }
    if max_per_subtask is not None and kind in sub:
        kw[sub[kind]] = max_per_subtask
    if kind in ("mmlu-loss", "bbh-loss"):
        reader = mmlu_examples if kind == "mmlu-loss" else bbh_examples
        return loss_eval(as_targets(reader(path, **kw)), data_cfg=data_cfg, progress=progress)
    if kind == "loss":
        from .targets import read_targets

        return loss_eval(read_targets(path), data_cfg=data_cfg, progress=progress)
    if kind not in EVALS:
        raise ValueError(
            f"unknown evaluation {kind!r}; expected one of "
            f"{sorted([*EVALS, 'mmlu-loss', 'bbh-loss', 'loss'])}"
        )
    fn = EVALS[kind]
    return lambda model, tokenizer: fn(
        model, tokenizer, path, data_cfg=data_cfg, progress=progress, **kw
    )
