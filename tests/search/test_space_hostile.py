"""Hostile space files: every one ends, within seconds, in a ``ConfigError`` naming the file, the key path or line,
and what is allowed (exit status 2 from ``validate``), never a traceback, a hang or a silent acceptance."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from hybridsearch.cli import main
from hybridsearch.errors import ConfigError
from hybridsearch.search import load_space

GOOD = {
    "model": {"name": "vim-proxy"},
    "data": {"kind": "mini_vtab", "tasks": ["mnist5k"]},
    "methods": {"lora_X": {"params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.1}}},
}


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def good_text(**top) -> str:
    return yaml.safe_dump({**GOOD, **top}, sort_keys=False)


def errors(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_space(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def validate_fails_fast(capsys, path: Path, limit_s: float = 5.0) -> str:
    start = time.perf_counter()
    assert main(["validate", str(path), "--no-count"]) == 2
    assert time.perf_counter() - start < limit_s
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return cap.err


# -- YAML the safe loader lets through -----------------------------------------------------------------------------
def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    n = len(good_text().splitlines())
    msg = errors(write(tmp_path, good_text() + "trials: 3\ntrials: 4\n"))
    assert f"line {n + 2}, column 1: duplicate key 'trials' (first at line {n + 1})" in msg
    nested = good_text().replace("scale: 0.1", "scale: 0.1\n      scale: 0.2")
    assert "duplicate key 'scale'" in errors(write(tmp_path, nested))


def test_merge_keys_may_still_override(tmp_path):
    text = good_text() + "recipe:\n  <<: {lr: 0.01, batch_size: 8}\n  lr: 0.001\n"
    assert load_space(write(tmp_path, text)).recipe["lr"].resolved == 0.001


def test_fixed_alias_bomb_ends_in_seconds(tmp_path, capsys):
    levels = "".join(f"  - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                     for p, c in zip("abcdefgh", "bcdefghi"))
    bomb = "x: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\nshared:\n" + levels
    use = good_text().replace("scale: 0.1", "scale: 0.1\n      layers: {fixed: *i}")
    text = bomb.replace("x:", "description:") + use
    err = validate_fails_fast(capsys, write(tmp_path, text))
    assert "space.yaml: line" in err and "aliases expand this document beyond 100,000 values" in err


def test_small_aliases_still_work(tmp_path):
    ok = good_text().replace("scale: 0.1", "scale: &s 0.1\n  lora_Z:\n    params: {scale: *s}")
    space = load_space(write(tmp_path, ok))
    assert space.methods["lora_Z"].params["scale"].resolved == 0.1


def test_recursive_alias_is_refused(tmp_path):
    text = good_text().replace("scale: 0.1", "scale: 0.1\n      layers: {fixed: &loop [1, *loop]}")
    assert "recursive alias" in errors(write(tmp_path, text))


def test_deep_nesting_is_refused_without_a_traceback(tmp_path, capsys):
    p = write(tmp_path, good_text() + "description: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "nested deeper than 64 levels" in errors(p)
    assert "nested deeper than 64 levels" in validate_fails_fast(capsys, p)


def test_a_50_mb_description_is_refused_in_seconds(tmp_path, capsys):
    p = tmp_path / "big.yaml"
    with p.open("w") as fh:
        fh.write(good_text() + "description: ")
        for _ in range(50):
            fh.write("x" * 1_000_000)
        fh.write("\n")
    err = validate_fails_fast(capsys, p)
    assert "big.yaml: larger than 262,144 bytes, the limit for a search space" in err


def test_values_yaml_cannot_construct_are_errors(tmp_path):
    too_long = good_text() + "trials: " + "9" * 5000 + "\n"
    assert "an integer longer than 4,300 digits" in errors(write(tmp_path, too_long))
    bad_date = good_text() + "description: 2024-13-45\n"
    assert f"line {len(good_text().splitlines()) + 1}, column 14: cannot read timestamp value" in errors(
        write(tmp_path, bad_date))


# -- values: NaN, infinite, absurdly large -------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_scale_is_refused(tmp_path, value):
    for where in (f"scale: {value}", f"scale: [0.1, {value}]", f"scale: {{fixed: {value}}}"):
        text = good_text().replace("scale: 0.1", where)
        msg = errors(write(tmp_path, text))
        assert "methods.lora_X.params.scale" in msg and "finite number > 0" in msg, msg


def test_non_finite_method_multipliers_are_refused(tmp_path):
    text = good_text().replace("scale: 0.1", "scale: 0.1\n      lr_mult: .inf")
    assert "methods.lora_X.params.lr_mult: must be a finite number >= 0" in errors(write(tmp_path, text))


@pytest.mark.parametrize(("extra", "expected"), [
    ("trials: 100000000000000000000000000000", "trials: must be an integer between 1 and 1,000,000"),
    ("budget: {max_trainable: 1000000000000000000000000000000000000}",
     "budget.max_trainable: must be an integer between 1 and 9,007,199,254,740,992"),
    ("sampler: {kind: random, seed: 99999999999999999999999999}",
     "sampler.seed: must be an integer between 0 and 4,294,967,295"),
    ("sampler: {kind: tpe, seed: -1}", "sampler.seed: must be an integer between 0 and 4,294,967,295"),
    ("fidelity: {epochs: 100000000000000000000}", "fidelity.epochs: must be an integer between 1 and 1,000,000"),
    ("recipe: {lr: " + "1" * 400 + "}", "recipe.lr: must be a number > 0"),
], ids=["trials", "budget", "seed-huge", "seed-negative", "epochs", "lr-400-digits"])
def test_absurd_numbers_are_refused(tmp_path, extra, expected):
    msg = errors(write(tmp_path, good_text() + extra + "\n"))
    assert expected in msg, msg


def test_model_num_classes_is_bounded(tmp_path):
    text = good_text(model={"name": "vim-proxy", "num_classes": 10**12})
    assert "model.num_classes: must be an integer between 1 and 1,000,000" in errors(write(tmp_path, text))


def test_huge_rank_names_the_allowed_range(tmp_path):
    text = ("model: {name: vim-proxy}\ndata: {kind: mini_vtab, tasks: [mnist5k]}\n"
            "methods: {lora_X: {params: {rank: 99999999999999999999999}}}\n")
    assert "methods.lora_X.params.rank: rank must be an integer between 1 and 65,536" in errors(write(tmp_path, text))
