"""The Ray engine on a real local Ray (2 CPUs), against the Optuna engine on the same tiny trials.

* a SIGKILLed CLI driver is resumed with ``resume --engine ray``: every trial number, parameter set and value
  checked, and every Ray process of both drivers must be gone;
* 2 concurrent Ray trials reproduce the sequential Optuna engine trial by trial (same parameters and values);
* engine contract, sequentially: same first configurations, pruning (PRUNED with intermediate values, never
  COMPLETE), budget, failures recorded, best is best;
* a Ray worker killed mid-trial: the same trial is retried and gives the same result;
* no Ray process outlives the module's Ray instance.

Ray starts once for the module (a start costs seconds here); the CLI test runs first, before it."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

ray = pytest.importorskip("ray")

from hybridsearch.cli import main  # noqa: E402
from hybridsearch.errors import ConfigError  # noqa: E402
from hybridsearch.search._ray_reaper import alive, is_ray  # noqa: E402  (psutil comes with Ray)
from hybridsearch.search.optuna_engine import run_study  # noqa: E402
from hybridsearch.search.ray_engine import RayOptions, _capacity, _portable, run_ray_study  # noqa: E402
from hybridsearch.search.storage import open_storage  # noqa: E402
from hybridsearch.search.study import RunOptions, finished  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

_METHODS = """
recipe:
  lr: {log: [1.0e-2, %s]}
  batch_size: 16
  warmup_epochs: 0
methods:
  lora_X:
    params: {scale: 0.1}
    layer_groups:
      - {layers: "0-1", rank: [0, 4, 8]}
      - {layers: "2-3", rank: {int: [4, 8], step: 4}}
  affix:
    params: {tokens: {int: [1, 2]}, projection: false}
  tune_D:
    optional: false
"""
_HEAD = """
name: %s
model: {name: vim-proxy, checkpoint: %s}
data: {kind: mini_vtab, tasks: [mnist5k], root: ROOT}
fidelity: {epochs: 2, max_train_examples: 32, max_val_examples: 32}
sampler: {kind: random, seed: 0}
"""
SPACES = {
    # two objectives, no pruner: a trial's result depends only on its parameters and seed
    "tiny": _HEAD % ("tiny", "null") + "objectives: [accuracy, params]\ntrials: 6\n" + _METHODS % "1.0e-1",
    # one objective, median pruner, a budget some draws exceed (seed 3: complete, over budget, pruned)
    "contract": _HEAD % ("contract", "null") + "objectives: [accuracy]\ntrials: 6\nbudget: {max_trainable: 9000}\n"
    "pruner: {kind: median, n_startup_trials: 1, n_warmup_steps: 0}\n" + _METHODS % "1.0e+4",
    # every trial fails (missing checkpoint)
    "broken": _HEAD % ("broken", "/nonexistent/vim.pth") + "objectives: [accuracy]\ntrials: 2\n" + _METHODS % "1.0e-1",
}

SEEDS = {"tiny": 0, "contract": 3}  # contract: a seed whose draws complete, go over budget and get pruned


# ------------------------------------------------------------------------------------------------ helpers
class RayWatch:
    """Records the Ray processes below ``root`` (a driver) while it runs; ``survivors`` says which outlive it."""

    def __init__(self, root: int) -> None:
        import psutil

        self.root, self.known = psutil.Process(root), {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                for p in self.root.children(recursive=True):
                    if p.pid not in self.known and is_ray(p):
                        self.known[p.pid] = p.create_time()
            except psutil.Error:
                return  # the root is gone

    def survivors(self, wait: float = 20.0) -> list:
        self._stop.set()
        self._thread.join()
        deadline = time.time() + wait
        while alive(self.known) and time.time() < deadline:
            time.sleep(0.2)
        left = alive(self.known)
        for p in left:  # clean up before failing the test
            p.kill()
        return [(p.pid, p.name()) for p in left]


def _load(storage: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None


def _same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    return (a.params, a.state, a.values, a.intermediate_values) == (b.params, b.state, b.values,
                                                                   b.intermediate_values)


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    """The one-task mini-VTAB slice of test_engine.py (same folder: built once per session, not in ~/.cache)."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


@pytest.fixture(scope="module")
def spaces(tmp_path_factory, mini_root) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("spaces")
    for name, text in SPACES.items():
        (folder / f"{name}.yaml").write_text(text.replace("ROOT", str(mini_root)))
    return {name: str(folder / f"{name}.yaml") for name in SPACES}


@pytest.fixture(scope="module")
def reference(spaces, tmp_path_factory) -> dict[str, list]:
    """The Optuna engine, one worker, one torch thread (as in a 1-CPU Ray trial), each space at its SEEDS."""
    storage = str(tmp_path_factory.mktemp("ref") / "ref.journal")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return {name: run_study(RunOptions(study=name, storage=storage, space_ref=spaces[name], seed=seed)).trials
                for name, seed in SEEDS.items()}
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


class _LocalRay:
    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="hsray-test-", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=self.temp, log_to_driver=False,
                 logging_level=logging.WARNING)
        self.watch = RayWatch(os.getpid())

    def close(self) -> list:
        if not ray.is_initialized():
            return []
        ray.shutdown()
        left = self.watch.survivors()
        shutil.rmtree(self.temp, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def local_ray():
    r = _LocalRay()
    yield r
    assert r.close() == []


# -------------------------------------------------------------------------------------------- no Ray needed
def test_options_are_checked(tmp_path, capsys, spaces):
    for bad in (RayOptions(cpus_per_trial=0), RayOptions(gpus_per_trial=1.5), RayOptions(max_concurrent=0),
                RayOptions(max_retries=-1)):
        with pytest.raises(ConfigError):
            bad.validate()
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--space", spaces["tiny"], "--storage", storage, "--address", "auto"]) == 2
    assert "--address only apply with --engine ray" in capsys.readouterr().err
    assert main(["run", "--space", spaces["tiny"], "--storage", storage, "--engine", "ray", "--workers", "2"]) == 2
    assert "--max-concurrent" in capsys.readouterr().err
    assert main(["run", "--space", spaces["tiny"], "--storage", storage, "--engine", "ray",
                 "--address", "127.0.0.1:1"]) == 2  # fails at once (ray.init would retry for minutes)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in capsys.readouterr().err
    assert _load(storage, "tiny") is None  # no study was created


def test_capacity_from_cluster_resources():
    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0})
    assert _capacity(fake, RayOptions()) == 16
    assert _capacity(fake, RayOptions(cpus_per_trial=2, gpus_per_trial=0.25)) == 8  # 4 trials per GPU
    assert _capacity(fake, RayOptions(gpus_per_trial=1)) == 2
    assert _capacity(fake, RayOptions(max_concurrent=3)) == 3
    with pytest.raises(ConfigError, match="GPUs"):
        _capacity(SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0}), RayOptions(gpus_per_trial=0.5))


def test_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given, sent in ((None, f"{tmp_path}/runs/hybridsearch.journal"), ("a/s.journal", f"{tmp_path}/a/s.journal"),
                        ("sqlite:///s.db", f"sqlite:///{tmp_path}/s.db"), ("postgresql://u@h/db", "postgresql://u@h/db")):
        assert _portable(RunOptions(study="s", storage=given, space_ref="tiny_debug")).storage == sent


class _FakeRay:
    """Just enough of Ray for the driver: results are handed out in submission order."""

    exceptions = ray.exceptions

    def __init__(self, results: list) -> None:
        self.results, self.calls = results, []

    def remote(self, **_):
        submit = SimpleNamespace(remote=lambda *args: self.calls.append(args) or len(self.calls))
        return lambda fn: SimpleNamespace(options=lambda **_: submit)

    def get(self, ref: int):
        r = self.results[ref - 1]
        if isinstance(r, Exception):
            raise r
        return r


@pytest.mark.parametrize("results, state, attempts", [
    ([ray.exceptions.WorkerCrashedError(), {"state": "COMPLETE", "values": [0.5, 10.0]}], TrialState.COMPLETE, 2),
    ([ray.exceptions.WorkerCrashedError()] * 2, TrialState.FAIL, 2),  # --max-retries 1: gives up
    ([{"state": "FAIL", "reason": "out of memory: CUDA", "retry": True}] * 2, TrialState.FAIL, 2),
    ([{"state": "FAIL", "reason": "non-finite loss", "retry": False}], TrialState.FAIL, 1),  # the trial's own
    ([{"state": "PRUNED"}], TrialState.PRUNED, 1),
], ids=["crash-then-ok", "crashes-exhaust-retries", "oom-retried", "own-failure-not-retried", "pruned"])
def test_driver_retries(monkeypatch, spaces, results, state, attempts):
    from hybridsearch.search import ray_engine
    from hybridsearch.search.space import load_space

    fake = _FakeRay(results)
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake)
    space = load_space(spaces["tiny"])
    study = optuna.create_study(directions=space.directions, sampler=space.make_sampler(0))
    study.set_user_attr("target_trials", 1)
    driver = ray_engine._Driver(study, space, RunOptions(study="s", storage=None, space_ref=spaces["tiny"]),
                                RayOptions(max_retries=1), None, None)
    driver.beat = SimpleNamespace(ids=set())
    driver._submit(driver._ask())
    while driver.pending:
        ref = next(iter(driver.pending))
        driver._collect(ref, driver.pending.pop(ref))
    t = study.trials[0]
    assert t.state == state and len(fake.calls) == attempts and {c[2] for c in fake.calls} == {*range(1, attempts + 1)}
    assert len(t.user_attrs.get("retries", [])) == attempts - 1
    if state == TrialState.FAIL:
        assert ("after 2 attempts" in t.user_attrs["failure"]) == (attempts == 2)


# ------------------------------------------------------------------------------- the CLI, SIGKILL, resume
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybridsearch.cli", *args]


def test_cli_driver_killed_then_resumed(tmp_path, spaces, reference):
    storage, env = str(tmp_path / "s.journal"), {**os.environ, "RAY_OVERRIDE_RESOURCES": '{"CPU": 2}'}
    common = ["--storage", storage, "--engine", "ray", "--max-concurrent", "2", "--out", str(tmp_path / "out")]
    with open(tmp_path / "run.log", "w") as log:
        driver = subprocess.Popen(_cli("run", "--space", spaces["tiny"], "--seed", "0", *common),
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    watch = RayWatch(driver.pid)
    deadline = time.time() + 150
    while time.time() < deadline:  # kill once 2 trials finished and 2 train in Ray workers (the driver waits)
        study = _load(storage, "tiny")
        trials = study.get_trials(deepcopy=False) if study else []
        done = [t for t in trials if t.state.is_finished()]
        busy = [t for t in trials if t.state == TrialState.RUNNING and "ray" in t.user_attrs
                and t.user_attrs["worker"]["pid"] != driver.pid]
        if len(done) >= 2 and len(busy) == 2:
            break
        assert driver.poll() is None, (tmp_path / "run.log").read_text()
        time.sleep(0.1)
    else:
        pytest.fail("the search did not get going: " + (tmp_path / "run.log").read_text()[-2000:])
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(10) == -signal.SIGKILL
    assert watch.survivors() == []  # the reaper ended the local Ray of a SIGKILLed driver

    before = {t.number: t for t in _load(storage, "tiny").trials}
    lost = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert lost and all(n < 6 for n in before)

    with open(tmp_path / "resume.log", "w") as log:
        resumed = subprocess.Popen(_cli("resume", "tiny", *common), cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        watch = RayWatch(resumed.pid)
        assert resumed.wait(180) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert watch.known and watch.survivors() == []  # it did start Ray, and left nothing behind

    study = _load(storage, "tiny")
    trials = study.trials
    assert finished(study) == 6 and not [t for t in trials if not t.state.is_finished()]
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == sorted(lost)
    for n, old in before.items():
        ref = reference["tiny"][n]
        if n in lost:  # marked failed, re-run once with the same parameters and seed: the same result
            assert trials[n].state == TrialState.FAIL and "re-queued" in trials[n].user_attrs["failure"]
            retry = retries[n]
            assert retry.state == TrialState.COMPLETE and retry.number >= len(before)
            assert (retry.params, retry.values) == (ref.params, ref.values)
            assert retry.user_attrs["seed"] == ref.user_attrs["seed"] == n
        else:  # finished before the kill: untouched, and as in the sequential Optuna engine
            assert _same(trials[n], old) and _same(old, ref)
    fresh = [t for t in trials if t.number not in before and "retry_of" not in t.user_attrs]
    assert all(t.state == TrialState.COMPLETE for t in fresh)
    assert len(before) + len(fresh) == 6


# ------------------------------------------------------------------------------------- on the module's Ray
def test_two_concurrent_trials(local_ray, tmp_path, spaces, reference):
    opts = RunOptions(study="tiny", storage=str(tmp_path / "s.journal"), space_ref=spaces["tiny"], trials=4, seed=0)
    study = run_ray_study(opts, RayOptions(max_concurrent=2))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # overlapped
    for t, ref in zip(trials, reference["tiny"]):
        assert (t.params, t.values) == (ref.params, ref.values)  # concurrency changes nothing
        attrs = t.user_attrs
        assert {"seed", "peft", "recipe", "fidelity", "counts", "trainable", "task_accuracy", "timings",
                "worker", "ray"} <= set(attrs)
        assert attrs["ray"]["attempt"] == 1 and attrs["worker"]["pid"] != os.getpid()
        assert attrs == {**ref.user_attrs, "worker": attrs["worker"], "timings": attrs["timings"],
                         "ray": attrs["ray"], "heartbeat": attrs["heartbeat"]}


def test_sequential_contract_same_as_optuna_engine(local_ray, tmp_path, spaces, reference):
    opts = RunOptions(study="contract", storage=str(tmp_path / "s.journal"), space_ref=spaces["contract"],
                      seed=SEEDS["contract"])
    study = run_ray_study(opts, RayOptions(max_concurrent=1))
    trials, ref = study.trials, reference["contract"]
    assert len(trials) == len(ref) == 6
    for t, r in zip(trials, ref):  # same configurations, states, values and intermediate values
        assert _same(t, r), (t.number, t.state, r.state)
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        over = "over budget" in t.user_attrs.get("failure", "")
        assert over == (t.user_attrs["trainable"] > 9000)  # the budget, exactly
        if t.state == TrialState.PRUNED and not over:  # stopped early: PRUNED with its curve, never COMPLETE
            assert t.intermediate_values and t.value == t.intermediate_values[max(t.intermediate_values)]
            assert "pruned_at" in t.user_attrs
    assert any("over budget" in t.user_attrs.get("failure", "") for t in trials)
    assert any("pruned_at" in t.user_attrs for t in trials)  # the median pruner stopped one (seed 3)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert study.best_trial.value == max(t.value for t in complete)  # best is best
    assert study.best_trial.number == max((r for r in ref if r.state == TrialState.COMPLETE),
                                          key=lambda r: r.value).number


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_failed_trials_are_recorded(engine, request, tmp_path, spaces):
    opts = RunOptions(study="broken", storage=str(tmp_path / "s.journal"), space_ref=spaces["broken"], seed=0)
    if engine == "ray":
        request.getfixturevalue("local_ray")
        study = run_ray_study(opts, RayOptions(max_concurrent=2))
    else:
        study = run_study(opts)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    for t in study.trials:
        assert "checkpoint file not found" in t.user_attrs["failure"]
        assert engine == "optuna" or t.user_attrs["ray"]["attempt"] == 1  # a trial's own failure: no retry


def test_killed_worker_is_retried(local_ray, tmp_path, spaces, reference):
    storage = str(tmp_path / "s.journal")
    opts = RunOptions(study="tiny", storage=storage, space_ref=spaces["tiny"], trials=2, seed=0)
    box: dict = {}

    def drive() -> None:
        try:
            box["study"] = run_ray_study(opts, RayOptions(max_concurrent=1, max_retries=1))
        except BaseException as e:  # re-raised below
            box["error"] = e

    thread = threading.Thread(target=drive)
    thread.start()
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline and thread.is_alive():
        study = _load(storage, "tiny")
        t0 = study.get_trials(deepcopy=False)[0] if study and study.get_trials(deepcopy=False) else None
        pid = t0.user_attrs.get("worker", {}).get("pid") if t0 else None
        if pid and pid != os.getpid() and "counts.mnist5k" in t0.user_attrs:  # trial 0 trains: pre-empt it
            time.sleep(0.05)  # mid-epoch rather than mid-write
            victim = pid
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    thread.join(180)
    assert victim and "error" not in box, box.get("error")
    trials = box["study"].trials
    assert len(trials) == 2 and [t.state for t in trials] == [TrialState.COMPLETE] * 2
    t0 = trials[0]
    assert t0.user_attrs["ray"]["attempt"] == 2 and t0.user_attrs["worker"]["pid"] != victim
    assert len(t0.user_attrs["retries"]) == 1 and "Error" in t0.user_attrs["retries"][0]["reason"]
    ref = reference["tiny"][0]
    assert (t0.params, t0.values, t0.user_attrs["seed"]) == (ref.params, ref.values, 0)


def test_no_ray_process_survives(local_ray):
    assert local_ray.watch.known  # Ray did run below this process
    assert local_ray.close() == []
    assert not ray.is_initialized()
