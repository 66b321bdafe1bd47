"""``commonsense_proxy``: a small commonsense-style task set in the exact LLM-Adapters format, built from WordNet.

Five tasks reuse the real LLM-Adapters templates and label words, so the real evaluators and regexes apply:

* ``ARC-Easy`` (answer1-4): which word matches this definition; distractors from the same lexicographer file;
* ``hellaswag`` (ending1-4): which definition completes "<example sentence> Here, "<word>" means";
* ``boolq`` (true/false): does "<word>" mean "<definition>"; false pairs take a definition from the same
  lexicographer file; balanced;
* ``piqa`` (solution1/2): which sentence uses "<word>" in the sense "<definition>"; the other solution is an
  example sentence of another synset of the same lexicographer file;
* ``winogrande`` (option1/2): fill the blank of an example sentence with the word or a same-file distractor.

Held-out words: every eligible target word (a synset's first lemma) is assigned to train or test by a seeded
shuffle; test items' answer words never occur as a target or an option of any training record (checked on
build), though they may occur inside another record's definition or example sentence. Everything is
deterministic for a seed: file-ordered inputs, seeded ``random.Random`` instances.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.commonsense import ANSWER_TEMPLATE
from ..errors import DataError
from .wordnet import LICENSE_NOTICE, Synset, read_wordnet

PROXY_TASKS: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "ARC-Easy")
TRAIN_FILE = "commonsense_proxy_train.json"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "commonsense_proxy"
_WORD = re.compile(r"[a-z]{3,14}")
_MAX_TEXT = 70  # definitions and examples up to this many characters keep byte-level prompts short
Record = dict[str, str]


def _record(instruction: str, answer: str) -> Record:
    return {"instruction": instruction, "input": "", "output": ANSWER_TEMPLATE.format(label=answer),
            "answer": answer}


def _options(kind: str, items: Sequence[str]) -> str:
    return "".join(f"{kind.capitalize()}{i + 1}: {t}\n\n" for i, t in enumerate(items))


def _fmt(kind: str, n: int) -> str:
    return "Answer format: " + "/".join(f"{kind}{i + 1}" for i in range(n))


def _usage(s: Synset) -> str | None:
    """The first short example that contains the synset's word as a whole word."""
    w = s.lemmas[0]
    for e in s.examples:
        if len(e) <= _MAX_TEXT and re.search(rf"\b{re.escape(w)}\b", e, flags=re.IGNORECASE):
            return e
    return None


class _Pool:
    """Eligible synsets of one split, grouped by lexicographer file, with the words distractors may use."""

    def __init__(self, synsets: list[Synset]) -> None:
        self.synsets = synsets
        self.by_lex: dict[str, list[Synset]] = defaultdict(list)
        for s in synsets:
            self.by_lex[s.lexname].append(s)

    def others(self, rng: random.Random, s: Synset, k: int, want: Callable[[Synset], bool]) -> list[Synset] | None:
        """k synsets of s's lexicographer file with distinct words, none a synonym of s (None if too few)."""
        group = self.by_lex[s.lexname]
        taken, out = set(s.lemmas), []
        for _ in range(50 * k):
            if len(out) == k:
                break
            o = group[rng.randrange(len(group))]
            if o.lemmas[0] not in taken and o.definition != s.definition and want(o):
                taken.add(o.lemmas[0])
                out.append(o)
        return out if len(out) == k else None


def _shuffled(rng: random.Random, correct: str, wrong: list[str], slot: int) -> tuple[list[str], int]:
    """Distractors in random order with the correct item at ``slot`` (cycled by the caller: balanced labels)."""
    items = list(wrong)
    rng.shuffle(items)
    pos = slot % (len(items) + 1)
    return items[:pos] + [correct] + items[pos:], pos


def _topic(lexname: str) -> str:
    """A HellaSwag-style activity label from the lexicographer file: noun.animal -> Animal, adj.all -> Adjective."""
    pos, name = lexname.split(".")
    return {"adj": "Adjective", "adv": "Adverb"}.get(pos) or name.capitalize()


# -- the five task makers: (rng, target synset, distractor pool) -> record or None --------------------------------
def _arc(rng: random.Random, s: Synset, pool: _Pool, slot: int) -> Record | None:
    others = pool.others(rng, s, 3, lambda o: True)
    if others is None:
        return None
    words, i = _shuffled(rng, s.lemmas[0], [o.lemmas[0] for o in others], slot)
    q = f"Please choose the correct answer to the question: Which word means \"{s.definition}\"?\n\n"
    return _record(q + _options("answer", words) + _fmt("answer", 4), f"answer{i + 1}")


def _hellaswag(rng: random.Random, s: Synset, pool: _Pool, slot: int) -> Record | None:
    ex = _usage(s)
    others = pool.others(rng, s, 3, lambda o: True) if ex else None
    if others is None:
        return None
    ends, i = _shuffled(rng, s.definition, [o.definition for o in others], slot)
    q = (f"Please choose the correct ending to complete the given sentence: {_topic(s.lexname)}: {ex}. "
         f"Here, \"{s.lemmas[0]}\" means\n\n")
    return _record(q + _options("ending", ends) + _fmt("ending", 4), f"ending{i + 1}")


def _boolq(rng: random.Random, s: Synset, pool: _Pool, truth: bool) -> Record | None:
    definition = s.definition
    if not truth:
        others = pool.others(rng, s, 1, lambda o: True)
        if others is None:
            return None
        definition = others[0].definition
    q = (f"Please answer the following question with true or false, question: does \"{s.lemmas[0]}\" mean "
         f"\"{definition}\"?\n\nAnswer format: true/false")
    return _record(q, "true" if truth else "false")


def _piqa(rng: random.Random, s: Synset, pool: _Pool, slot: int) -> Record | None:
    ex = _usage(s)
    others = pool.others(rng, s, 1, lambda o: _usage(o) is not None) if ex else None
    if others is None:
        return None
    sols, i = _shuffled(rng, ex, [_usage(others[0])], slot)
    q = (f"Please choose the correct solution to the question: Use \"{s.lemmas[0]}\" in a sentence, meaning "
         f"\"{s.definition}\"\n\n")
    return _record(q + _options("solution", sols) + _fmt("solution", 2), f"solution{i + 1}")


def _winogrande(rng: random.Random, s: Synset, pool: _Pool, slot: int) -> Record | None:
    ex = _usage(s)
    others = pool.others(rng, s, 1, lambda o: True) if ex else None
    if others is None:
        return None
    blanked = re.sub(rf"\b{re.escape(s.lemmas[0])}\b", "_", ex, count=1, flags=re.IGNORECASE)
    opts, i = _shuffled(rng, s.lemmas[0], [others[0].lemmas[0]], slot)
    q = f"Please choose the correct answer to fill in the blank to complete the given sentence: {blanked}\n\n"
    return _record(q + _options("option", opts) + _fmt("option", 2), f"option{i + 1}")


def _make(task: str, rng: random.Random, s: Synset, pool: _Pool, n_done: int) -> Record | None:
    if task == "boolq":
        return _boolq(rng, s, pool, truth=n_done % 2 == 0)  # exactly balanced
    maker = {"ARC-Easy": _arc, "hellaswag": _hellaswag, "piqa": _piqa, "winogrande": _winogrande}[task]
    return maker(rng, s, pool, n_done)


_QUOTED = re.compile(r'(?:does|Use|Here,) "([^"]+)"')
_OPTION = re.compile(r"^(Answer|Option)(\d): (.+)$", flags=re.MULTILINE)


def option_words(record: Record) -> set[str]:
    """Every word a record asks about (the quoted word) or offers as an option (ARC, WinoGrande)."""
    text = record["instruction"]
    return set(_QUOTED.findall(text)) | {m[2] for m in _OPTION.findall(text)}


def target_word(record: Record) -> str:
    """The word a record tests: the quoted word, or the correct ARC / WinoGrande option."""
    text = record["instruction"]
    quoted = _QUOTED.findall(text)
    if quoted:
        return quoted[0]
    options = {f"{kind.lower()}{i}": word for kind, i, word in _OPTION.findall(text)}
    return options[record["answer"]]


def _split_words(synsets: list[Synset], seed: int, test_fraction: float) -> set[str]:
    words = sorted({s.lemmas[0] for s in synsets})
    random.Random(seed).shuffle(words)
    return set(words[: int(len(words) * test_fraction)])


def build_task_set(
    wordnet: str | Path | None = None,
    *,
    seed: int = 0,
    train_per_task: int = 600,
    test_per_task: int = 200,
    test_fraction: float = 0.2,
    synsets: list[Synset] | None = None,
) -> tuple[list[Record], dict[str, list[Record]]]:
    """(mixed shuffled training records, {task: test records}) from WordNet."""
    synsets = synsets if synsets is not None else read_wordnet(wordnet)
    eligible = [s for s in synsets if _WORD.fullmatch(s.lemmas[0]) and 10 <= len(s.definition) <= _MAX_TEXT
                and '"' not in s.definition]
    test_words = _split_words(eligible, seed, test_fraction)
    train_pool = _Pool([s for s in eligible if not test_words & set(s.lemmas)])
    test_pool = _Pool(eligible)  # test distractors may be any word; test answers are held out
    test_targets = [s for s in eligible if s.lemmas[0] in test_words]
    rng = random.Random(seed + 1)
    train: list[Record] = []
    tests: dict[str, list[Record]] = {}
    for t_i, task in enumerate(PROXY_TASKS):
        trng = random.Random(seed * 1000 + t_i)
        train += _draw(task, trng, train_pool.synsets, train_pool, train_per_task)
        tests[task] = _draw(task, trng, test_targets, test_pool, test_per_task)
    rng.shuffle(train)
    _check_held_out(train, tests)
    return train, tests


def _draw(task: str, rng: random.Random, targets: list[Synset], pool: _Pool, n: int) -> list[Record]:
    order = list(range(len(targets)))
    rng.shuffle(order)
    out: list[Record] = []
    used: set[str] = set()  # one record per word and task, so no item repeats another's answer
    for i in order:
        s = targets[i]
        if s.lemmas[0] in used:
            continue
        r = _make(task, rng, s, pool, len(out))
        if r is not None:
            used.add(s.lemmas[0])
            out.append(r)
            if len(out) == n:
                rng.shuffle(out)  # the slots were cycled; the file order should not be
                return out
    raise DataError(f"WordNet gave only {len(out)} {task} items, {n} asked")


def _check_held_out(train: list[Record], tests: dict[str, list[Record]]) -> None:
    seen = set().union(*(option_words(r) for r in train))
    for task, records in tests.items():
        leaked = sorted({target_word(r) for r in records} & seen)
        if leaked:
            raise DataError(f"{task}: held-out word(s) {leaked[:10]} occur in training records")


def write_task_set(out: str | Path, train: list[Record], tests: dict[str, list[Record]], meta: dict) -> dict:
    """Write the LLM-Adapters layout (``indent=4`` JSON arrays), the WordNet NOTICE and a manifest."""
    out = Path(out)
    files = {TRAIN_FILE: train, **{f"dataset/{t}/test.json": r for t, r in tests.items()}}
    digests = {}
    for rel, records in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(records, indent=4, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")
        digests[rel] = hashlib.sha256(text.encode()).hexdigest()
    (out / "NOTICE").write_text(
        "The records in this directory are derived from WordNet 3.0 (Debian package wordnet-base),\n"
        "glosses and example sentences, by `hybridsearch pretrain commonsense-proxy`.\n\n" + LICENSE_NOTICE)
    manifest = {**meta, "train": len(train), "test": {t: len(r) for t, r in tests.items()}, "sha256": digests}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_commonsense_proxy(wordnet: str | Path | None = None, out: str | Path = ASSET_DIR, *, seed: int = 0,
                            train_per_task: int = 600, test_per_task: int = 200) -> dict:
    train, tests = build_task_set(wordnet, seed=seed, train_per_task=train_per_task, test_per_task=test_per_task)
    meta = {"source": "WordNet 3.0 (Debian wordnet-base 1:3.0)", "seed": seed, "train_per_task": train_per_task,
            "test_per_task": test_per_task, "tasks": list(PROXY_TASKS)}
    return write_task_set(out, train, tests, meta)
