"""The ``hybridsearch`` command: ``count`` and ``list`` in-process, errors as one line with exit status 2, and
one run of the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridsearch import METHODS, MODELS, count_config
from hybridsearch.cli import main

PEFT_YAML = """\
methods:
  lora_X: {rank: 64}
  additional_scan: {states: 6}
  tune_conv1d: {}
"""


@pytest.fixture
def peft_file(tmp_path: Path) -> Path:
    path = tmp_path / "hybrid.yaml"
    path.write_text(PEFT_YAML)
    return path


def test_count_json(peft_file, capsys):
    assert main(["count", "--model", "vim-small", "--peft", str(peft_file), "--json"]) == 0
    out = capsys.readouterr().out
    got = json.loads(out)
    assert got["by_method"] == {"lora_X": 1_769_472, "additional_scan": 663_552, "tune_conv1d": 147_456}
    assert got["head"] == 385_000
    assert got["trainable"] == 1_769_472 + 663_552 + 147_456 + 385_000
    assert got == count_config("vim-small", {"methods": {"lora_X": {"rank": 64}, "additional_scan": {"states": 6},
                                                         "tune_conv1d": {}}})
    assert len(out.strip().splitlines()) == 1


def test_count_linear_probing_and_num_classes(capsys):
    assert main(["count", "--model", "vim-tiny", "--num-classes", "10", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["by_method"] == {}
    assert got["head"] == got["trainable"] == 10 * 192 + 10


def test_count_table(peft_file, capsys):
    assert main(["count", "--model", "vim-small", "--peft", str(peft_file)]) == 0
    out = capsys.readouterr().out
    assert "1,769,472" in out and "lora_X" in out and "trainable" in out


def test_list_models_json(capsys):
    assert main(["list", "models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == MODELS.names()
    small = next(r for r in rows if r["name"] == "vim-small")
    assert small == {"name": "vim-small", "kind": "vim", "d_model": 384, "layers": 24, "d_state": 16,
                     "pretrained": False, "description": MODELS.get("vim-small").description}
    assert next(r for r in rows if r["name"] == "mamba-2.8b")["layers"] == 64


def test_list_methods_json(capsys):
    assert main(["list", "methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == METHODS.names()
    by_name = {r["name"]: r for r in rows}
    assert by_name["tune_cls_token"]["models"] == "vim"
    assert by_name["lora_X"]["models"] == "vim,lm"
    assert by_name["lora_X"]["defaults"]["rank"] == 64
    assert by_name["tune_dt_bias"]["defaults"]["decay_mult"] == 100.0
    assert by_name["prompt"]["per_layer"] is False
    assert "MambaPEFT" in by_name["lora_X"]["source"] and "2025" in by_name["lora_X"]["source"]
    assert "Galim" in by_name["sdt"]["source"] and "ICML 2025" in by_name["sdt"]["source"]
    assert all("Kang" in by_name[n]["source"] for n in ("state_offset", "output_offset", "init_state"))
    assert by_name["sdt"]["defaults"]["targets"] == ["A_log", "B", "C"]


def test_list_tables(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "additional_scan" in out and "source" in out and "Galim" in out
    assert main(["list", "models"]) == 0
    assert "mamba-1.4b" in capsys.readouterr().out


BAD_FILES = [
    ("malformed-yaml", "methods:\n  lora_X: {rank: 4\n", "malformed YAML"),
    ("unknown-method", "methods:\n  lora_Q: {}\n", "methods.lora_Q: unknown method; allowed:"),
    ("bad-rank", "methods:\n  lora_X: {rank: 0}\n", "methods.lora_X.rank"),
    ("bad-placement", "methods:\n  affix: {placement: middle}\n", "allowed: single_prefix"),
    ("layers-out-of-range", "methods:\n  lora_X: {layers: '20-30'}\n", "methods.lora_X.layers"),
]


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_peft_file_is_one_line_exit_2(tmp_path, capsys, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["count", "--model", "vim-small", "--peft", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("hybridsearch count: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_missing_peft_file_and_model(tmp_path, capsys):
    assert main(["count", "--model", "vim-small", "--peft", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["count", "--model", "vim-huge"]) == 2
    err = capsys.readouterr().err
    assert "vim-huge" in err and "vim-small" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("methods:\n  lora_X: {rank: 0}\n")
    assert main(["--debug", "count", "--model", "vim-small", "--peft", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["list", "widgets"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_installed_console_script():
    """One run of the real entry point (``[project.scripts] hybridsearch = hybridsearch.cli:main``)."""
    script = Path(sys.executable).parent / "hybridsearch"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "hybridsearch.cli"]
    done = subprocess.run([*cmd, "list", "methods", "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json.loads(done.stdout)] == METHODS.names()


def test_tables_piped_to_a_log_are_not_cut_to_80_columns(capsys):
    """Rich assumes 80 columns without a terminal and would cut the names the tables exist to show."""
    from rich.table import Table

    from hybridsearch.display import console

    c = console()
    assert not c.is_terminal and c.width >= 140
    t = Table()
    t.add_column("methods")
    names = "lora_in_proj, lora_X, lora_out_proj, prompt, additional_scan, tune_conv1d, tune_D"
    t.add_row(names)
    c.print(t)
    assert names in capsys.readouterr().out
