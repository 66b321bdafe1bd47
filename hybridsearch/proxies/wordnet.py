"""WordNet 3.0 ``data.{noun,verb,adj,adv}`` reader (Debian ``wordnet-base``, default ``/usr/share/wordnet``).

One synset per line: ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt pointers... [frames] | gloss``.
The gloss is the definition followed by ``; "example"`` quotations. Only the text the proxies need is kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = ("noun", "verb", "adj", "adv")
# The 45 lexicographer files, indexed by lex_filenum (WordNet's lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers glued to adjective lemmas
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    offset: int
    pos: str  # n, v, a, s (adjective satellite), r
    lexname: str
    lemmas: tuple[str, ...]  # spaces, not WordNet's underscores
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[int, ...]  # offsets of '@' / '@i' pointers (same part of speech)

    @property
    def key(self) -> str:
        return f"{self.pos}{self.offset:08d}"


def _parse_line(line: str, source: str, lineno: int) -> Synset:
    head, _, gloss = line.partition(" | ")
    f = head.split()
    try:
        offset, lexnum, pos, n = int(f[0]), int(f[1]), f[2], int(f[3], 16)
        lemmas = tuple(_ADJ_MARKER.sub("", f[4 + 2 * i]).replace("_", " ") for i in range(n))
        i = 4 + 2 * n
        n_ptr = int(f[i])
        hyper = tuple(int(f[i + 2 + 4 * k]) for k in range(n_ptr) if f[i + 1 + 4 * k] in ("@", "@i"))
    except (IndexError, ValueError) as e:
        raise DataError(f"{source}:{lineno}: not a WordNet data line ({e})") from None
    gloss = gloss.strip()
    # the definition ends where the first quoted example starts ("...; \"example\"")
    cut = gloss.find('; "')
    definition = (gloss if cut < 0 else gloss[:cut]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss[cut:])) if cut >= 0 else ()
    return Synset(offset, pos, LEXNAMES[lexnum], lemmas, definition, examples, hyper)


def wordnet_dir(path: str | os.PathLike[str] | None = None) -> Path:
    root = Path(path) if path is not None else WORDNET_DIR
    missing = [p for p in POS_FILES if not (root / f"data.{p}").is_file()]
    if missing:
        raise DataError(f"{root}: WordNet data.{'/'.join(missing)} not found (install Debian's wordnet-base "
                        "or pass --wordnet DIR)")
    return root


def read_wordnet(path: str | os.PathLike[str] | None = None, pos: tuple[str, ...] = POS_FILES) -> list[Synset]:
    """Every synset of the given data files, in file order (deterministic)."""
    root = wordnet_dir(path)
    out: list[Synset] = []
    for p in pos:
        src = root / f"data.{p}"
        with open(src, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("  "):  # the licence header
                    continue
                out.append(_parse_line(line.rstrip("\n"), str(src), lineno))
    return out


def synset_text(s: Synset) -> str:
    """One pretraining line: ``lemma, lemma: definition; "example"`` (WordNet's own gloss layout)."""
    text = f"{', '.join(s.lemmas)}: {s.definition}"
    return text + "".join(f'; "{e}"' for e in s.examples)


LICENSE_NOTICE = """\
WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""
