"""A search that earns its keep: the start-up design and warm start, ``final`` re-trainings ranked by the mean over
seeds, the winner against the best trial of each single method and the single-method arm, and the space keys
behind them. Training is scripted (model building, PEFT, counting and storage stay real), as in test_engine.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hybridsearch.cli import main
from hybridsearch.errors import ConfigError
from hybridsearch.search.optuna_engine import run_study
from hybridsearch.search.results import best_trials, leaderboard, ranked_trials, seed_scores, summary
from hybridsearch.search.run import run_options
from hybridsearch.search.space import SpaceError, load_space, space_from_dict
from hybridsearch.search.storage import open_storage
from hybridsearch.search.study import RunOptions, finished, study_target
from hybridsearch.tasks import vision
from hybridsearch.training.classifier import TrainResult

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture(scope="module", autouse=True)
def search_env(mini_root: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(mini_root.parent))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def space_dict(root: Path, **over) -> dict:
    d = {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
        "objectives": ["accuracy"],
        "trials": 4,
        "fidelity": {"epochs": 1, "max_train_examples": 32, "max_val_examples": 32},
        "sampler": {"kind": "random", "seed": 0},
        "recipe": {"lr": {"log": [1.0e-3, 1.0e-2]}, "batch_size": 32, "warmup_epochs": 0},
        "methods": {
            "lora_X": {"params": {"rank": {"int": [2, 4], "step": 2, "default": 2}, "scale": 0.1}},
            "affix": {"params": {"tokens": {"int": [1, 2], "default": 1}, "projection": False}},
        },
    }
    d.update(over)
    return d


@pytest.fixture
def make_space(tmp_path: Path, mini_root: Path) -> Callable[..., Path]:
    def make(name: str = "space", **over) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(space_dict(mini_root, **over), sort_keys=False))
        return path

    return make


class Scripted:
    """Stands in for ``train_classifier``: ``acc(call, seed)`` at every epoch; ``seeds`` lists each call's seed."""

    def __init__(self, acc: Callable[[int, int], float]) -> None:
        self.acc, self.seeds = acc, []

    def __call__(self, model, train, val, recipe, *, seed: int = 0, on_epoch=None, progress=None) -> TrainResult:
        call, acc = len(self.seeds), math.nan
        self.seeds.append(seed)
        for epoch in range(recipe.epochs):
            acc = self.acc(call, seed)
            if on_epoch is not None:
                on_epoch(epoch, acc)
        return TrainResult(val_acc=acc)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Scripted]:
    def install(acc: Callable[[int, int], float] = lambda call, seed: 0.5) -> Scripted:
        s = Scripted(acc)
        monkeypatch.setattr(vision, "train_classifier", s)
        return s

    return install


def opts(space: Path, storage: Path, study: str, **kw) -> RunOptions:
    return RunOptions(study=study, storage=str(storage), space_ref=str(space), **kw)


def load(storage: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(str(storage)))


def by_number(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.trials, key=lambda t: t.number)


# -- final: the top configurations again with other seeds ----------------------------------------------------------
def test_final_retrains_the_top_k_and_ranks_by_the_mean(tmp_path, make_space, scripted, capsys):
    """The lucky single seed (#0: 0.9, then 0.3 and 0.3) loses to the steady configuration (#1: 0.8, 0.7, 0.7)."""
    script = {0: 0.9, 1: 0.8, 2: 0.1, 3: 0.2}  # the search's four trials, by trial seed
    scripted(lambda call, seed: script.get(seed, 0.3 if call in (4, 5) else 0.7))
    space = make_space(final={"top_k": 2, "seeds": 3})
    study = run_options(opts(space, tmp_path / "j.journal", "fin"), preflight=False, log=lambda m: None)
    trials = by_number(study)
    assert [t.user_attrs.get("final_of") for t in trials] == [None] * 4 + [0, 0, 1, 1]
    assert len({t.user_attrs["seed"] for t in trials}) == 8  # every re-training has a seed of its own
    assert [t.params for t in trials[4:6]] == [trials[0].params] * 2
    assert finished(study) == study_target(study) == 8 and study.user_attrs["target_trials"] == 4
    assert seed_scores(study)[0] == pytest.approx([0.9, 0.3, 0.3])
    assert [t.number for t in ranked_trials(study)] == [1, 0, 3, 2]  # several seeds first, by their mean
    assert best_trials(study)[0].number == 1
    rows = leaderboard(study)
    assert rows[0]["number"] == 1 and rows[0]["mean"] == pytest.approx(0.7333, abs=1e-4)
    assert rows[0]["std"] == pytest.approx(0.0577, abs=1e-4)
    assert main(["show", "fin", "--storage", str(tmp_path / "j.journal")]) == 0
    out = capsys.readouterr().out
    assert "0.7333 ± 0.0577 (3)" in out and "final re-training of #0" in out
    assert main(["export", "fin", "--storage", str(tmp_path / "j.journal"), "--out", str(tmp_path / "w")]) == 0
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    assert meta["trial"] == 1 and meta["seed_scores"] == pytest.approx([0.8, 0.7, 0.7])
    # run again: nothing more to re-train
    run_options(opts(space, tmp_path / "j.journal", "fin"), preflight=False, log=lambda m: None)
    assert len(load(tmp_path / "j.journal", "fin").trials) == 8


def test_final_after_more_trials_retrains_only_what_is_missing(tmp_path, make_space, scripted):
    scripted(lambda call, seed: {0: 0.5, 1: 0.6, 3: 0.9}.get(seed, 0.1))  # #3: the next run's search trial
    space = make_space(trials=2, final={"top_k": 1, "seeds": 2})
    run_options(opts(space, tmp_path / "j.journal", "grow"), preflight=False, log=lambda m: None)
    study = run_options(opts(space, tmp_path / "j.journal", "grow", trials=3), preflight=False, log=lambda m: None)
    finals = [(t.number, t.user_attrs["final_of"]) for t in by_number(study) if "final_of" in t.user_attrs]
    assert finals == [(2, 1), (4, 3)]  # #1 once; then the new best #3 (search trials 0, 1, 3)
    assert finished(study) == 5 and study.user_attrs["target_trials"] == 3


def test_final_trials_are_never_pruned(tmp_path, make_space, scripted):
    scripted(lambda call, seed: 0.9 if seed == 0 else 0.1)
    space = make_space(trials=3, final={"top_k": 1, "seeds": 3}, fidelity={"epochs": 3, "max_train_examples": 32},
                       pruner={"kind": "successive_halving", "min_resource": 1, "reduction_factor": 3})
    study = run_options(opts(space, tmp_path / "j.journal", "np"), preflight=False, log=lambda m: None)
    assert [t.state for t in by_number(study) if "final_of" in t.user_attrs] == [TrialState.COMPLETE] * 2


# -- baselines: last -----------------------------------------------------------------------------------------------
def test_baselines_last_run_after_the_search_and_count_toward_the_target(tmp_path, make_space, scripted):
    scripted(lambda call, seed: 0.1 * (seed + 1))
    space = make_space(trials=5, baselines="last", final={"top_k": 1, "seeds": 2})
    study = run_options(opts(space, tmp_path / "j.journal", "last"), preflight=False, log=lambda m: None)
    trials = by_number(study)
    assert [t.user_attrs.get("baseline") for t in trials[:5]] == [None, None, "head_only", "lora_X", "affix"]
    assert trials[5].user_attrs["final_of"] == 4 and finished(study) == study_target(study) == 6
    assert load_space(space).to_dict()["baselines"] == "last"
    assert summary(study)["baselines"]["head_only_score"] == pytest.approx(0.3)


def test_baselines_last_after_an_interrupted_run(tmp_path, make_space, scripted):
    """The engine alone (a run interrupted before its phases) stops after the search's own trials; the next run
    queues the baselines and runs them."""
    scripted()
    space = make_space(trials=5, baselines="last")
    study = run_study(opts(space, tmp_path / "j.journal", "cut"))
    assert [t.user_attrs.get("baseline") for t in by_number(study)] == [None, None] and study_target(study) == 2
    study = run_options(opts(space, tmp_path / "j.journal", "cut"), preflight=False, log=lambda m: None)
    assert [t.user_attrs.get("baseline") for t in by_number(study)] == [None, None, "head_only", "lora_X", "affix"]


# -- the start-up: design points, warm start ---------------------------------------------------------------------
def test_startup_design_is_queued_after_the_baselines(tmp_path, make_space, scripted):
    scripted()
    space = make_space(trials=6, baselines=True, startup={"design": 3})
    study = run_study(opts(space, tmp_path / "j.journal", "d"))
    trials = by_number(study)
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["head_only", "lora_X", "affix"]
    assert [bool(t.user_attrs.get("design")) for t in trials] == [False] * 3 + [True] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    other = run_study(opts(space, tmp_path / "j.journal", "d1", seed=1))
    assert [t.params for t in by_number(other)[3:]] != [t.params for t in trials[3:]]  # seeded by --seed


def test_warm_start_queues_the_best_configurations_of_another_study(tmp_path, make_space, scripted):
    scripted(lambda call, seed: [0.2, 0.9, 0.4, 0.6][call] if call < 4 else 0.5)
    storage = tmp_path / "j.journal"
    first = run_study(opts(make_space("a"), storage, "a"))
    best = [t.params for t in sorted(first.trials, key=lambda t: -t.values[0])][:2]
    study = run_study(opts(make_space("b", trials=3, startup={"design": 2}), storage, "b", warm_start="a"))
    trials = by_number(study)
    assert [t.user_attrs.get("warm_start") for t in trials[:2]] == [1, 3]  # a's best first
    assert [t.params for t in trials[:2]] == best
    assert study.user_attrs["warm_start"] == "a"


def test_warm_start_from_a_missing_study_writes_nothing(tmp_path, make_space, capsys):
    storage = tmp_path / "j.journal"
    code = main(["run", "--space", str(make_space()), "--storage", str(storage), "--warm-start", "nope",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--warm-start 'nope': no such study in this storage" in capsys.readouterr().err
    assert not storage.exists() or "space" not in optuna.get_all_study_names(open_storage(str(storage)))


# -- fair comparisons --------------------------------------------------------------------------------------------
def test_show_compares_with_the_best_trial_of_each_single_method(tmp_path, make_space, scripted, capsys):
    """A searched single-method trial counts, not only the baseline at its default values."""
    scripted(lambda call, seed: [0.3, 0.5, 0.4][call] if call < 3 else 0.45 + 0.1 * (call == 3))
    space = make_space(trials=6, baselines=True, sampler={"kind": "random", "seed": 3})
    study = run_study(opts(space, tmp_path / "j.journal", "cmp"))
    b = summary(study)["baselines"]
    singles = {m: [t for t in study.trials if t.values and
                   list(t.user_attrs["peft"]["methods"]) == [m]] for m in ("lora_X", "affix")}
    for m, trials in singles.items():
        best = max(trials, key=lambda t: t.values[0])
        assert b["per_method"][m]["trial"] == best.number and b["per_method"][m]["score"] == best.values[0]
    assert b["best_single_method"] == max(b["per_method"], key=lambda m: b["per_method"][m]["score"])
    assert main(["show", "cmp", "--storage", str(tmp_path / "j.journal")]) == 0
    assert "best trial of each single method: " in capsys.readouterr().out


def test_single_arm_tunes_each_method_alone(tmp_path, make_space, scripted, capsys):
    scripted(lambda call, seed: 0.4 + 0.01 * call)
    space = make_space(trials=2, single_arm={"trials": 2}, methods={
        "lora_X": {"params": {"rank": {"int": [2, 4], "step": 2}, "scale": 0.1}},
        "affix": {"params": {"tokens": {"int": [1, 2]}, "projection": False}},
        "tune_D": {"optional": False}})
    storage = tmp_path / "j.journal"
    study = run_options(opts(space, storage, "arm"), preflight=False, log=lambda m: None)
    names = set(optuna.get_all_study_names(open_storage(str(storage))))
    assert names == {"arm", "arm.single.lora_X", "arm.single.affix"}
    for m in ("lora_X", "affix"):
        arm = load(storage, f"arm.single.{m}")
        assert len(arm.trials) == 2 and arm.user_attrs["single"] == m
        assert all(list(t.user_attrs["peft"]["methods"]) == [m, "tune_D"] for t in arm.trials)
    assert main(["show", "arm", "--storage", str(storage), "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["summary"]["baselines"]
    assert b["single_source"] == "arm.single.affix" and b["single_from_arm"]  # the last trials scored highest
    assert b["tuned_arm"] == ["affix", "lora_X"] and finished(study) == 2
    assert main(["resume", "arm.single.affix", "--storage", str(storage), "--trials", "3",
                 "--out", str(tmp_path / "o")]) == 0
    assert len(load(storage, "arm.single.affix").trials) == 3


# -- the space keys -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("over, message", [
    ({"final": {"top_k": 0}}, "final.top_k: must be an integer between 1"),
    ({"final": {"seeds": 1}}, "final.seeds: must be an integer between 2 and 100"),
    ({"final": {"top": 3}}, "final.top: unknown key; allowed: top_k, seeds"),
    ({"final": 3}, "final: expected a mapping with keys top_k, seeds"),
    ({"startup": {"design": -1}}, "startup.design: must be an integer between 0"),
    ({"startup": {"sobol": 2}}, "startup.sobol: unknown key; allowed: design"),
    ({"single_arm": {"trials": 0}}, "single_arm.trials: must be an integer between 1"),
    ({"baselines": "later"}, "baselines: 'later' (string) is not allowed; allowed: True, False, first, last"),
    ({"single_arm": {"trials": 2}, "stages": [{"select": True}, {"tune": True}]},
     "single_arm: not with stages"),
])
def test_new_space_keys_are_checked(mini_root, over, message):
    with pytest.raises(SpaceError) as e:
        space_from_dict(space_dict(mini_root, **over), source="s.yaml")
    assert any(f"s.yaml: {message}" in err for err in e.value.errors), e.value.errors


def test_new_keys_leave_the_hash_of_spaces_without_them(mini_root):
    plain = space_from_dict(space_dict(mini_root))
    same = space_from_dict(space_dict(mini_root, final=None, startup=None, single_arm=None))
    assert plain.space_hash() == same.space_hash() and "final" not in plain.to_dict()
    final = space_from_dict(space_dict(mini_root, final={"top_k": 2}))
    assert final.final.seeds == 3 and final.space_hash() != plain.space_hash()
    d = {k: v for k, v in final.to_dict().items() if k != "description"}
    assert space_from_dict(d).space_hash() == final.space_hash()  # round trip


def test_single_space_keeps_one_method_and_the_always_on_ones(mini_root):
    space = space_from_dict(space_dict(mini_root, baselines=True, startup={"design": 2}, final={"top_k": 3},
                                       methods={"lora_X": {}, "affix": {}, "tune_D": {"optional": False}}))
    arm = space.single_space("affix")
    assert list(arm.methods) == ["affix", "tune_D"] and not arm.methods["affix"].optional
    assert not arm.baselines and arm.startup is None and arm.final.top_k == 1
    with pytest.raises(ConfigError, match="'tune_D' is not an optional method; allowed: lora_X, affix"):
        space.single_space("tune_D")


def test_bundled_mini_vtab_validates(mini_root):
    space = load_space("mini_vtab")
    # the settings the recorded benchmark and the real-training comparison chose (benchmarks/RESULTS.md)
    assert not space.baselines and space.startup.design == 8 and space.pruner.kind == "successive_halving"


def test_a_final_retraining_lost_to_a_dead_worker_is_retried_as_one(tmp_path, make_space, scripted):
    """Its retry keeps ``final_of`` (so it never counts as a search trial) and the next run finishes it."""
    from hybridsearch.search.study import recover_stale

    scripted(lambda call, seed: 0.5 + 0.01 * seed)
    space = make_space(trials=2, final={"top_k": 1, "seeds": 2})
    storage = tmp_path / "j.journal"
    study = run_study(opts(space, storage, "lost"))  # the engine alone: the search, no final yet
    trial = study.ask(fixed_distributions={})  # a final re-training whose worker died mid-run
    study._storage.set_trial_user_attr(trial._trial_id, "final_of", 1)
    study._storage.set_trial_user_attr(trial._trial_id, "worker", {"host": __import__("os").uname().nodename,
                                                                     "pid": 2**22 + 7})
    assert recover_stale(study) == [2]
    retry = by_number(study)[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["final_of"] == 1
    assert retry.user_attrs["retry_of"] == 2 and study_target(study) == 3
    study = run_options(opts(space, storage, "lost"), preflight=False, log=lambda m: None)
    assert [t.state for t in by_number(study)][-1] == TrialState.COMPLETE
    assert seed_scores(study)[1] == pytest.approx([0.51, 0.52])  # the retry trains with the lost one's seed, 2
