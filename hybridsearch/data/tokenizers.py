"""Tokenizers for the language side: a byte-level one for tiny CPU proxies and a local ``tokenizer.json`` loader.

``ByteTokenizer`` ids:

* 0-255: the UTF-8 bytes themselves (id == byte value);
* 256 ``<|padding|>``: padding;
* 257 ``<|endoftext|>``: both BOS and EOS, as in GPT-NeoX where one ``<|endoftext|>`` token plays both roles.

``vocab_size`` is 258; a model may pad its embedding to a multiple of 8 (Mamba does) without changing the ids.

``load_tokenizer(path)`` reads a GPT-NeoX style ``tokenizer.json`` with the ``tokenizers`` library only (no
hub, no transformers). Like Hugging Face's GPT-NeoX tokenizer it adds no BOS; EOS is ``<|endoftext|>`` and PAD
is ``<|padding|>`` when the vocabulary has them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import DataError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


@runtime_checkable
class TextTokenizer(Protocol):
    """What the commonsense helpers need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, PAD 256, BOS = EOS 257."""

    PAD_ID = 256
    EOS_ID = 257
    BOS_ID = EOS_ID
    VOCAB_SIZE = 258

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.BOS_ID] if add_bos else []) + ids + ([self.EOS_ID] if add_eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        # Specials are dropped; a sequence cut inside a multi-byte character decodes with U+FFFD.
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return {PAD_TOKEN: self.PAD_ID, EOS_TOKEN: self.EOS_ID}.get(token)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258, pad=256, bos=eos=257)"


class JsonTokenizer:
    """A ``tokenizers.Tokenizer`` from a local file with the special ids the training code needs."""

    def __init__(self, tokenizer: object, source: str) -> None:
        self._tok = tokenizer
        self.source = source
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise DataError(f"{source}: tokenizer has no {EOS_TOKEN} token")
        pad = tokenizer.token_to_id(PAD_TOKEN)
        self.eos_id = self.bos_id = int(eos)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        # add_special_tokens follows the file's post-processor; GPT-NeoX's adds nothing (like HF's default).
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return f"JsonTokenizer({self.source!r}, vocab_size={self.vocab_size}, eos={self.eos_id}, pad={self.pad_id})"


def load_tokenizer(path: str | os.PathLike[str]) -> ByteTokenizer | JsonTokenizer:
    """``"byte"`` -> ByteTokenizer; a ``tokenizer.json`` file (or a folder holding one) -> JsonTokenizer."""
    if str(path) == "byte":
        return ByteTokenizer()
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise DataError(f"tokenizer file {p} not found (give a tokenizer.json, its folder, or 'byte')")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError("the 'tokenizers' package is needed to read tokenizer.json: pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust side raises a bare Exception on malformed files
        raise DataError(f"{p}: cannot load tokenizer: {e}") from None
    return JsonTokenizer(tok, str(p))
