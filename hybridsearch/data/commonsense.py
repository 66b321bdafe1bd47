"""Commonsense reasoning data in the LLM-Adapters format (AGI-Edgerunners/LLM-Adapters).

Files:

* ``commonsense_170k.json``: one JSON array of ``{"instruction", "input", "output", "answer"}`` records
  (``input`` is empty, ``output`` is ``"the correct answer is <answer>"``), mixing the eight training sets;
* ``dataset/<name>/test.json`` for the eight tasks in ``TASKS``, same schema.

Prompt: the Alpaca template of LLM-Adapters without the source indentation that its triple-quoted f-string
leaks into the text (``PROMPT`` below); training text is prompt + output + EOS, cut to ``cutoff_len`` tokens,
loss on all tokens by default (``train_on_inputs=True``, as MambaPEFT) or with the prompt masked to -100.

Two evaluators:

* ``evaluate_generation`` (LLM-Adapters' ``commonsense_evaluate.py``): keep the text after ``### Response:``,
  take the **first** match of the task's regex, ``""`` when none (counted wrong), exact string equality with
  ``answer``. LLM-Adapters matches **case-sensitively** and does not lower-case, so "True" is no answer for
  BoolQ; we do the same by default (``ignore_case=True`` is available and lower-cases the match).
* ``evaluate_likelihood``: rank ``"the correct answer is <label>"`` over the label set parsed from the
  instruction's "Answer format:" line by a caller-supplied summed log-probability; ties go to the first label.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safeio import load_json
from .tokenizers import TextTokenizer

TASKS: tuple[str, ...] = (
    "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa",
)
_ALIASES = {
    "siqa": "social_i_qa", "social_iqa": "social_i_qa", "arc_challenge": "ARC-Challenge",
    "arc_easy": "ARC-Easy", "obqa": "openbookqa",
}
# LLM-Adapters' extraction regexes (commonsense_evaluate.py, extract_answer).
ANSWER_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
RESPONSE_MARKER = "### Response:"
ANSWER_TEMPLATE = "the correct answer is {label}"
IGNORE_INDEX = -100
_FIELDS = ("instruction", "input", "output", "answer")
_ANSWER_FORMAT = re.compile(r"Answer format:\s*(\S[^\n]*)")
# the bundled WordNet task set (``hybridsearch pretrain commonsense-proxy``) in this layout, and its training file
BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "assets" / "commonsense_proxy"
TRAIN_FILE = "commonsense_proxy_train.json"


@dataclass(frozen=True)
class CommonsenseRecord:
    instruction: str
    input: str
    output: str
    answer: str


def as_records(records: Sequence[CommonsenseRecord | dict]) -> list[CommonsenseRecord]:
    return [r if isinstance(r, CommonsenseRecord) else CommonsenseRecord(**r) for r in records]


def canonical_task(name: str) -> str:
    """'arc_easy' / 'ARC-Easy' / 'siqa' -> the LLM-Adapters folder name."""
    if name in ANSWER_PATTERNS:
        return name
    key = name.lower().replace("-", "_")
    by_lower = {t.lower().replace("-", "_"): t for t in TASKS}
    found = by_lower.get(key) or _ALIASES.get(key)
    if found is None:
        raise DataError(f"unknown commonsense task {name!r}; allowed: {', '.join(TASKS)}")
    return found


# --------------------------------------------------------------------------------------------- loading


def _record(obj: object, path: Path, index: int) -> CommonsenseRecord:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: record {index}: expected an object, got {type(obj).__name__}")
    values = {}
    for key in _FIELDS:
        value = obj.get(key, "" if key == "input" else None)
        if value is None:
            raise DataError(f"{path}: record {index}: missing field {key!r}")
        if not isinstance(value, str):
            raise DataError(f"{path}: record {index}: field {key!r} must be a string")
        values[key] = value
    return CommonsenseRecord(**values)


def load_records(path: str | os.PathLike[str]) -> list[CommonsenseRecord]:
    """Read one LLM-Adapters JSON file (a JSON array of 4-field records)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} not found")
    data = load_json(p, error=DataError, what="commonsense JSON file")
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON array of records (not JSONL), got {type(data).__name__}")
    return [_record(obj, p, i) for i, obj in enumerate(data)]


def eval_file(root: str | os.PathLike[str], task: str) -> Path:
    """``<root>/dataset/<task>/test.json``; ``root`` may also be the ``dataset`` folder itself."""
    r, name = Path(root), canonical_task(task)
    for cand in (r / "dataset" / name / "test.json", r / name / "test.json"):
        if cand.is_file():
            return cand
    raise DataError(f"{r / 'dataset' / name / 'test.json'} not found")


def load_test(root: str | os.PathLike[str], task: str) -> list[CommonsenseRecord]:
    return load_records(eval_file(root, task))


def split_train_val(
    records: Sequence[CommonsenseRecord], val_size: int = 2000, seed: int = 42
) -> tuple[list[CommonsenseRecord], list[CommonsenseRecord]]:
    """Hold out ``val_size`` records (MambaPEFT: 2000, seed 42). Seeded numpy shuffle, so the split is
    reproducible here but not identical to Hugging Face ``datasets.train_test_split``."""
    if not 0 <= val_size <= len(records):
        raise DataError(f"val_size {val_size} outside [0, {len(records)}]")
    perm = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in perm[val_size:]], [records[i] for i in perm[:val_size]]


def check_records(records: Sequence[CommonsenseRecord]) -> list[str]:
    """Consistency problems: output != 'the correct answer is <answer>', answer not in the Answer format."""
    problems = []
    for i, r in enumerate(records):
        if r.output.strip() != ANSWER_TEMPLATE.format(label=r.answer):
            problems.append(f"record {i}: output {r.output!r} does not state answer {r.answer!r}")
        labels = parse_label_set(r.instruction)
        if labels and r.answer not in labels:
            problems.append(f"record {i}: answer {r.answer!r} not in answer format {'/'.join(labels)}")
    return problems


# ---------------------------------------------------------------------------------------------- prompts


def build_prompt(instruction: str, input: str = "") -> str:
    """Alpaca prompt up to and including ``### Response:\\n`` (the model continues from here)."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT.format(instruction=instruction)


def build_text(record: CommonsenseRecord) -> str:
    """Full training text (EOS is added at token level by ``tokenize_example``)."""
    return build_prompt(record.instruction, record.input) + record.output


def parse_label_set(instruction: str) -> tuple[str, ...]:
    """Labels from the last 'Answer format: a/b/c' line; () when the instruction has none."""
    found = _ANSWER_FORMAT.findall(instruction)
    if not found:
        return ()
    return tuple(s.strip() for s in found[-1].strip().split("/") if s.strip())


def record_tasks(record: CommonsenseRecord) -> tuple[str, ...]:
    """The tasks whose label set starts with the record's first "Answer format:" label: a mixed training file
    holds several tasks, and ``answer1..`` is shared by social_i_qa, ARC and openbookqa."""
    labels = parse_label_set(record.instruction)
    return tuple(t for t, p in ANSWER_PATTERNS.items() if labels and p.split("|")[0] == labels[0])


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_example(
    record: CommonsenseRecord,
    tokenizer: TextTokenizer,
    cutoff_len: int = 256,
    *,
    train_on_inputs: bool = True,
    add_eos: bool = True,
) -> TokenizedExample:
    """LLM-Adapters' ``generate_and_tokenize_prompt``: truncate prompt + output to ``cutoff_len``, append EOS
    when there is room, labels = ids, and with ``train_on_inputs=False`` the prompt tokens set to -100."""
    ids = tokenizer.encode(build_text(record))[:cutoff_len]
    if add_eos and (not ids or ids[-1] != tokenizer.eos_id) and len(ids) < cutoff_len:
        ids.append(tokenizer.eos_id)
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer.encode(build_prompt(record.instruction, record.input))[:cutoff_len])
        labels[:n_prompt] = [IGNORE_INDEX] * min(n_prompt, len(labels))
    return TokenizedExample(ids, labels)


def collate(
    examples: Sequence[TokenizedExample],
    pad_id: int,
    *,
    padding_side: str = "left",
    pad_to_multiple_of: int | None = 8,
) -> dict[str, torch.Tensor]:
    """Pad a batch like ``DataCollatorForSeq2Seq``: ids with ``pad_id``, labels with -100, mask 0 on pads.

    MambaPEFT pads on the left with pad id 0 (GPT-NeoX's EOS) and to a multiple of 8."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max((len(e.input_ids) for e in examples), default=0)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(examples)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        sl = slice(length - k, length) if padding_side == "left" else slice(0, k)
        ids[i, sl] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, sl] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -------------------------------------------------------------------------------------------- evaluation


@dataclass
class Prediction:
    answer: str
    prediction: str
    raw: str  # generated text, or the label scores for likelihood mode

    @property
    def correct(self) -> bool:
        return self.prediction == self.answer


@dataclass
class EvalResult:
    task: str
    mode: str  # "generation" | "likelihood"
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def response_text(prompt: str, generated: str) -> str:
    """What LLM-Adapters matches on: ``(prompt + generation).split('### Response:')[1].strip()``.

    ``generated`` may be the continuation only or the full text starting with the prompt."""
    full = generated if generated.startswith(prompt) else prompt + generated
    parts = full.split(RESPONSE_MARKER)
    return (parts[1] if len(parts) > 1 else full).strip()


def extract_answer(task: str, text: str, *, ignore_case: bool = False) -> str:
    """First match of the task's regex in ``text`` or ""; case-sensitive like LLM-Adapters by default."""
    pattern = ANSWER_PATTERNS[canonical_task(task)]
    m = re.search(pattern, text, flags=re.IGNORECASE if ignore_case else 0)
    if m is None:
        return ""
    return m.group(0).lower() if ignore_case else m.group(0)


def evaluate_generation(
    records: Sequence[CommonsenseRecord],
    task: str,
    generate: Callable[[str], str],
    *,
    ignore_case: bool = False,
) -> EvalResult:
    """LLM-Adapters generation accuracy; ``generate(prompt)`` returns the model's text for that prompt."""
    name = canonical_task(task)
    result = EvalResult(name, "generation")
    for r in records:
        prompt = build_prompt(r.instruction, r.input)
        out = generate(prompt)
        pred = extract_answer(name, response_text(prompt, out), ignore_case=ignore_case)
        result.predictions.append(Prediction(r.answer, pred, out))
    return result


def _default_labels(task: str) -> tuple[str, ...]:
    return tuple(ANSWER_PATTERNS[canonical_task(task)].split("|"))


def evaluate_likelihood(
    records: Sequence[CommonsenseRecord],
    score: Callable[[str, str], float],
    task: str | None = None,
) -> EvalResult:
    """Rank 'the correct answer is <label>' by ``score(prompt, continuation)`` (summed log-prob).

    Labels come from each instruction's "Answer format:" line; without one, from the task's regex
    alternatives (so ``task`` is then required)."""
    result = EvalResult(canonical_task(task) if task else "unknown", "likelihood")
    for i, r in enumerate(records):
        labels = parse_label_set(r.instruction)
        if not labels:
            if task is None:
                raise DataError(f"record {i}: no 'Answer format:' line and no task to take labels from")
            labels = _default_labels(task)
        prompt = build_prompt(r.instruction, r.input)
        scores = [float(score(prompt, ANSWER_TEMPLATE.format(label=lab))) for lab in labels]
        best = labels[int(np.argmax(scores))]  # argmax takes the first of equal scores
        raw = json.dumps(dict(zip(labels, scores)))
        result.predictions.append(Prediction(r.answer, best, raw))
    return result
