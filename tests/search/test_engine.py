"""The Optuna engine on tiny fidelities: one and two objectives, two-stage runs, pruning, the parameter budget,
trial isolation, resume after a SIGKILL, seeding; plus the report and calibration modules (two workers on one
journal: test_cli_search.py). Most tests swap training for a scripted stand-in (model building, PEFT, counting
and storage stay real); the kill/resume test trains for real, in another process."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hybridsearch.cli import main
from hybridsearch.errors import TrialFailure
from hybridsearch.search.optuna_engine import run_study
from hybridsearch.search.space import check_budget, load_space
from hybridsearch.search.storage import open_storage
from hybridsearch.search.study import RunOptions, finished, open_study
from hybridsearch.tasks import vision
from hybridsearch.training.classifier import TrainResult

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- environment and helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-task mini-VTAB slice (2 s to build, vs 10 s for all seven), shared with test_cli_search.py: the
    same folder under the session's base temp, so it is built once per session."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture(scope="module", autouse=True)
def search_env(mini_root: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(mini_root.parent))  # nothing lands in ~/.cache
        mp.setenv("OMP_NUM_THREADS", "1")  # tiny model: one thread per process is fastest on shared cores
        yield


def space_dict(root: Path, **over) -> dict:
    """A seconds-long single-objective space: mnist5k, 32 images, 1 epoch, 4 random trials."""
    d = {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
        "objectives": ["accuracy"],
        "trials": 4,
        "fidelity": {"epochs": 1, "max_train_examples": 32, "max_val_examples": 32},
        "sampler": {"kind": "random", "seed": 0},
        "recipe": {"lr": 1.0e-3, "batch_size": 32, "warmup_epochs": 0},
        "methods": {
            "lora_X": {"params": {"rank": {"int": [2, 4], "step": 2, "default": 2}, "scale": 0.1}},
            "affix": {"params": {"tokens": {"int": [1, 2], "default": 1}, "projection": False}},
            "tune_D": {"optional": False},
        },
    }
    d.update(over)
    return d


@pytest.fixture
def make_space(tmp_path: Path, mini_root: Path) -> Callable[..., Path]:
    """Writes ``space_dict(**over)`` to ``tmp_path/NAME.yaml``."""

    def make(name: str = "space", **over) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(space_dict(mini_root, **over), sort_keys=False))
        return path

    return make


def run(space: Path, storage: Path, study: str, **kw) -> optuna.Study:
    return run_study(RunOptions(study=study, storage=str(storage), space_ref=str(space), **kw))


def load(storage: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(str(storage)))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


class Scripted:
    """Stands in for ``train_classifier``: reports ``acc(call, epoch)`` each epoch (it may raise) and returns the
    last one. ``calls`` counts the trainings, one per trial and task."""

    def __init__(self, acc: Callable[[int, int], float]) -> None:
        self.acc, self.calls = acc, 0

    def __call__(self, model, train, val, recipe, *, seed: int = 0, on_epoch=None, progress=None) -> TrainResult:
        call, acc = self.calls, math.nan
        self.calls += 1
        for epoch in range(recipe.epochs):
            acc = self.acc(call, epoch)
            if on_epoch is not None:
                on_epoch(epoch, acc)
        return TrainResult(val_acc=acc)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Scripted]:
    def install(acc: Callable[[int, int], float] = lambda call, epoch: 0.5) -> Scripted:
        s = Scripted(acc)
        monkeypatch.setattr(vision, "train_classifier", s)
        return s

    return install


# -- objectives --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objectives", [["accuracy"], ["accuracy", "params"]])
def test_objectives_are_recorded(tmp_path, make_space, scripted, objectives):
    scripted(lambda call, epoch: 0.1 * (call + 1))
    study = run(make_space(objectives=objectives, trials=3), tmp_path / "j.journal", "obj")
    assert len(study.directions) == len(objectives)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert len(t.values) == len(objectives)
        assert t.values[0] == pytest.approx(t.user_attrs["task_accuracy"]["mnist5k"])
        if len(objectives) == 2:
            assert t.values[1] == t.user_attrs["trainable"] == t.user_attrs["counts"]["trainable"]
        else:  # one objective: every epoch is reported for the pruner
            assert list(t.intermediate_values) == [0]


# -- stages ----------------------------------------------------------------------------------------------------------
def test_two_stages_select_then_tune(tmp_path, make_space, scripted):
    scripted(lambda call, epoch: [0.3, 0.6][call] if call < 2 else 0.5)  # stage 1: trial 1 is best
    storage = tmp_path / "j.journal"
    space = make_space("staged", trials=2, stages=[
        {"name": "stage1", "select": True, "trials": 2},
        {"name": "stage2", "tune": True, "trials": 2},
    ])
    assert main(["run", "--space", str(space), "--study", "st", "--storage", str(storage),
                 "--out", str(tmp_path / "out")]) == 0
    names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(str(storage)))}
    assert names == {"st.stage1", "st.stage2"}
    s1, s2 = load(storage, "st.stage1"), load(storage, "st.stage2")
    assert finished(s1) == 2 and finished(s2) == 2
    assert all(k.startswith("use.") for t in s1.trials for k in t.params)  # stage 1 only switches methods
    best = max(s1.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.values[0], -t.number))
    chosen = load_space(space).stage_space(1).selected_methods(best.params)
    assert s2.user_attrs["chosen"] == chosen and s2.user_attrs["stage"] == 2
    for t in s2.trials:
        assert set(t.user_attrs["peft"]["methods"]) <= set(chosen)
        assert not any(k.startswith("use.") for k in t.params)
        assert all(k.split(".")[0] in chosen for k in t.params)


# -- pruning ---------------------------------------------------------------------------------------------------------
def test_pruned_trial_records_where(tmp_path, make_space, scripted):
    # trial 0 reports 0.9; later ones report 0.1 and fall below the median at their first report
    scripted(lambda call, epoch: 0.9 if call == 0 else 0.1)
    space = make_space(trials=3, fidelity={"epochs": 2, "max_train_examples": 32, "max_val_examples": 32},
                        pruner={"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    study = run(space, tmp_path / "j.journal", "prune")
    assert states(study) == ["COMPLETE", "PRUNED", "PRUNED"]
    assert study.trials[0].intermediate_values == {0: 0.9, 1: 0.9}
    for t in study.trials[1:]:
        assert t.intermediate_values == {0: 0.1}
        assert t.user_attrs["pruned_at"] == {"task": "mnist5k", "epoch": 0, "accuracy": 0.1}
        assert "mnist5k" not in t.user_attrs["timings"]  # pruned before the task finished


# -- budget ----------------------------------------------------------------------------------------------------------
def test_over_budget_trial_is_pruned_before_training(tmp_path, make_space, scripted):
    trainer = scripted()
    methods = {"lora_X": {"params": {"rank": 64, "scale": 0.1}}, "tune_D": {"optional": False}}
    space = make_space(trials=2, methods=methods, budget={"max_trainable": 20000})
    storage = tmp_path / "j.journal"
    opts = RunOptions(study="budget", storage=str(storage), space_ref=str(space))
    check_budget(load_space(space), {"methods": {"tune_D": {}}})  # first count in a process: imports, warm-up
    study = open_study(opts, load_space(space), create=True)
    study.enqueue_trial({"use.lora_X": True})  # 49K+ trainable: over the budget
    study.enqueue_trial({"use.lora_X": False})
    study = run_study(opts)
    over, ok = study.trials
    assert over.state == TrialState.PRUNED and ok.state == TrialState.COMPLETE
    assert over.user_attrs["failure"].startswith("over budget")
    assert over.user_attrs["trainable"] > 20000 >= ok.user_attrs["trainable"]
    assert "counts.mnist5k" not in over.user_attrs  # no model was built for it
    assert over.duration.total_seconds() < 2.0
    assert trainer.calls == 1


def test_crashed_workers_fail_the_run(tmp_path, mini_root):
    """Workers that stop before the target (here: a data root without the task) make ``run`` fail with their
    reason, not exit 0."""
    from hybridsearch.errors import HybridSearchError

    empty = tmp_path / "empty"
    empty.mkdir()
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(empty, trials=2)))
    with pytest.raises(HybridSearchError, match=r"empty/mnist5k not found \(worker 0\).*hybridsearch resume crash"):
        run(space, tmp_path / "j.journal", "crash", workers=2)
    assert finished(load(tmp_path / "j.journal", "crash")) == 0


# -- trial isolation -------------------------------------------------------------------------------------------------
def test_a_broken_trial_fails_alone(tmp_path, make_space, scripted):
    def acc(call: int, epoch: int) -> float:
        if call == 1:
            raise RuntimeError("boom")
        if call == 2:
            raise TrialFailure("non-finite loss (nan) at epoch 0, step 0")
        return math.nan if call == 3 else 0.5

    scripted(acc)
    study = run(make_space(trials=5), tmp_path / "j.journal", "iso")
    assert states(study) == ["COMPLETE", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    reasons = [t.user_attrs.get("failure") for t in study.trials]
    assert reasons[1] == "RuntimeError: boom"
    assert reasons[2].startswith("non-finite loss")
    assert reasons[3].startswith("non-finite validation accuracy")
    assert study.trials[4].values == [0.5]


# -- resume after a kill --------------------------------------------------------------------------------------------
def _trials_or_none(storage: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return load(storage, study).get_trials(deepcopy=False)
    except KeyError:
        return []


def _wait_for_running(proc: subprocess.Popen, storage: Path, study: str, timeout: float = 120.0):
    """A RUNNING trial that has sampled its config, once at least one trial has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before a trial could be killed"
        trials = _trials_or_none(storage, study) if storage.exists() else []
        running = [t for t in trials if t.state == TrialState.RUNNING and "peft" in t.user_attrs]
        if running and any(t.state.is_finished() for t in trials):
            return running[0]
        time.sleep(0.1)
    pytest.fail(f"no RUNNING trial within {timeout:.0f} s")


def test_resume_after_kill(tmp_path, make_space):
    space = make_space(trials=2, fidelity={"epochs": 2, "max_train_examples": 96, "max_val_examples": 32})
    storage, log = tmp_path / "j.journal", tmp_path / "run.log"
    cmd = [sys.executable, "-m", "hybridsearch.cli", "run", "--space", str(space), "--study", "kill",
           "--storage", str(storage), "--out", str(tmp_path / "out")]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT)
        try:
            victim = _wait_for_running(proc, storage, "kill")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    before = load(storage, "kill").trials
    assert before[victim.number].state == TrialState.RUNNING, log.read_text()[-2000:]
    kept = {t.number: t.values for t in before if t.state.is_finished()}

    assert main(["resume", "kill", "--storage", str(storage), "--out", str(tmp_path / "out")]) == 0
    study = load(storage, "kill")
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["failure"].startswith("worker died")
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params and retries[0].number > victim.number
    assert {n: study.trials[n].values for n in kept} == kept
    assert finished(study) == 2 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


# -- seeding ---------------------------------------------------------------------------------------------------------
def test_same_seed_same_first_configs(tmp_path, make_space, scripted):
    scripted()
    space, storage = make_space(trials=3), tmp_path / "j.journal"
    a, b = (run(space, storage, name, seed=7) for name in ("a", "b"))
    first = [[t.params for t in sorted(s.trials, key=lambda t: t.number)] for s in (a, b)]
    assert len(first[0]) == 3 and first[0] == first[1]
    assert [t.user_attrs["seed"] for t in a.trials] == [7, 8, 9]  # training seed = study seed + trial number


# -- report module ---------------------------------------------------------------------------------------------------
def _fake_study(n: int, directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        t = study.ask()
        x = t.suggest_float("lora_X.scale", 0.01, 1.0, log=True)
        t.suggest_categorical("use.affix", [False, True])
        t.set_user_attr("trainable", 1000 * (i + 1))
        t.set_user_attr("peft", {"methods": {"lora_X": {}}})
        study.tell(t, x if len(directions) == 1 else (x, 1000 * (i + 1)))
    return study


def test_report_with_too_few_trials_notes_it(tmp_path):
    from hybridsearch.search.report import make_report

    r = make_report(_fake_study(1, ["maximize"]), tmp_path)
    assert "importance" not in r["files"] and "pareto" not in r["files"]
    assert any(n.startswith("importance: 1 completed trial") for n in r["notes"])
    assert {"history", "accuracy_vs_params", "report"} <= set(r["files"])
    md = (tmp_path / "report.md").read_text()
    assert "## Notes" in md and "Trial #0" in md


def test_report_two_objectives(tmp_path):
    from hybridsearch.search.report import make_report

    r = make_report(_fake_study(6, ["maximize", "minimize"]), tmp_path)
    assert set(r["files"]) == {"history", "importance", "pareto", "accuracy_vs_params", "report"}
    for key, name in r["files"].items():
        head = (tmp_path / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" if key != "report" else head.startswith(b"# Study")
    assert set(r["importances"]) == {"lora_X.scale", "use.affix"}
    assert "## Pareto front" in (tmp_path / "report.md").read_text()


# -- calibration: rank correlation -----------------------------------------------------------------------------------
def test_rank_correlations_match_scipy():
    from scipy import stats

    from hybridsearch.search.calibrate import kendall_tau_b, rank_correlations, spearman

    x = [0.1, 0.4, 0.4, 0.2, 0.9, 0.5, 0.5, 0.3]
    y = [0.2, 0.3, 0.5, 0.1, 0.8, 0.8, 0.4, 0.3]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    r = rank_correlations(x, y)
    assert r["spearman"] == pytest.approx(spearman(x, y), abs=1e-4) and 0 <= r["spearman_p"] <= 1
    assert rank_correlations([1, 2, 3], [3, 2, 1])["spearman"] == -1.0
    assert rank_correlations([0.5, 0.5, 0.5], [1, 2, 3])["spearman"] is None  # constant: undefined
    assert rank_correlations([1, 2], [1, 2])["kendall"] is None  # too few


def test_calibrate_scores_each_config_twice(tmp_path, make_space, scripted):
    from hybridsearch.search.calibrate import calibrate

    # every config at proxy fidelity first (calls 0-2), then at full fidelity (3-5): the same order
    scripted(lambda call, epoch: [0.3, 0.5, 0.4, 0.6, 0.8, 0.7][call])
    got = calibrate(load_space(make_space()), 3, full_epochs=2, full_train_examples=64, log=lambda m: None)
    assert got["configs"] == got["scored"] == 3
    assert got["proxy"]["epochs"] == 1 and got["full"]["epochs"] == 2 and got["full"]["max_train_examples"] == 64
    assert len({str(r["params"]) for r in got["rows"]}) == 3
    assert [(r["proxy"], r["full"], r["proxy_rank"]) for r in got["rows"]] == [(0.3, 0.6, 3), (0.5, 0.8, 1),
                                                                               (0.4, 0.7, 2)]
    assert got["spearman"] == 1.0 and got["kendall"] == 1.0 and got["top1_agrees"] and got["regret"] == 0
    assert got["verdict"].startswith("trust the proxy")


# -- baselines -------------------------------------------------------------------------------------------------------
def test_baselines_run_first_and_are_compared(tmp_path, make_space, scripted, capsys):
    """``baselines: true`` queues the always-on methods alone (here tune_D, with the head) and each optional
    method alone (middle values) before sampling."""
    from hybridsearch.commands._leaderboard import render
    from hybridsearch.search.results import summary

    scripted(lambda call, epoch: [0.3, 0.5, 0.4, 0.9, 0.1][call])  # tune_D, lora_X, affix, then sampled trials
    study = run(make_space(trials=4, baselines=True), tmp_path / "j.journal", "base")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("baseline") for t in trials] == ["tune_D", "lora_X", "affix", None]
    assert [list(t.user_attrs["peft"]["methods"]) for t in trials[:3]] == [["tune_D"], ["lora_X", "tune_D"],
                                                                           ["affix", "tune_D"]]
    assert trials[1].params["lora_X.rank"] == 2  # the space's default (else the middle of the range)
    assert list(trials[3].user_attrs["peft"]["methods"]) == ["affix", "tune_D"]  # sampled: affix alone again
    b = summary(study)["baselines"]
    # the best trial of each single method over the whole study, not only its baseline at default values
    assert {m: (e["trial"], e["score"]) for m, e in b["per_method"].items()} == {"tune_D": (0, 0.3),
                                                                                 "lora_X": (1, 0.5),
                                                                                 "affix": (3, 0.9)}
    assert b["best_single_method"] == "affix" and b["single_score"] == pytest.approx(0.9)
    assert b["baseline_methods"] == ["affix", "tune_D"]  # tune_D is always on in this space
    render(study)
    assert "winner #3 0.9000 vs best baseline affix + tune_D (#3) 0.9000: +0.0000\n" in capsys.readouterr().out
    assert b["winner_trial"] == 3 and b["gain"] == pytest.approx(0.0)
    assert b["head_only_score"] is None  # tune_D is on in every trial: no trial trained the head alone
    # resuming queues nothing again
    study = run(make_space(trials=4, baselines=True), tmp_path / "j.journal", "base", trials=5)
    assert finished(study) == 5
    assert sum(t.user_attrs.get("baseline") is not None for t in study.trials) == 3


def test_the_always_on_methods_alone_can_be_the_best_single_method(tmp_path, make_space, scripted, capsys):
    """Without adding anything the search would train its always-on methods: when they alone score best, they
    are the single method the winner is compared with (here the winner itself)."""
    from hybridsearch.commands._leaderboard import render
    from hybridsearch.search.results import summary

    scripted(lambda call, epoch: [0.8, 0.5, 0.4, 0.6][call])
    study = run(make_space(trials=4, baselines=True), tmp_path / "j.journal", "base")
    b = summary(study)["baselines"]
    assert (b["best_single_method"], b["single_trial"], b["baseline_methods"]) == ("tune_D", 0, ["tune_D"])
    assert b["winner_trial"] == 0 and b["gain"] == pytest.approx(0.0)
    render(study)
    assert "winner #0 0.8000 vs best single method tune_D (#0) 0.8000: +0.0000" in capsys.readouterr().out


def test_baselines_are_never_pruned(tmp_path, make_space, scripted):
    """The pruner sees a baseline's scores but never stops it: it is the reference the winner must beat."""
    scripted(lambda call, epoch: 0.9 if call == 0 else 0.1)  # the first baseline strong, every later trial weak
    space = make_space(trials=5, baselines=True, fidelity={"epochs": 3, "max_train_examples": 32},
                       pruner={"kind": "successive_halving", "min_resource": 1, "reduction_factor": 3})
    study = run(space, tmp_path / "j.journal", "noprune")
    trials = sorted(study.trials, key=lambda t: t.number)
    kinds = [(t.user_attrs.get("baseline", "sampled"), t.state.name) for t in trials]
    assert kinds == [("tune_D", "COMPLETE"), ("lora_X", "COMPLETE"), ("affix", "COMPLETE"),
                     ("sampled", "PRUNED"), ("sampled", "PRUNED")]
    assert all(len(t.intermediate_values) == 3 for t in study.trials if "baseline" in t.user_attrs)


def test_the_budget_counts_the_model_that_trains(tmp_path, mini_root, scripted):
    """The data says 20 classes (its manifest), the task table 10: the exact count before training and the
    trained model have the same 20-class head, so the budget limits what really trains."""
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mini_root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tasks"]["mnist5k"]["num_classes"] = 20
    (root / "manifest.json").write_text(json.dumps(manifest))
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(root, trials=1)))
    scripted()
    trial = run(space, tmp_path / "j.journal", "classes").trials[0]
    assert trial.user_attrs["counts"]["head"] == 20 * 64 + 20  # vim-proxy's d_model 64
    assert trial.user_attrs["counts"]["trainable"] == trial.user_attrs["counts.mnist5k"]
