"""What ``run`` refuses before a search starts, and what it never prints: options that would be stored with a
study or break a worker later, names that would reach the terminal or a folder raw, an output folder it cannot
write, data that would mix with a study's own, and passwords of storage URLs. One line, exit 2, nothing created."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from hybridsearch.cli import main
from hybridsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
PASSWORD = "S3cr3tPW"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


def space_file(tmp_path: Path, root: Path, **over) -> Path:
    d = {"model": {"name": "vim-proxy"}, "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
         "trials": 1, "fidelity": {"epochs": 1, "max_train_examples": 8, "max_val_examples": 4},
         "sampler": {"kind": "random", "seed": 0}, "recipe": {"lr": 1.0e-3, "batch_size": 8, "warmup_epochs": 0},
         "methods": {"lora_X": {"params": {"rank": 2}}}, **over}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def one_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in cap.err, err
    assert not any(ord(c) < 32 and c != "\t" for c in err), repr(err)  # no escape sequence reaches the terminal
    return err


def studies(storage: Path) -> list[str]:
    if not storage.exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(storage)))]


def run_refused(capsys, tmp_path: Path, space: Path, *extra: str, study: str = "s") -> str:
    storage = tmp_path / "j.journal"
    err = one_line(capsys, ["run", "--space", str(space), "--study", study, "--storage", str(storage),
                            "--out", str(tmp_path / "out"), *extra])
    assert studies(storage) == []
    return err


@pytest.mark.parametrize(("extra", "words"), [
    (["--trials", "0"], ["--trials 0", "integer >= 1"]),
    (["--trials", "-3"], ["--trials -3", "integer >= 1"]),
    (["--seed", "-1"], ["--seed -1", "from 0 to"]),
    (["--seed", str(2**40)], ["--seed", "from 0 to 4,294,967,295"]),
    (["--timeout", "0"], ["--timeout 0", "> 0"]),
    (["--timeout", "nan"], ["--timeout nan", "> 0"]),
])
def test_options_that_would_be_stored_are_refused(tmp_path, root, capsys, extra, words):
    err = run_refused(capsys, tmp_path, space_file(tmp_path, root), *extra)
    assert all(w in err for w in words), err


@pytest.mark.parametrize(("study", "words"), [
    ("..", ["study name '..'", "names no folder"]),
    (".", ["study name '.'", "names no folder"]),
    ("evil\x1b[2Jname", ["study name 'evil\\x1b[2Jname'", "control characters"]),
    ("two\nlines", ["study name 'two\\nlines'", "control characters"]),
])
def test_study_names_never_escape_runs_or_reach_the_terminal_raw(tmp_path, root, capsys, study, words):
    err = run_refused(capsys, tmp_path, space_file(tmp_path, root), study=study)
    assert all(w in err for w in words), err
    assert not (tmp_path.parent / "leaderboard.json").exists()


def test_a_space_name_with_control_characters_is_refused_as_the_default_study_name(tmp_path, root, capsys):
    space = space_file(tmp_path, root, name="red\x1b[31m")
    storage = tmp_path / "j.journal"
    err = one_line(capsys, ["run", "--space", str(space), "--storage", str(storage), "--out", str(tmp_path / "o")])
    assert "control characters" in err and "the space's name" in err
    assert studies(storage) == []


def test_out_that_is_a_file_is_refused_before_the_search(tmp_path, root, capsys):
    (tmp_path / "afile").write_text("x")
    space = space_file(tmp_path, root)
    storage = tmp_path / "j.journal"
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        err = one_line(capsys, ["run", "--space", str(space), "--study", "s", "--storage", str(storage),
                                "--out", str(out)])
        assert f"--out {out}" in err
    assert studies(storage) == []


def test_a_study_refuses_other_data(tmp_path, root, capsys, monkeypatch):
    """Running a study again on another --data-root would mix two datasets in one leaderboard."""
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "1")
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    space, storage = space_file(tmp_path, root), tmp_path / "j.journal"
    base = ["--space", str(space), "--study", "s", "--storage", str(storage), "--out", str(tmp_path / "out")]
    assert main(["run", *base]) == 0
    study = optuna.load_study(study_name="s", storage=open_storage(str(storage)))
    assert study.user_attrs["data"] == str(root.resolve())
    assert study.trials[0].user_attrs["data"] == str(root.resolve())  # each trial records its data
    err = one_line(capsys, ["run", *base, "--data-root", str(other), "--trials", "2"])
    assert "created with the data in" in err and str(other.resolve()) in err and "new --study" in err
    err = one_line(capsys, ["resume", "s", "--storage", str(storage), "--data-root", str(other), "--trials", "2"])
    assert "created with the data in" in err
    assert len(optuna.load_study(study_name="s", storage=open_storage(str(storage))).trials) == 1
    assert main(["run", *base, "--data-root", str(root), "--trials", "2"]) == 0  # the same data: continues


def test_passwords_in_storage_urls_are_never_printed(tmp_path, capsys):
    from hybridsearch.search.storage import mask_url, redact

    url = f"postgresql://alice:{PASSWORD}@127.0.0.1:9/hybridsearch"
    for argv in (["show", "s", "--storage", url], ["--debug", "show", "s", "--storage", url]):
        capsys.readouterr()
        assert main(argv) == 2
        cap = capsys.readouterr()
        assert PASSWORD not in cap.err + cap.out and "alice:***@127.0.0.1" in cap.err
    assert mask_url(url) == "postgresql://alice:***@127.0.0.1:9/hybridsearch"
    assert PASSWORD not in redact(f"could not parse {url} ({PASSWORD})", url)


def test_the_leaderboard_goes_to_a_safe_folder(tmp_path, root, monkeypatch):
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "1")
    monkeypatch.chdir(tmp_path)
    space = space_file(tmp_path, root)
    assert main(["run", "--space", str(space), "--study", "a/b c", "--storage", str(tmp_path / "j.journal")]) == 0
    board = json.loads((tmp_path / "runs" / "a_b_c" / "leaderboard.json").read_text())
    assert board["summary"]["study"] == "a/b c"
