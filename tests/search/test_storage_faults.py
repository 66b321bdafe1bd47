"""A storage fault is not a trial fault: a full disk under a journal or SQLite stops the run with one line naming
the storage and the cause, no trial fails or finishes because of it, and ``resume`` after the disk is freed
re-runs every trial the fault interrupted. Training is faked (a fixed score per seed); the storages are real and
their writes fail exactly as a full disk makes them fail (ENOSPC from the journal file, SQLITE_FULL)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hybridsearch.cli import main
from hybridsearch.search import storage as st
from hybridsearch.search.storage import open_storage
from hybridsearch.search.study import finished
from hybridsearch.tasks import vision
from hybridsearch.training.classifier import TrainResult

optuna.logging.set_verbosity(optuna.logging.WARNING)
TARGET = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


class Disk:
    """A disk that fills up after ``free`` trials finished: every later storage write fails until freed."""

    def __init__(self, free: int) -> None:
        self.free, self.full, self.trained = free, False, 0

    def train(self, model, data, val, recipe, *, seed=0, on_epoch=None, progress=None):
        self.trained += 1
        if self.trained > self.free:
            self.full = True  # it fills up while this trial trains
        if on_epoch is not None:
            on_epoch(0, (seed % 11) / 11)
        return TrainResult(val_acc=(seed % 11) / 11)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    d = Disk(free=2)
    monkeypatch.setattr(vision, "train_classifier", d.train)
    monkeypatch.setenv("HYBRIDSEARCH_WORKERS", "1")
    real_append = st.JournalBackend.append_logs

    def append_logs(self, logs):
        if d.full:
            raise OSError(errno.ENOSPC, "No space left on device", self._file_path)
        return real_append(self, logs)

    monkeypatch.setattr(st.JournalBackend, "append_logs", append_logs)
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def before(conn, cursor, statement, parameters, context, executemany):
        if d.full and statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "before_cursor_execute", before)
    yield d
    event.remove(Engine, "before_cursor_execute", before)


STORAGES = {"journal": lambda tmp: str(tmp / "study.journal"), "sqlite": lambda tmp: f"sqlite:///{tmp}/study.db"}


@pytest.mark.parametrize("kind", list(STORAGES))
def test_a_full_disk_stops_the_run_and_resume_reruns_what_it_interrupted(tmp_path, root, disk, capsys, kind):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "model": {"name": "vim-proxy"}, "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
        "trials": TARGET, "fidelity": {"epochs": 1, "max_train_examples": 8, "max_val_examples": 4},
        "sampler": {"kind": "random", "seed": 0}, "recipe": {"lr": 1.0e-3, "batch_size": 8, "warmup_epochs": 0},
        "methods": {"lora_X": {"params": {"rank": {"int": [2, 8], "step": 2}, "scale": {"log": [0.01, 1.0]}}}},
    }))
    url = STORAGES[kind](tmp_path)
    argv = ["run", "--space", str(space), "--study", "full", "--storage", url, "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "Should not reach" not in err, err
    cause = "No space left on device" if kind == "journal" else "database or disk is full"
    assert f"storage {url}" in err and cause in err and "resume full" in err, err
    study = optuna.load_study(study_name="full", storage=open_storage(url))
    before = {t.number: t for t in study.trials}
    # no trial failed or finished because of the disk: 2 completed, the one it interrupted is unfinished
    assert [t.state for t in before.values()].count(TrialState.COMPLETE) == 2
    assert not [t for t in before.values() if t.state == TrialState.FAIL and "storage" not in
                t.user_attrs.get("failure", "")]
    interrupted = {n: t.params for n, t in before.items() if not t.state.is_finished() or
                   t.user_attrs.get("failure", "").startswith("the storage failed")}
    assert len(interrupted) == 1, before

    disk.full, disk.free = False, 10**6  # space freed
    assert main(["resume", "full", "--storage", url, "--out", str(tmp_path / "out")]) == 0
    study = optuna.load_study(study_name="full", storage=open_storage(url))
    assert finished(study) == TARGET
    for n, params in interrupted.items():  # re-run with the same configuration, and finished
        retry = [t for t in study.trials if t.user_attrs.get("retry_of") == n]
        assert len(retry) == 1 and retry[0].params == params and retry[0].state == TrialState.COMPLETE
    for n, t in before.items():  # what finished before the fault is kept as it was
        if t.state == TrialState.COMPLETE:
            assert study.trials[n].values == t.values
