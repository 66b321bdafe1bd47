"""``commonsense_proxy``: a small commonsense-style task set in the exact LLM-Adapters format, built from WordNet.

The five tasks reuse the real LLM-Adapters templates and label words, so the real evaluators and regexes apply.
Their content is chosen so that a 0.5 M-parameter byte-level LM can learn it by fine-tuning: each label is one
spelling feature of one word, not world knowledge (the previous gloss-matching design stayed at chance, and so did
a part-of-speech design that needed two features compared). The WordNet fact used is the **part of speech** of
single words that WordNet lists under one part of speech only, kept when their last three letters predict it
(>= 90 % of the training words with that ending share it: ``-lly``/``-ely``/``-sly`` adverbs, ``-ize``/``-ify``
verbs, ``-ous``/``-ble``/``-cal`` adjectives, ``-ion``/``-ity``/``-ism`` nouns, ...).

Tasks (the answer always follows from the words' spelling, near the end of the prompt):

* ``boolq`` (true/false): is "<word>" an adverb?  an adverb (true) or an adjective (false), balanced;
* ``piqa`` (solution1/2): which word is a verb?  a verb and a noun or adjective;
* ``hellaswag`` (ending1-4): "Grammar: she did it" + an adverb, a noun, a verb and an adjective;
* ``winogrande`` (option1/2): "he spoke _" with an adverb and an adjective;
* ``ARC-Easy`` (answer1-4): which word is a verb?  a verb, a noun, an adjective and an adverb.

Held-out words: every candidate word is assigned to train or test by a seeded shuffle; training records use
training words only, test records test words only (targets and distractors; checked on build). The suffix
statistics come from the training words. Every label is exactly balanced. Everything is deterministic for a
seed: file-ordered inputs, seeded ``random.Random`` instances.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.commonsense import ANSWER_TEMPLATE, BUNDLED_ROOT, TRAIN_FILE
from ..errors import DataError
from .wordnet import LICENSE_NOTICE, Synset, read_wordnet

PROXY_TASKS: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "ARC-Easy")
POS_NAMES: tuple[str, ...] = ("noun", "verb", "adjective", "adverb")
_WN_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_WORD = re.compile(r"[a-z]{4,14}")
_SUFFIX = 3  # letters of the spelling cue
_PURITY = 0.9
Record = dict[str, str]


def _record(instruction: str, answer: str) -> Record:
    return {"instruction": instruction, "input": "", "output": ANSWER_TEMPLATE.format(label=answer),
            "answer": answer}


def _options(kind: str, items: Sequence[str]) -> str:
    return "".join(f"{kind.capitalize()}{i + 1}: {t}\n\n" for i, t in enumerate(items))


def _fmt(kind: str, n: int) -> str:
    return "Answer format: " + "/".join(f"{kind}{i + 1}" for i in range(n))


@dataclass
class _Lexicon:
    """The words of one split by part of speech."""

    words: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in POS_NAMES})


class _Targets:
    """Each target used once per task: a seeded walk over a shuffled copy of each list."""

    def __init__(self, rng: random.Random, lex: _Lexicon, task: str) -> None:
        self.task = task
        self.queues: dict[str, list[str]] = {}
        for key, items in lex.words.items():
            q = list(items)
            rng.shuffle(q)
            self.queues[key] = q

    def take(self, key: str) -> str:
        if not self.queues[key]:
            raise DataError(f"{self.task}: WordNet has too few {key} items for the requested task size")
        return self.queues[key].pop()


def _other(rng: random.Random, items: list[str], not_this: str) -> str:
    while True:
        x = items[rng.randrange(len(items))]
        if x != not_this:
            return x


def _place(correct: str, wrong: list[str], slot: int) -> list[str]:
    items = list(wrong)
    return items[:slot] + [correct] + items[slot:]


# -- the five task makers: (rng, lexicon, targets, n already made) -> record; n cycles the labels ---------------
# Each label is one spelling feature of one word, read near the end of the prompt: the adverb (-ly) or the verb
# (-ize, -ify, ...) among words of other parts of speech. No item needs to compare two features.
def _boolq(rng: random.Random, lex: _Lexicon, tg: _Targets, n: int) -> Record:
    truth = n % 2 == 0
    word = tg.take("adverb" if truth else "adjective")  # "happily" vs "happy"-like words: the ending decides
    q = (f"Please answer the following question with true or false, question: is \"{word}\" an adverb?\n\n"
         "Answer format: true/false")
    return _record(q, "true" if truth else "false")


def _choice(rng: random.Random, lex: _Lexicon, word: str, wrong_parts: tuple[str, ...], slot: int, question: str,
            key: str) -> Record:
    """A multiple-choice record: ``word`` at option ``slot`` among one word of each of ``wrong_parts``."""
    wrong = [_other(rng, lex.words[p], word) for p in wrong_parts]
    rng.shuffle(wrong)
    k = len(wrong) + 1
    return _record(question + _options(key, _place(word, wrong, slot)) + _fmt(key, k), f"{key}{slot + 1}")


def _piqa(rng: random.Random, lex: _Lexicon, tg: _Targets, n: int) -> Record:
    word = tg.take("verb")
    q = "Please choose the correct solution to the question: Which word is a verb?\n\n"
    return _choice(rng, lex, word, (rng.choice(["noun", "adjective"]),), n % 2, q, "solution")


def _hellaswag(rng: random.Random, lex: _Lexicon, tg: _Targets, n: int) -> Record:
    q = "Please choose the correct ending to complete the given sentence: Grammar: she did it\n\n"
    return _choice(rng, lex, tg.take("adverb"), ("noun", "verb", "adjective"), n % 4, q, "ending")


def _winogrande(rng: random.Random, lex: _Lexicon, tg: _Targets, n: int) -> Record:
    q = "Please choose the correct answer to fill in the blank to complete the given sentence: he spoke _\n\n"
    return _choice(rng, lex, tg.take("adverb"), ("adjective",), n % 2, q, "option")


def _arc(rng: random.Random, lex: _Lexicon, tg: _Targets, n: int) -> Record:
    q = "Please choose the correct answer to the question: Which word is a verb?\n\n"
    return _choice(rng, lex, tg.take("verb"), ("noun", "adjective", "adverb"), n % 4, q, "answer")


_MAKERS = {"boolq": _boolq, "piqa": _piqa, "hellaswag": _hellaswag, "winogrande": _winogrande, "ARC-Easy": _arc}
_QUOTED = re.compile(r'"([^"]+)"')
_OPTION = re.compile(r"^(Answer|Solution|Ending|Option)(\d): (.+)$", flags=re.MULTILINE)


def option_words(record: Record) -> set[str]:
    """Every word a record asks about (quoted) or offers as an option."""
    text = record["instruction"]
    return set(_QUOTED.findall(text)) | {m[2] for m in _OPTION.findall(text)}


def target_word(record: Record) -> str:
    """The word a record tests: the quoted word, or the correct option."""
    text = record["instruction"]
    quoted = _QUOTED.findall(text)
    if quoted:
        return quoted[0]
    options = {f"{kind.lower()}{i}": word for kind, i, word in _OPTION.findall(text)}
    return options[record["answer"]]


def _candidates(synsets: list[Synset]) -> dict[str, str]:
    """{single lower-case word: its only part of speech} in a deterministic (sorted) order."""
    pos: dict[str, set[str]] = defaultdict(set)
    for s in synsets:
        for lemma in s.lemmas:
            pos[lemma].add(_WN_POS[s.pos])
    return {w: next(iter(p)) for w, p in sorted(pos.items()) if len(p) == 1 and _WORD.fullmatch(w)}


def _lexicons(synsets: list[Synset], seed: int, test_fraction: float, min_suffix_count: int
              ) -> tuple[_Lexicon, _Lexicon, dict]:
    singles = _candidates(synsets)
    names = sorted(singles)
    random.Random(seed).shuffle(names)
    test_names = set(names[: int(len(names) * test_fraction)])
    # the spelling cue, learned from training words only: endings that (almost) always mean one part of speech
    stats: dict[str, Counter] = defaultdict(Counter)
    for w, p in singles.items():
        if w not in test_names:
            stats[w[-_SUFFIX:]][p] += 1
    cue = {}
    for sfx, c in stats.items():
        p, k = c.most_common(1)[0]
        if sum(c.values()) >= min_suffix_count and k / sum(c.values()) >= _PURITY:
            cue[sfx] = p
    train, test = _Lexicon(), _Lexicon()
    for w, p in singles.items():
        if cue.get(w[-_SUFFIX:]) == p:
            (test if w in test_names else train).words[p].append(w)
    info = {"suffixes": {p: sorted(s for s, q in cue.items() if q == p) for p in POS_NAMES},
            "train_words": {p: len(v) for p, v in train.words.items()},
            "test_words": {p: len(v) for p, v in test.words.items()}}
    for name, lex in (("training", train), ("test", test)):
        short = [p for p, v in lex.words.items() if len(v) < 2]
        if short:
            raise DataError(f"WordNet gave too few {name} words for: {', '.join(short)}")
    return train, test, info


def build_task_set(
    wordnet: str | Path | None = None,
    *,
    seed: int = 0,
    train_per_task: int = 600,
    test_per_task: int = 200,
    test_fraction: float = 0.2,
    min_suffix_count: int = 10,
    synsets: list[Synset] | None = None,
    info: dict | None = None,
) -> tuple[list[Record], dict[str, list[Record]]]:
    """(mixed shuffled training records, {task: test records}) from WordNet; ``info`` receives the lexicon
    statistics (suffixes used, words per part of speech and split)."""
    synsets = synsets if synsets is not None else read_wordnet(wordnet)
    train_lex, test_lex, stats = _lexicons(synsets, seed, test_fraction, min_suffix_count)
    if info is not None:
        info.update(stats)
    train: list[Record] = []
    tests: dict[str, list[Record]] = {}
    for t_i, task in enumerate(PROXY_TASKS):
        trng = random.Random(seed * 1000 + t_i)
        train += _draw(task, trng, train_lex, train_per_task)
        tests[task] = _draw(task, trng, test_lex, test_per_task)
    random.Random(seed + 1).shuffle(train)
    _check_held_out(train, tests)
    return train, tests


def _draw(task: str, rng: random.Random, lex: _Lexicon, n: int) -> list[Record]:
    targets = _Targets(rng, lex, task)
    out = [_MAKERS[task](rng, lex, targets, i) for i in range(n)]
    rng.shuffle(out)  # the labels were cycled; the file order should not be
    return out


def _check_held_out(train: list[Record], tests: dict[str, list[Record]]) -> None:
    seen = set().union(*(option_words(r) for r in train))
    for task, records in tests.items():
        leaked = sorted(set().union(*(option_words(r) for r in records)) & seen)
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
        "parts of speech of single words, by `hybridsearch pretrain commonsense-proxy`.\n\n"
        + LICENSE_NOTICE)
    manifest = {**meta, "train": len(train), "test": {t: len(r) for t, r in tests.items()}, "sha256": digests}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_commonsense_proxy(wordnet: str | Path | None = None, out: str | Path = BUNDLED_ROOT, *, seed: int = 0,
                            train_per_task: int = 600, test_per_task: int = 200) -> dict:
    info: dict = {}
    train, tests = build_task_set(wordnet, seed=seed, train_per_task=train_per_task, test_per_task=test_per_task,
                                  info=info)
    meta = {"source": "WordNet 3.0 (Debian wordnet-base 1:3.0)",
            "design": "one spelling cue per label: the adverb or verb among words of other parts of speech",
            "seed": seed, "train_per_task": train_per_task, "test_per_task": test_per_task,
            "tasks": list(PROXY_TASKS), "lexicon": info}
    return write_task_set(out, train, tests, meta)
