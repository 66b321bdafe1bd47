"""The search commands end to end on ``tiny_debug`` (real training, seconds): ``run --workers 2`` (two worker
processes on one journal) -> ``show --json`` (Pareto front of the two objectives) -> ``export`` (and
``--retrain``) -> ``report``; ``calibrate``; and the one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hybridsearch.cli import main
from hybridsearch.peft import PeftConfig
from hybridsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-task mini-VTAB slice, the same folder as test_engine.py's: built once per session."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture(scope="module", autouse=True)
def search_env(mini_root: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(mini_root.parent))
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by the worker processes
        yield


@pytest.fixture(scope="module")
def tiny(search_env, mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``run --space tiny_debug --workers 2`` (4 trials, two objectives), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("tiny")
    storage = str(tmp / "j.journal")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", "--space", "tiny_debug", "--study", "tiny", "--storage", storage, "--workers", "2",
                     "--data-root", str(mini_root), "--out", str(tmp / "out")]) == 0
    return {"storage": storage, "tmp": tmp, "output": out.getvalue()}


def test_two_workers_share_one_journal(tiny):
    trials = optuna.load_study(study_name="tiny", storage=open_storage(tiny["storage"])).trials
    # a rare race may start one surplus trial, which the engine stops at once and does not count
    trials = [t for t in trials if not t.user_attrs.get("surplus")]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == 4  # unique numbers, exactly the target
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert os.getpid() not in {t.user_attrs["worker"]["pid"] for t in trials}  # trained in worker processes


def test_run_prints_a_line_per_finished_trial(tiny, mini_root):
    """Without a terminal (a log file, CI) the progress bar is silent: each trial, whichever worker ran it, still
    gets one line; a later run of the finished study does not repeat them."""
    study = optuna.load_study(study_name="tiny", storage=open_storage(tiny["storage"]))
    done = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("surplus")]
    for t in done:
        methods = ", ".join((t.user_attrs.get("peft") or {}).get("methods", {})) or "-"
        assert f"trial {t.number}: {t.state.name} {t.values[0]:.4f} [{methods}] trainable=" in tiny["output"]
    again = io.StringIO()
    with contextlib.redirect_stdout(again):
        assert main(["run", "--space", "tiny_debug", "--study", "tiny", "--storage", tiny["storage"],
                     "--workers", "2", "--data-root", str(mini_root), "--out", str(tiny["tmp"] / "out")]) == 0
    assert "trial 0:" not in again.getvalue() and "4/4 trials finished" in again.getvalue()


def run_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_run_two_objectives_and_show_pareto(tiny, capsys):
    study = optuna.load_study(study_name="tiny", storage=open_storage(tiny["storage"]))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)
    assert all(t.values[1] == t.user_attrs["trainable"] for t in done)
    assert (tiny["tmp"] / "out" / "leaderboard.json").is_file()
    got = run_json(capsys, ["show", "tiny", "--storage", tiny["storage"], "--json"])
    front = got["summary"]["pareto_front"]
    assert front and {r["number"] for r in front} == {t.number for t in study.best_trials}
    assert len(got["trials"]) == 4 and got["summary"]["states"] == {"COMPLETE": 4}


def test_export_writes_loadable_config(tiny, capsys):
    out = tiny["tmp"] / "winner"
    assert main(["export", "tiny", "--storage", tiny["storage"], "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    study = optuna.load_study(study_name="tiny", storage=open_storage(tiny["storage"]))
    trial = study.trials[meta["trial"]]
    assert PeftConfig.from_yaml(out / "peft.yaml").to_dict() == PeftConfig.from_dict(trial.user_attrs["peft"]).to_dict()
    assert meta["score"] == trial.values[0] and meta["seed"] == trial.user_attrs["seed"]
    assert meta["space_hash"] == study.user_attrs["space_hash"]
    assert {"hybridsearch", "torch", "optuna", "python"} <= set(meta["versions"])


def test_export_retrain_writes_adapters_and_test_accuracy(tiny, monkeypatch):
    from hybridsearch.tasks import vision as train  # the vision family trains trials and the winner

    real = train.train_classifier

    def small(model, data, val, recipe, **kw):  # full fidelity is 1,000 images: 64 keep the test short
        return real(model, (data[0][:64], data[1][:64]), val, recipe, **kw)

    monkeypatch.setattr(train, "train_classifier", small)
    out = tiny["tmp"] / "retrained"
    assert main(["export", "tiny", "--storage", tiny["storage"], "--out", str(out), "--retrain"]) == 0
    res = json.loads((out / "meta.json").read_text())["retrain"]["mnist5k"]
    assert 0.0 <= res["test_accuracy"] <= 1.0
    assert Path(res["adapters"]).is_dir() and any(Path(res["adapters"]).iterdir())


def test_report_writes_plots(tiny, capsys):
    out = tiny["tmp"] / "report"
    got = run_json(capsys, ["report", "tiny", "--storage", tiny["storage"], "--out", str(out), "--json"])
    assert {"history", "pareto", "accuracy_vs_params", "report"} <= set(got["files"])
    for name in got["files"].values():
        assert (out / name).stat().st_size > 0
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    assert "## Best trial" in md and "pareto.png" in md


def test_calibrate_json(tmp_path, mini_root, capsys):
    space = yaml.safe_load(Path(__file__).parents[2].joinpath("search_spaces", "tiny_debug.yaml").read_text())
    space["fidelity"] = {"epochs": 1, "max_train_examples": 32, "max_val_examples": 32}
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(space))
    got = run_json(capsys, ["calibrate", "--space", str(path), "--configs", "3", "--full-epochs", "1",
                            "--full-train-examples", "32", "--seed", "1", "--data-root", str(mini_root), "--json"])
    assert got["configs"] == 3 and len(got["rows"]) == 3
    assert got["proxy"]["epochs"] == 1 and got["full"] == {"epochs": 1, "tasks": ["mnist5k"],
                                                           "max_train_examples": 32, "max_val_examples": None}
    for r in got["rows"]:
        assert 0 <= r["proxy"] <= 1 and 0 <= r["full"] <= 1 and r["trainable"] <= 30000
    assert got["spearman"] is None or -1 <= got["spearman"] <= 1
    assert got["verdict"]


# -- errors: one line, exit status 2 ----------------------------------------------------------------------------------
def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hybridsearch {argv[0]}: error:")
    return err


def _studies(storage: Path) -> list[str]:
    if not storage.exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(storage)))]


def test_show_missing_study(tmp_path, capsys):
    err = _one_line_error(capsys, ["show", "nope", "--storage", str(tmp_path / "j.journal")])
    assert "no study 'nope'" in err


def test_run_malformed_yaml_creates_no_study(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: vim-proxy\ndata: [\n")
    storage = tmp_path / "j.journal"
    err = _one_line_error(capsys, ["run", "--space", str(bad), "--storage", str(storage)])
    assert "malformed YAML" in err
    assert _studies(storage) == []


def test_run_vim_vtab_without_data_root(tmp_path, capsys):
    storage = tmp_path / "j.journal"
    err = _one_line_error(capsys, ["run", "--space", "vim_vtab", "--storage", str(storage),
                                   "--out", str(tmp_path / "out")])
    assert "--data-root" in err and "docs/data.md" in err
    assert _studies(storage) == []  # nothing written before the data check
