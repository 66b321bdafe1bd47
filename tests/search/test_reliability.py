"""Reliability of the Optuna engine on a real storage (journal file and SQLite; PostgreSQL: test_postgres.py).

* kill and resume: a 2-worker study is SIGKILLed several times: each worker inside a storage write (a torn
  journal record, an uncommitted SQLite transaction), the whole process group at random points, and one worker
  while the driver runs on. After ``resume`` every finished trial kept its state and value, every interrupted
  trial was re-run once with the same parameters (``retry_of``), trial numbers are unique and exactly the
  target number of trials finished;
* concurrency: 4 worker processes on one storage finish exactly N trials, no lock error, no duplicate; two
  workers starting a trial at once cannot overshoot N (trial numbers order them), duplicate retries never count;
* Ctrl-C: the interrupted trial is re-run with the same parameters by the next resume;
* faults in a trial (out of memory, an error while reading data): the trial fails with its reason, its memory
  is released, the study goes on (NaN loss and other exceptions: test_engine.py).

The processes train for real except the optimiser loop, which a short sleep replaces (``driver.py`` below, also
imported by the spawned workers): model building, PEFT, exact counts, data loading and storage stay real.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState

from hybridsearch.search.optuna_engine import run_study
from hybridsearch.search.storage import open_storage
from hybridsearch.search.study import RunOptions, _pid_alive, finished
from hybridsearch.tasks import vision
from hybridsearch.training.classifier import TrainResult

optuna.logging.set_verbosity(optuna.logging.WARNING)

DRIVER = '''"""The hybridsearch CLI with the optimiser loop replaced by a short sleep; optionally SIGKILLs the first
worker process in the middle of its KILL_IN_WRITE-th trial-finishing storage write."""
import os, random, signal, sys, time

from hybridsearch.tasks import vision
from hybridsearch.training.classifier import TrainResult


def fake_train(model, train, val, recipe, *, seed=0, on_epoch=None, progress=None):
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")) * (0.5 + random.random()))
    acc = (seed * 37 % 101) / 101
    if on_epoch is not None:
        on_epoch(0, acc)
    return TrainResult(val_acc=acc)


vision.train_classifier = fake_train
KILL_AT = int(os.environ.get("KILL_IN_WRITE", "0"))
_finishes = 0


def _due() -> bool:
    global _finishes
    import multiprocessing as mp
    if not KILL_AT or not mp.current_process().name.endswith("-1"):  # the first worker only
        return False
    _finishes += 1
    return _finishes == KILL_AT


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if KILL_AT:
    # journal: write half of the record that finishes a trial, then die (a torn record)
    from hybridsearch.search import storage as st
    real_append = st.JournalBackend.append_logs

    def append_logs(self, logs):
        if any(log.get("op_code") == 6 and log.get("state") in (1, 2, 3) for log in logs) and _due():
            import json
            data = ("\\n".join(json.dumps(x, separators=(",", ":")) for x in logs) + "\\n").encode()
            with st.get_lock_file(self._lock):
                with open(self._file_path, "ab") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                _die()
        return real_append(self, logs)

    st.JournalBackend.append_logs = append_logs

    # SQLite: die with the UPDATE that finishes a trial executed but not committed
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        s = statement.lstrip().upper()
        if s.startswith("UPDATE TRIALS") and "STATE" in s and "COMPLETE" in str(parameters) and _due():
            _die()

if __name__ == "__main__":
    from hybridsearch.cli import main
    sys.exit(main(sys.argv[1:]))
'''


# -- environment -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-task mini-VTAB slice of test_engine.py (same folder: built once per session)."""
    from hybridsearch.data.mini_vtab import ensure_mini_vtab

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDSEARCH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hybridsearch-data"))
        return ensure_mini_vtab(tasks=["mnist5k"], n_test=200)


def space_dict(root: Path, trials: int) -> dict:
    return {
        "model": {"name": "vim-proxy"},
        "data": {"kind": "mini_vtab", "tasks": ["mnist5k"], "root": str(root)},
        "objectives": ["accuracy"], "trials": trials,
        "fidelity": {"epochs": 1, "max_train_examples": 32, "max_val_examples": 32},
        "sampler": {"kind": "random", "seed": 0},
        "recipe": {"lr": 1.0e-3, "batch_size": 32, "warmup_epochs": 0},
        "methods": {"lora_X": {"params": {"rank": {"int": [2, 8], "step": 2}, "scale": 0.1}},
                    "affix": {"params": {"tokens": {"int": [1, 2]}, "projection": False}},
                    "tune_D": {"optional": False}},
    }


class Study:
    """One study on one storage, driven through ``driver.py`` in child processes."""

    def __init__(self, tmp: Path, root: Path, storage: str, trials: int, name: str = "rel",
                 space: dict | None = None) -> None:
        self.tmp, self.storage, self.name, self.target = tmp, storage, name, trials
        self.space = tmp / "space.yaml"
        self.space.write_text(yaml.safe_dump(space or space_dict(root, trials), sort_keys=False))
        self.driver = tmp / "driver.py"
        self.driver.write_text(DRIVER)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HYBRIDSEARCH_DATA_DIR": str(root.parent)}
        self.logs: list[Path] = []
        self._storage = None

    def start(self, *args: str, resume: bool | None = None, **env: str) -> subprocess.Popen:
        first = not self.logs if resume is None else not resume
        argv = (["run", "--space", str(self.space), "--study", self.name] if first else ["resume", self.name])
        log = self.tmp / f"run{len(self.logs)}.log"
        self.logs.append(log)
        cmd = [sys.executable, str(self.driver), *argv, "--storage", self.storage, "--out", str(self.tmp / "out"),
               *args]
        with open(log, "w") as fh:  # own process group: the driver and its workers die together
            return subprocess.Popen(cmd, cwd=self.tmp, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**self.env, **env})

    def study(self) -> optuna.Study:
        if self._storage is None:  # one connection pool for all the polling (a server has a client limit)
            self._storage = open_storage(self.storage)
        return optuna.load_study(study_name=self.name, storage=self._storage)

    def trials(self) -> list[FrozenTrial]:
        try:
            st = self.study()
        except KeyError:
            return []
        return sorted(st.get_trials(deepcopy=False), key=lambda t: t.number)

    def tail(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs[-2:])

    def wait_for(self, proc: subprocess.Popen, cond, timeout: float = 120.0) -> list[FrozenTrial]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            trials = self.trials()
            if cond(trials):
                return trials
            assert proc.poll() is None, f"the run ended early (exit {proc.returncode})\n{self.tail()}"
            time.sleep(0.05)
        pytest.fail(f"condition not met within {timeout:.0f} s\n{self.tail()}")


def n_complete(trials: list[FrozenTrial]) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def dead_worker(t: FrozenTrial) -> bool:
    pid = (t.user_attrs.get("worker") or {}).get("pid")
    return pid is not None and not _pid_alive(pid)


def running_child(t: FrozenTrial, parent: int) -> bool:
    """A RUNNING trial whose worker is a live child of ``parent`` (the driver running now)."""
    pid = (t.user_attrs.get("worker") or {}).get("pid")
    if t.state != TrialState.RUNNING or pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == parent
    except (OSError, IndexError, ValueError):
        return False


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Ledger:
    """What every kill left behind: finished trials (state, values) and interrupted ones (number, params)."""

    def __init__(self) -> None:
        self.finished: dict[int, tuple[str, list | None]] = {}
        self.interrupted: dict[int, dict] = {}

    def record(self, trials: list[FrozenTrial]) -> None:
        for t in trials:
            if t.state.is_finished():
                self.finished.setdefault(t.number, (t.state.name, t.values))
            elif t.state == TrialState.RUNNING:
                self.interrupted[t.number] = drawn(t)


def drawn(t: FrozenTrial) -> dict:
    """The parameters a trial drew or was queued with."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def check_final(s: Study, ledger: Ledger, queued: bool = False) -> None:
    """``queued``: queued baselines beyond the target may stay queued (never run)."""
    trials = s.trials()
    why = s.tail()
    by_number = {t.number: t for t in trials}
    assert len(by_number) == len(trials), "duplicate trial numbers"
    left = (TrialState.RUNNING,) if queued else (TrialState.RUNNING, TrialState.WAITING)
    assert not [t.number for t in trials if t.state in left], why
    assert all("retry_of" not in t.user_attrs for t in trials if t.state == TrialState.WAITING), why
    assert finished(s.study()) == s.target, why  # exact, retries replacing what they re-run
    for n, (state, values) in ledger.finished.items():  # every finished trial survives with its value
        if n in ledger.interrupted:
            continue
        assert (by_number[n].state.name, by_number[n].values) == (state, values), n
    retries = [t for t in trials if t.user_attrs.get("retry_of") is not None and not t.user_attrs.get("surplus")]
    retry = {t.user_attrs["retry_of"]: t for t in retries}
    for n, params in ledger.interrupted.items():  # every interrupted trial: FAIL, re-run once, same params
        dead = by_number[n]
        assert dead.state == TrialState.FAIL and dead.user_attrs["failure"].startswith("worker died"), (n, why)
        assert sum(t.user_attrs["retry_of"] == n for t in retries) == 1, n  # a surplus duplicate never ran
        last = retry[n]
        while last.number in ledger.interrupted:  # the retry was killed too: follow the chain
            last = retry[last.number]
        assert last.number > n and last.state in (TrialState.COMPLETE, TrialState.PRUNED), (n, last)
        assert params.items() <= last.params.items(), (n, params, last.params)  # more if n died mid-draw
    live = [t for t in trials if t.number not in {r.user_attrs.get("retry_of") for r in trials}
            and not t.user_attrs.get("surplus")]
    assert sum(t.state.is_finished() for t in live) == s.target


STORAGES = {"journal": lambda tmp: str(tmp / "study.journal"), "sqlite": lambda tmp: f"sqlite:///{tmp}/study.db"}


# -- kill and resume ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STORAGES))
def test_kill_and_resume(tmp_path, mini_root, kind):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    s = Study(tmp_path, mini_root, STORAGES[kind](tmp_path), trials=10)
    ledger = Ledger()

    # 1. the first worker dies inside the storage write that finishes its second trial (a torn journal record,
    # an uncommitted SQLite transaction) while the other runs on; 2. then the whole process group (driver and
    # workers) dies at a random moment after one more trial completed
    proc = s.start("--workers", "2", KILL_IN_WRITE="2")
    try:
        torn = s.wait_for(proc, lambda ts: any(t.state == TrialState.RUNNING and dead_worker(t) for t in ts))
        ledger.interrupted.update({t.number: drawn(t) for t in torn
                                   if t.state == TrialState.RUNNING and dead_worker(t)})
        after = n_complete(s.trials())
        s.wait_for(proc, lambda ts: n_complete(ts) > after)
        time.sleep(rng.uniform(0.0, 0.8))
    finally:
        kill_group(proc)
    ledger.record(s.trials())

    # 3. resume; one worker is killed mid-trial and the driver finishes the study without it
    proc = s.start("--workers", "2")
    try:
        trials = s.wait_for(proc, lambda ts: any(running_child(t, proc.pid) for t in ts))
        victim = next(t for t in trials if running_child(t, proc.pid))
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        while _pid_alive(victim.user_attrs["worker"]["pid"]):  # (its parameters as it died, not as seen)
            time.sleep(0.01)
        ledger.interrupted[victim.number] = drawn(s.trials()[victim.number])
        assert proc.wait(timeout=180) == 0, s.tail()
    finally:
        kill_group(proc)
    for t in s.trials():  # trials finished during the last run
        if t.state.is_finished():
            ledger.finished.setdefault(t.number, (t.state.name, t.values))
    check_final(s, ledger)
    assert len(ledger.interrupted) >= 2, f"seed {seed}"
    if kind == "journal":  # every record whole: torn ones were cut off, none glued to the next
        for line in Path(s.storage).read_bytes().splitlines():
            json.loads(line)


# -- concurrency --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STORAGES))
def test_four_workers_one_storage(tmp_path, mini_root, kind):
    s = Study(tmp_path, mini_root, STORAGES[kind](tmp_path), trials=12)
    proc = s.start("--workers", "4", FAKE_SLEEP="0.05")
    try:
        assert proc.wait(timeout=300) == 0, s.tail()
    finally:
        kill_group(proc)
    log = s.logs[0].read_text()
    for bad in ("Traceback", "database is locked", "OperationalError", "IntegrityError", "nanobind: leaked"):
        assert bad not in log, log[-3000:]
    trials = s.trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # unique numbers, none lost
    done = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(done) == 12 and all(t.state == TrialState.COMPLETE for t in done)
    assert finished(s.study()) == 12  # exactly N, not one more
    # a trial two workers started at the same instant as the last one: ended at once, before any training
    assert all(t.state == TrialState.PRUNED and "seed" not in t.user_attrs for t in trials if t not in done)
    assert len({t.user_attrs["worker"]["pid"] for t in done}) >= 2  # shared by the workers


# -- faults inside a trial ----------------------------------------------------------------------------------------
@pytest.fixture
def fault_space(tmp_path: Path, mini_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRIDSEARCH_DATA_DIR", str(mini_root.parent))
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_root, trials=3), sort_keys=False))
    return path


def test_out_of_memory_fails_the_trial_and_frees_its_model(tmp_path, fault_space, monkeypatch):
    seen: list[weakref.ref] = []
    alive_at_next: list[bool] = []

    def train(model, data, val, recipe, *, seed=0, on_epoch=None, progress=None):
        if seen:
            alive_at_next.append(seen[-1]() is not None)  # the previous trial's model, at this trial's start
        seen.append(weakref.ref(model))
        if len(seen) == 2:
            model.peft_scratch = torch.empty(1 << 20)  # memory the failed trial holds
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return TrainResult(val_acc=0.5)

    monkeypatch.setattr(vision, "train_classifier", train)
    gc.disable()  # only the engine's own collection may free the failed trial's model
    try:
        study = run_study(RunOptions(study="oom", storage=str(tmp_path / "j.journal"), space_ref=str(fault_space)))
    finally:
        gc.enable()
    states = [t.state for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["failure"] == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert alive_at_next == [False, False]  # released before the next trial began


def test_data_error_inside_a_trial(tmp_path, fault_space, monkeypatch):
    from hybridsearch.errors import DataError

    calls = []

    def train(model, data, val, recipe, *, seed=0, on_epoch=None, progress=None):
        calls.append(seed)
        if len(calls) == 1:
            raise DataError("train800.txt:7: cannot read image images/7.png: image file is truncated")
        return TrainResult(val_acc=0.25)

    monkeypatch.setattr(vision, "train_classifier", train)
    study = run_study(RunOptions(study="data", storage=str(tmp_path / "j.journal"), space_ref=str(fault_space)))
    first, *rest = sorted(study.trials, key=lambda t: t.number)
    assert first.state == TrialState.FAIL
    assert first.user_attrs["failure"] == "train800.txt:7: cannot read image images/7.png: image file is truncated"
    assert [t.state for t in rest] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert finished(study) == 3 and not math.isnan(rest[0].values[0])


def test_ctrl_c_trial_is_rerun_on_resume(tmp_path, fault_space, monkeypatch):
    calls = []

    def train(model, data, val, recipe, *, seed=0, on_epoch=None, progress=None):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return TrainResult(val_acc=0.5)

    monkeypatch.setattr(vision, "train_classifier", train)
    opts = RunOptions(study="ctrlc", storage=str(tmp_path / "j.journal"), space_ref=str(fault_space))
    with pytest.raises(KeyboardInterrupt):
        run_study(opts)
    study = run_study(opts)  # what `hybridsearch resume` runs
    trials = sorted(study.trials, key=lambda t: t.number)
    stopped = trials[1]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["failure"].startswith("interrupted")
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == stopped.params and retry[0].state == TrialState.COMPLETE
    # ... and with the same seed: the re-run repeats the interrupted training
    assert retry[0].user_attrs["seed"] == stopped.user_attrs["seed"] == calls[1] == calls[2] != calls[0]
    assert finished(study) == 3 and len(trials) == 4


def test_trial_numbers_order_racing_workers_and_duplicate_retries():
    """Two workers that pass the ``claimed < target`` check at once: the later trial number has no ticket (it
    ends as ``surplus``); two recoverers that both re-queued a dead trial: only the first retry counts."""
    from hybridsearch.search.study import claimed, has_ticket

    study = optuna.create_study()
    study.tell(study.ask(), 0.5)  # 0: complete
    a, b = study.ask(), study.ask()  # 1 and 2 start together; the target is 2
    assert has_ticket(study, a.number, 2) and not has_ticket(study, b.number, 2)
    b.set_user_attr("surplus", True)
    study.tell(b, state=TrialState.PRUNED)
    assert claimed(study) == 2 and finished(study) == 1
    study.tell(a, state=TrialState.FAIL)  # 1 died: re-queued twice by racing recoverers
    for _ in range(2):
        study.enqueue_trial({}, user_attrs={"retry_of": a.number}, skip_if_exists=False)
    first, second = study.ask(), study.ask()
    assert has_ticket(study, first.number, 2) and not has_ticket(study, second.number, 2)
    study.tell(first, 0.7)
    assert finished(study) == 2  # the dead trial is replaced by its first retry, the duplicate is not counted


# -- a killed trial's retry runs before the queue ----------------------------------------------------------------
def baseline_space(root: Path, trials: int) -> dict:
    """Seven queued baselines (head only, then each optional method alone) for a target below that."""
    d = space_dict(root, trials)
    d["baselines"] = True
    d["methods"].update({"lora_Z": {"params": {"rank": 2}}, "prompt": {"params": {"tokens": 1}},
                         "tune_A": {}, "tune_conv1d": {}})
    return d


def test_a_retry_runs_before_the_queued_trials_and_keeps_its_place():
    """The killed trial 2's retry is queued behind baselines 3..9: it is still asked first, and it counts where
    trial 2 stood, so the target of 4 is reached only once trial 2's configuration has run."""
    from hybridsearch.search.space import space_from_dict
    from hybridsearch.search.study import has_ticket, next_trial, recover_stale

    space = space_from_dict(baseline_space(Path("/nonexistent"), 4))
    study = optuna.create_study(directions=space.directions)
    for name, params in space.baseline_params().items():
        study.enqueue_trial(params, user_attrs={"baseline": name})
    assert len(study.trials) == 7
    for _ in range(2):
        t = next_trial(study, space, 0)
        study.tell(t, 0.5)
    dead = next_trial(study, space, 0, {"worker": {"host": os.uname().nodename, "pid": 2**22 + 1}})  # no such pid
    assert dead.number == 2
    assert recover_stale(study) == [2]
    retry = next_trial(study, space, 0)
    assert retry.user_attrs["retry_of"] == 2 and retry.number == 7  # queued last, asked first
    fixed = [study.trials[n].system_attrs["fixed_params"] for n in (2, 7)]
    assert fixed[0] == fixed[1] and study.trials[7].user_attrs["baseline"] == study.trials[2].user_attrs["baseline"]
    assert has_ticket(study, retry.number, 4)  # it stands where trial 2 stood
    study.tell(retry, 0.6)
    third = next_trial(study, space, 0)
    assert third.number == 3 and has_ticket(study, 3, 4)
    study.tell(third, 0.4)
    assert finished(study) == 4
    assert not has_ticket(study, next_trial(study, space, 0).number, 4)  # the target is full


@pytest.mark.slow
def test_five_kills_with_more_queued_baselines_than_the_target(tmp_path, mini_root):
    """SIGKILL of the whole run five times at random moments during run / resume; every killed configuration
    is trained in the end and exactly the target finished."""
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    s = Study(tmp_path, mini_root, STORAGES["journal"](tmp_path), trials=4, space=baseline_space(mini_root, 4))
    ledger = Ledger()
    kills = 0
    while kills < 5:
        proc = s.start("--workers", "2", FAKE_SLEEP="0.3")
        pid = proc.pid
        try:
            s.wait_for(proc, lambda ts, pid=pid: any(running_child(t, pid) for t in ts) or n_complete(ts) >= 4)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            kill_group(proc)
        ledger.record(s.trials())
        kills += 1
    proc = s.start("--workers", "2", FAKE_SLEEP="0.05")
    try:
        assert proc.wait(timeout=180) == 0, s.tail()
    finally:
        kill_group(proc)
    for t in s.trials():
        if t.state.is_finished():
            ledger.finished.setdefault(t.number, (t.state.name, t.values))
    check_final(s, ledger, queued=True)
    trials = {t.number: t for t in s.trials()}
    for n in ledger.interrupted:  # the killed configuration, trained: its retry chain ends COMPLETE
        last = n
        while (r := next((t for t in trials.values() if t.user_attrs.get("retry_of") == last), None)):
            last = r.number
        assert trials[last].state == TrialState.COMPLETE, (seed, n, last)
    baselines_done = {t.user_attrs["baseline"] for t in trials.values()
                      if t.state == TrialState.COMPLETE and "baseline" in t.user_attrs}
    assert len(baselines_done) == 4, (seed, baselines_done)  # the first four baselines, none lost to a kill


# -- the driver's signals ------------------------------------------------------------------------------------------
def live_pids(pids: set[int], timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _pid_alive(p)}
        time.sleep(0.1)
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signalled_driver_leaves_no_worker_behind(tmp_path, mini_root, sig):
    """``kill -TERM`` / ``-HUP`` / ``-KILL`` of the ``run`` process alone (not its group): its workers stop at
    once (none goes on headless), and ``resume`` re-runs the trials they were training."""
    s = Study(tmp_path, mini_root, STORAGES["journal"](tmp_path), trials=8)
    proc = s.start("--workers", "2", FAKE_SLEEP="1.0")
    try:
        trials = s.wait_for(proc, lambda ts: sum(running_child(t, proc.pid) for t in ts) == 2)
        workers = {t.user_attrs["worker"]["pid"] for t in trials if running_child(t, proc.pid)}
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=30)
        assert code == (-9 if sig == signal.SIGKILL else 128 + sig), s.tail()
        assert live_pids(workers) == set(), f"orphaned workers after {sig.name}\n{s.tail()}"
    finally:
        kill_group(proc)
    after = s.trials()
    stopped = [t for t in after if (t.user_attrs.get("worker") or {}).get("pid") in workers
               and t.user_attrs.get("seed") is not None and t.state != TrialState.COMPLETE]
    if sig != signal.SIGKILL:  # unwound like Ctrl-C: marked interrupted by the workers themselves
        assert stopped and all(t.state == TrialState.FAIL and t.user_attrs["failure"].startswith("interrupted")
                               for t in stopped), s.tail()
    n_before = n_complete(after)
    proc = s.start("--workers", "2", FAKE_SLEEP="0.05", resume=True)
    try:
        assert proc.wait(timeout=120) == 0, s.tail()
    finally:
        kill_group(proc)
    done = s.trials()
    assert finished(s.study()) == 8 and n_complete(done) > n_before
    for t in stopped:
        assert any(r.user_attrs.get("retry_of") == t.number and r.state == TrialState.COMPLETE
                   and r.params == t.params for r in done), t.number


# -- two drivers on one study ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_drivers_at_once_draw_different_configurations(tmp_path, mini_root):
    """Two ``run`` commands started together on one study: the target is met once, and no configuration is
    drawn twice (each trial number seeds its own draw)."""
    d = space_dict(mini_root, 8)
    # always drawn and continuous: two equal configurations mean two equal sampler seeds
    d["methods"]["lora_X"]["params"]["scale"] = {"log": [0.01, 1.0]}
    d["methods"]["lora_X"]["optional"] = False
    s = Study(tmp_path, mini_root, STORAGES["sqlite"](tmp_path), trials=8, space=d)
    procs = [s.start("--workers", "1", FAKE_SLEEP="0.1", resume=False) for _ in range(2)]
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert codes == [0, 0], s.tail()
    ran = [t for t in s.trials() if t.state == TrialState.COMPLETE]
    assert finished(s.study()) == 8 and len(ran) == 8
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 8, [t.params for t in ran]
    assert len({t.user_attrs["worker"]["pid"] for t in ran}) == 2  # both drivers trained
