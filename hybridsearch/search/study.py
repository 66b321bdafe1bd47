"""The study layer both engines stand on: the Optuna study in its storage is the single source of truth.

The space, its hash, the target number of finished trials, the training seed and the data root are study
attributes, so ``resume`` needs only the study name and storage. Here: opening (or creating) and seeding a study
(its start-up queue: startup.py), counting the trials toward the target (``final`` re-trainings included), the
heartbeat of running trials, recovering trials whose worker died (FAIL, then re-queued with the same parameters
and seed), and a worker's trial objective with its data loaded once per process.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from .space import SearchSpace, load_space
from .startup import queue_startup, warm_trials
from .storage import GRACE_S, HEARTBEAT_S, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
METRIC_NAMES = ("accuracy", "trainable_params")  # the objectives, in order
DIED = "worker died (killed or crashed); re-queued"
INTERRUPTED = "interrupted (Ctrl-C, SIGTERM or SIGHUP); re-queued on resume"
STORAGE_FAULT = "the storage failed; re-queued on resume"
REQUEUED = (DIED, INTERRUPTED, STORAGE_FAULT)  # failures that are not the trial's: it runs again


@dataclass
class RunOptions:
    """One study's run: what every engine and every worker process is given."""

    study: str
    storage: str | None
    space_ref: str  # what load_space() reads: bundled name or path
    trials: int | None = None
    workers: int = 1
    timeout: float | None = None
    seed: int | None = None
    data_root: str | None = None
    devices: list[str] | None = None
    stage: int | None = None
    chosen: list[str] | None = None
    warm_start: str | None = None  # a finished study of this storage whose best configurations start a new one
    single: str | None = None  # the single-method arm's study of this method (SearchSpace.single_space)

    def validate(self) -> None:
        """Refuse values that would be stored with the study or break a worker later (one line each)."""
        check_study_name(self.study)
        for flag, value, low in (("--trials", self.trials, 1), ("--workers", self.workers, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"{flag} {value!r}: must be an integer >= {low}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and 0 < self.timeout < math.inf):
            raise ConfigError(f"--timeout {self.timeout!r}: must be a number of seconds > 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ConfigError(f"--seed {self.seed!r}: must be an integer from 0 to {MAX_SEED:,}")


MAX_SEED = 2**32 - 1  # numpy's range, as a space's sampler.seed
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_study_name(name: str) -> None:
    """A study name reaches the terminal and names a folder under runs/: no control characters or line breaks,
    not a path that leaves the folder (``.``, ``..``), at most 200 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError(f"study name {name!r}: must be 1 to 200 characters (--study, or the space's name)")
    if _CONTROL.search(name):
        raise ConfigError(f"study name {name!r}: control characters and line breaks are not allowed "
                          "(--study, or the space's name)")
    if set(name) <= {".", "/"}:
        raise ConfigError(f"study name {name!r}: names no folder; use letters, digits, '-', '_' or '.'")


def folder_name(study: str) -> str:
    """The study's folder under runs/: characters other than letters, digits and ``._-+=@`` become ``_``."""
    name = re.sub(r"[^\w.+=@-]", "_", study)
    return name if name.strip(".") else name.replace(".", "_")


def stage_space(opts: RunOptions) -> SearchSpace:
    """The space of ``opts`` (its stage's space for a staged run)."""
    space = load_space(opts.space_ref)
    if opts.single is not None:
        space = space.single_space(opts.single)
    return space if opts.stage is None else space.stage_space(opts.stage, opts.chosen)


# -- opening ----------------------------------------------------------------------------------------------------
def stored_attrs(opts: RunOptions) -> dict[str, Any]:
    """The user attributes of an existing study; {} for a new one."""
    try:
        return optuna.load_study(study_name=opts.study, storage=open_storage(opts.storage)).user_attrs
    except KeyError:
        return {}


def open_study(opts: RunOptions, space: SearchSpace, create: bool, data: str | None = None) -> optuna.Study:
    """Load the study (``create``: or create it, recording the space, seed, data root and stage, and queue the
    baselines). A study made from another space, or from other data (``data``: the resolved data root), is
    refused: its leaderboard would mix them."""
    storage = open_storage(opts.storage)
    pruner = space.make_pruner()
    warm = warm_trials(storage, opts.warm_start) if create and opts.warm_start else None
    if not create:
        return optuna.load_study(study_name=opts.study, storage=storage, sampler=space.make_sampler(),
                                 pruner=pruner)
    study = optuna.create_study(study_name=opts.study, storage=storage, sampler=space.make_sampler(),
                                pruner=pruner, directions=space.directions, load_if_exists=True)
    attrs = study.user_attrs
    if not study.metric_names:  # Optuna's dashboard and trials_dataframe() show these names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRIC_NAMES[: len(space.directions)]))
    if "space_hash" not in attrs:
        for key, value in (("space_ref", opts.space_ref), ("space", space.to_dict()),
                           ("space_hash", space.space_hash()), ("seed", opts.seed if opts.seed is not None else 0),
                           ("data_root", opts.data_root), ("data", data), ("stage", opts.stage),
                           ("chosen", opts.chosen), ("single", opts.single), ("created", time.time())):
            study.set_user_attr(key, value)
        queue_startup(study, space, opts.seed if opts.seed is not None else space.sampler.seed, warm)
        if opts.warm_start:
            study.set_user_attr("warm_start", opts.warm_start)
    elif attrs["space_hash"] != space.space_hash():
        raise ConfigError(f"study {opts.study!r} was created from a different search space "
                          f"(hash {attrs['space_hash'][:12]} vs {space.space_hash()[:12]}); use a new --study name")
    elif data is not None and attrs.get("data") not in (None, data):
        raise ConfigError(f"study {opts.study!r} was created with the data in {attrs['data']}; its trials would be "
                          f"mixed with trials on {data}: drop --data-root to continue it, or use a new --study name")
    elif data is not None and attrs.get("data") is None:  # a study from before data was recorded
        study.set_user_attr("data", data)
    if opts.trials is not None:
        study.set_user_attr("target_trials", opts.trials)
    elif "target_trials" not in study.user_attrs:
        study.set_user_attr("target_trials", int(space.trials))
    return study


def check_data(opts: RunOptions, space: SearchSpace) -> str:
    """The resolved data root (its identity in the study), found before the study is created: a failed start
    leaves no empty study, and mini-VTAB without a root is built here, once, instead of in every worker."""
    root = space.family.data_root(space, opts.data_root or stored_attrs(opts).get("data_root"))
    return str(Path(root).resolve())


# -- asking for the next trial -----------------------------------------------------------------------------------
def sampler_seed(seed: int | None, number: int) -> int | None:
    """The sampler draws trial ``number`` from ``seed`` + 7919 x ``number``: the storage gives every trial a
    unique number, so concurrent workers and drivers never repeat each other's draws, and one driver with one
    worker repeats its run exactly."""
    return None if seed is None else (seed + 7919 * number) % 2**32


def pop_waiting(study: optuna.Study) -> int | None:
    """Claim a queued trial: retries of interrupted trials first (by the position of the trial they replace),
    then the others in queue order. A claim another process made first is skipped."""
    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    by_number = {t.number: t for t in storage.get_all_trials(study._study_id, deepcopy=False)}
    for t in sorted(waiting, key=lambda t: ("retry_of" not in t.user_attrs, _position(t, by_number), t.number)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def next_trial(study: optuna.Study, space: SearchSpace, seed: int | None,
               owner_attrs: dict[str, Any] | None = None) -> optuna.Trial:
    """``study.ask()`` with the queue order of ``pop_waiting`` and a sampler seeded for this trial's number.
    A new trial is created with ``owner_attrs`` in the same write (a process killed right after leaves no
    RUNNING trial without an owner)."""
    study._thread_local.cached_all_trials = None  # as ask(): the sampler sees every trial written so far
    trial_id = pop_waiting(study)
    storage = study._storage
    if trial_id is None:
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=owner_attrs or {})
        trial_id = storage.create_new_trial(study._study_id, template_trial=template)
    else:
        for key, value in (owner_attrs or {}).items():
            storage.set_trial_user_attr(trial_id, key, value)
    study.sampler = space.make_sampler(sampler_seed(seed, storage.get_trial_number_from_id(trial_id)))
    return optuna.trial.Trial(study, trial_id)


# -- counting toward the target ---------------------------------------------------------------------------------
def _position(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int:
    """A trial's place in line for the target: its number, or for a retry the place of the trial it replaces
    (through a chain of retries), so a killed trial's retry never loses its place to trials queued after it."""
    seen: set[int] = set()
    while (origin := t.user_attrs.get("retry_of")) is not None and origin in by_number and origin not in seen:
        seen.add(origin)
        t = by_number[origin]
    return t.number


def _live(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward the target, in line order (``_position``): not one a re-queued retry
    replaces (``retry_of``: otherwise trials lost to a crash would use up the target and their retries would
    never run), not a ``surplus`` one, and for each replaced trial only its first retry (two recoverers may both
    have re-queued it)."""
    replaced = {t.user_attrs.get("retry_of") for t in trials} - {None}
    first_retry: dict[int, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("retry_of") is not None:
            first_retry.setdefault(t.user_attrs["retry_of"], t.number)
    live = [t for t in trials if t.number not in replaced and not t.user_attrs.get("surplus")
            and first_retry.get(t.user_attrs.get("retry_of"), t.number) == t.number]
    by_number = {t.number: t for t in trials}
    return sorted(live, key=lambda t: (_position(t, by_number), t.number))


def study_target(study: optuna.Study) -> int:
    """The number of finished trials a run goes to: the stored target plus the queued re-trainings of ``final``
    (which never use up the search's own trials), less the baselines of ``baselines: last`` while they are not
    queued yet (the search's own trials stop there; run.py then queues them)."""
    trials = _live(study.get_trials(deepcopy=False))
    finals = sum(1 for t in trials if "final_of" in t.user_attrs)
    pending = 0 if any("baseline" in t.user_attrs for t in trials) else int(study.user_attrs.get("baselines_last", 0))
    return int(study.user_attrs["target_trials"]) + finals - pending


def _counted(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return sum(1 for t in _live(study.get_trials(deepcopy=False)) if t.state in states)


def finished(study: optuna.Study) -> int:
    return _counted(study, FINISHED)


def claimed(study: optuna.Study) -> int:
    """Finished plus running trials: a worker starts one only while this is below the target, so parallel
    workers do not overshoot it by starting trials the others are about to complete."""
    return _counted(study, (*FINISHED, TrialState.RUNNING))


def has_ticket(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` is among the first ``target`` live trials in line order (queued ones included).

    Workers check ``claimed`` before starting a trial, but two may pass that check at once; the line orders
    them, so exactly ``target`` trials run and a surplus one ends at once. A retry stands where the trial it
    replaces stood: a resumed study reaches its target only after its interrupted trials ran again."""
    live = [t.number for t in _live(study.get_trials(deepcopy=False))]
    return number in live[:target]


# -- liveness and recovery --------------------------------------------------------------------------------------
def owner() -> dict[str, Any]:
    """The ``worker`` attribute of a trial this process runs (``recover_stale`` checks the pid on this host)."""
    return {"host": os.uname().nodename, "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; a zombie (killed, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no procfs (macOS): trust kill(0)
        return True


class Heartbeat:
    """Writes a ``heartbeat`` attribute on every trial in ``ids`` every few seconds (any storage), so a running
    trial never looks stale to ``recover_stale`` on another host."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.ids = study, set()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for tid in list(self.ids):
                with contextlib.suppress(Exception):  # the trial may have just finished
                    self.study._storage.set_trial_user_attr(tid, "heartbeat", time.time())

    def stop(self) -> None:
        self._stop.set()


_KEPT = ("baseline", "final_of", "design", "warm_start")  # what a trial was queued as; its retry is the same


def retry_attrs(t: FrozenTrial) -> dict[str, Any]:
    """A retry replaces trial ``t`` and keeps what it was queued as (a baseline, a final re-training...)."""
    return {"retry_of": t.number, **{k: t.user_attrs[k] for k in _KEPT if k in t.user_attrs}}


def _params(t: FrozenTrial) -> dict[str, Any]:
    """What the trial drew, and what it was queued with (a retry killed before drawing them all again)."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def requeue(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark an unfinished trial FAIL with ``reason`` and queue its parameters again (same values, same seed);
    False when it finished meanwhile or another process was first (the storage refuses to finish twice)."""
    storage = study._storage
    t = storage.get_trial(trial_id)
    if t.state.is_finished():
        return False
    try:
        storage.set_trial_user_attr(trial_id, "failure", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    # no params yet (killed between ask and sampling): the retry draws fresh ones, and still replaces it
    study.enqueue_trial(_params(t), user_attrs=retry_attrs(t), skip_if_exists=False)
    return True


def recover_stale(study: optuna.Study, grace: float = GRACE_S) -> list[int]:
    """Re-queue RUNNING trials whose worker is gone: same host and the pid is dead, or no heartbeat for
    ``grace`` seconds (any host). Safe to run from several processes and to kill at any point: the FAIL write
    decides which recoverer re-queues, and a FAIL left without its retry (a recoverer killed in between, or a
    trial interrupted with Ctrl-C) is re-queued by the next call."""
    requeued = []
    host, now = os.uname().nodename, time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        dead = (w.get("host") == host and not _pid_alive(int(w.get("pid", -1)))) or now - beat > grace
        if dead and requeue(study, t._trial_id, DIED):
            requeued.append(t.number)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("failure") in REQUEUED and t.number not in retried:
            study.enqueue_trial(_params(t), user_attrs=retry_attrs(t), skip_if_exists=False)
            requeued.append(t.number)
    return requeued


# -- a worker's objective ---------------------------------------------------------------------------------------
_TASKS: dict[tuple, list] = {}  # the last search's data, kept while this process runs its trials


def load_search_tasks(space: SearchSpace, data_root: str | None) -> list:
    """The space's search tasks at its fidelity, loaded once per process and data root (a worker process, or a
    Ray worker that the cluster reuses for several trials)."""
    key = (space.space_hash(), data_root)
    if key not in _TASKS:  # data_root() verifies a mini-VTAB build (~0.4 s): once, not per trial
        fam, fid = space.family, space.fidelity
        root = fam.data_root(space, data_root)
        _TASKS.clear()
        _TASKS[key] = fam.load_tasks(space, root, max_train=fid.max_train_examples, max_val=fid.max_val_examples)
    return _TASKS[key]
