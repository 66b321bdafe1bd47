"""CLI habits: ``--version``, ``$HYBRIDSEARCH_STORAGE``, readers that never create a storage or a study, and
``--json`` documents (one on stdout, prose on stderr) from ``run``, ``resume`` and ``export``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from hybridsearch import __version__
from hybridsearch.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture
def space(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "1")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "name": "conv", "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)}, "trials": 2,
        "fidelity": {"epochs": 1, "max_train_examples": 8, "max_val_examples": 4},
        "sampler": {"kind": "random", "seed": 0}, "recipe": {"lr": 1.0e-3, "batch_size": 8, "warmup_epochs": 0},
        "methods": {"lora_X": {"params": {"rank": 2}}}}))
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hybridsearch {__version__}"


def test_the_storage_environment_variable(tmp_path, space, monkeypatch, capsys):
    """``$HYBRIDSEARCH_STORAGE`` is the default storage of every command, from any folder."""
    monkeypatch.setenv("HYBRIDSEARCH_STORAGE", str(tmp_path / "shared.journal"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--space", str(space), "--out", str(tmp_path / "out")]) == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["show", "conv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["study"] == "conv"
    assert not (other / "runs").exists()


@pytest.mark.parametrize("command", [["show", "conv"], ["report", "conv", "--out", "r"], ["export", "conv",
                                     "--out", "w"], ["resume", "conv"]])
def test_readers_never_create_a_storage_or_a_study(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRIDSEARCH_STORAGE", raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "runs/hybridsearch.journal" in err and "no such file" in err, err
    assert not (tmp_path / "runs").exists()
    sqlite = tmp_path / "x.db"
    assert main([*command, "--storage", f"sqlite:///{sqlite}"]) == 2
    assert not sqlite.exists()


def test_a_missing_study_names_the_storage_looked_in(tmp_path, space, capsys):
    storage = str(tmp_path / "j.journal")
    assert main(["run", "--space", str(space), "--storage", storage, "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["show", "nope", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert f"no study 'nope' in {storage}; studies there: conv" in err


def test_json_documents_on_stdout_prose_on_stderr(tmp_path, space, capsys):
    storage = str(tmp_path / "j.journal")
    capsys.readouterr()
    assert main(["run", "--space", str(space), "--storage", storage, "--out", str(tmp_path / "o"), "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)  # one JSON document, nothing else
    assert doc["studies"][0]["study"] == "conv" and doc["studies"][0]["finished"] == 2
    assert "trials finished" in cap.err and "trial 0:" in cap.err
    assert main(["resume", "conv", "--storage", storage, "--trials", "3", "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"][0]["finished"] == 3
    assert main(["export", "conv", "--storage", storage, "--out", str(tmp_path / "w"), "--json"]) == 0
    cap = capsys.readouterr()
    meta = json.loads(cap.out)
    assert meta == json.loads((tmp_path / "w" / "meta.json").read_text())
    assert main(["export", "conv", "--storage", storage, "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trial {meta['trial']}: score") and "{" not in out  # prose only
