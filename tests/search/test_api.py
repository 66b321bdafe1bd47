"""The public search API (``hybridsearch.run_search`` / ``resume_search``): it returns the study, its callbacks
see every finished trial from every worker whichever engine ran it, and studies carry metric names."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

import hybridsearch as hs
from hybridsearch.errors import ConfigError, StorageError
from hybridsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


def space(root: Path, trials: int = 3, objectives: list[str] | None = None) -> dict:
    return {"name": "api", "model": {"name": "vim-proxy"},
            "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
            "objectives": objectives or ["accuracy"], "trials": trials,
            "fidelity": {"epochs": 1, "max_train_examples": 8, "max_val_examples": 4},
            "sampler": {"kind": "random", "seed": 0}, "recipe": {"lr": 1.0e-3, "batch_size": 8, "warmup_epochs": 0},
            "methods": {"lora_X": {"params": {"rank": {"int": [2, 4], "step": 2}}}, "tune_D": {"optional": False}}}


@pytest.mark.parametrize("workers", [1, 2])
def test_callbacks_see_every_trial_from_every_worker(tmp_path, root, workers):
    seen: list[tuple[str, int]] = []
    ran_in: set[int] = set()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space(root, trials=4)))
    study = hs.run_search(path, storage=str(tmp_path / "j.journal"), workers=workers,
                          callbacks=[lambda st, t: (seen.append((st.study_name, t.number)),
                                                    ran_in.add(t.user_attrs["worker"]["pid"]))])
    assert isinstance(study, optuna.Study) and study.study_name == "api"
    assert sorted(n for _, n in seen) == sorted(t.number for t in study.trials)  # each once, from any worker
    assert ran_in == {t.user_attrs["worker"]["pid"] for t in study.trials}
    # one worker runs in this process; two run in child processes (how many of them got a trial depends on
    # how fast each started: test_reliability checks that workers share a study)
    assert (ran_in == {os.getpid()}) if workers == 1 else (os.getpid() not in ran_in and len(ran_in) <= workers)
    seen.clear()
    study = hs.resume_search("api", storage=str(tmp_path / "j.journal"), trials=6,
                             callbacks=[lambda st, t: seen.append((st.study_name, t.number))])
    assert [n for _, n in seen] == [4, 5]  # only what finished while it ran


def test_metric_names_and_a_space_given_as_a_mapping(tmp_path, root):
    study = hs.run_search(space(root, trials=2, objectives=["accuracy", "params"]), study="two",
                          storage=str(tmp_path / "j.journal"))
    assert study.metric_names == ["accuracy", "trainable_params"]
    assert list(study.trials_dataframe().columns).count("values_accuracy") == 1
    saved = Path(study.user_attrs["space_ref"])  # the mapping was written beside the storage: resumable
    assert saved.parent == tmp_path and saved.is_file()
    assert hs.resume_search("two", storage=str(tmp_path / "j.journal"), trials=3).trials[-1].number == 2


def test_bad_calls_are_one_clear_error(tmp_path, root):
    with pytest.raises(ConfigError, match="--trials 0"):
        hs.run_search(space(root), storage=str(tmp_path / "j.journal"), trials=0)
    with pytest.raises(ConfigError, match="a bundled name, a YAML path"):
        hs.run_search(42, storage=str(tmp_path / "j.journal"))
    with pytest.raises(StorageError, match="no such file"):
        hs.resume_search("nope", storage=str(tmp_path / "none.journal"))
    assert not (tmp_path / "none.journal").exists()
    assert not (tmp_path / "j.journal").exists() or not optuna.get_all_study_summaries(
        open_storage(str(tmp_path / "j.journal")))
