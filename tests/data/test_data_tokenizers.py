"""Byte tokenizer ids and loading a local GPT-NeoX style tokenizer.json (built here, no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridsearch.data.tokenizers import ByteTokenizer, JsonTokenizer, TextTokenizer, load_tokenizer
from hybridsearch.errors import DataError


def test_byte_tokenizer_ids_and_round_trip():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (258, 256, 257, 257)
    assert tok.encode("Ab") == [65, 98]
    assert tok.encode("é", add_bos=True, add_eos=True) == [257, 0xC3, 0xA9, 257]
    text = "Mamba ✓ state space\n"
    assert tok.decode(tok.encode(text) + [tok.eos_id, tok.pad_id]) == text
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character does not raise
    assert isinstance(tok, TextTokenizer)
    assert load_tokenizer("byte").eos_id == 257


def _tiny_neox_json(path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the correct answer is true", "the correct answer is false"] * 20, trainer)
    tok.save(str(path))


def test_load_tokenizer_json(tmp_path: Path):
    _tiny_neox_json(tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path)  # a folder holding tokenizer.json
    assert isinstance(tok, JsonTokenizer) and isinstance(tok, TextTokenizer)
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (0, 0, 1)  # as GPT-NeoX: <|endoftext|> 0, <|padding|> 1
    ids = tok.encode("the correct answer is true")
    assert ids and tok.eos_id not in ids  # no BOS/EOS added, like HF's GPT-NeoX tokenizer
    assert tok.decode(ids + [tok.eos_id]) == "the correct answer is true"
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size == tok.vocab_size


def test_load_tokenizer_errors(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)
