"""Hostile PEFT config files (``count --peft``, ``finetune --peft``, an adapter folder's ``peft.yaml``): one line
naming the file, the key path or line and what is allowed, exit status 2, never a traceback or a silent pick."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hybridsearch.cli import main
from hybridsearch.errors import ConfigError
from hybridsearch.peft import PeftConfig


def config_error(tmp_path: Path, text: str | bytes) -> str:
    p = tmp_path / "peft.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        PeftConfig.from_yaml(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "\n" not in msg, msg
    return msg


def count_error(capsys, tmp_path: Path, text: str | bytes) -> str:
    """``count --peft`` fails with one line and exit status 2."""
    p = tmp_path / "peft.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["count", "--model", "vim-proxy", "--peft", str(p)]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hybridsearch count: error: {p}"), err
    return err


@pytest.mark.parametrize(("text", "expected"), [
    ("methods:\n  lora_X: {rank: 4, scale: .nan}\n", "methods.lora_X.scale: must be a finite number > 0, got nan"),
    ("methods:\n  lora_X: {rank: 4, scale: .inf}\n", "methods.lora_X.scale: must be a finite number > 0, got inf"),
    ("methods:\n  lora_X: {rank: 4, lr_mult: .inf}\n", "methods.lora_X.lr_mult: must be a finite number >= 0"),
    ("methods:\n  additional_scan: {decay_mult: -.inf}\n", "methods.additional_scan.decay_mult: must be a finite"),
    ("methods:\n  lora_X: {rank: 99999999999999999999999}\n",
     "methods.lora_X.rank: rank must be an integer between 1 and 65,536"),
    ("methods:\n  affix: {tokens: 100000000}\n", "methods.affix.tokens: must be an integer between 1 and 65,536"),
    ("methods:\n  affix: {projection: 1}\n", "methods.affix.projection: 1 is not allowed; allowed: True, False"),
], ids=["nan-scale", "inf-scale", "inf-lr-mult", "neg-inf-decay", "huge-rank", "huge-tokens", "int-for-bool"])
def test_bad_values_are_refused(tmp_path, capsys, text, expected):
    assert expected in config_error(tmp_path, text)
    assert expected in count_error(capsys, tmp_path, text)


@pytest.mark.parametrize(("text", "expected"), [
    ("methods:\n  lora_X: {rank: 4}\n  lora_X: {rank: 8}\n",
     "line 3, column 3: duplicate key 'lora_X' (first at line 2)"),
    ("methods: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64 levels"),
    (b"methods:\n  lora_X: {rank: \xff}\n", "not UTF-8 text (byte 26"),
    ("x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
     + "methods: {}\n", "aliases expand this document beyond 100,000 values"),
    ("methods: {}\n" + "#" * 300_000 + "\n", "larger than 262,144 bytes, the limit for a PEFT config"),
    ("{1: 2, methods: {}}\n", "unknown top-level key(s) ['1']; allowed: methods"),
], ids=["duplicate-method", "deep", "not-utf8", "alias-bomb", "too-large", "mixed-key-types"])
def test_bad_files_are_refused(tmp_path, capsys, text, expected):
    assert expected in config_error(tmp_path, text)
    assert expected in count_error(capsys, tmp_path, text)


def test_the_sane_file_still_loads(tmp_path):
    p = tmp_path / "peft.yaml"
    p.write_text("methods:\n  lora_X: &x {rank: 4, scale: 0.5}\n  lora_Z: *x\n")
    cfg = PeftConfig.from_yaml(p)
    assert cfg.methods["lora_Z"].rank == 4 and cfg.methods["lora_X"].scale == 0.5
