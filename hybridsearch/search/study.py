"""The study layer both engines stand on: the Optuna study in its storage is the single source of truth.

The space, its hash, the target number of finished trials, the training seed and the data root are study
attributes, so ``resume`` needs only the study name and storage. Here: opening (or creating) and seeding a study,
the baselines queued first, counting the trials toward the target, the heartbeat of running trials, recovering
trials whose worker died (FAIL, then re-queued with the same parameters and seed), and a worker's trial
objective with its data loaded once per process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from .space import SearchSpace, load_space
from .storage import GRACE_S, HEARTBEAT_S, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DIED = "worker died (killed or crashed); re-queued"
INTERRUPTED = "interrupted (Ctrl-C); re-queued on resume"


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


def stage_space(opts: RunOptions) -> SearchSpace:
    """The space of ``opts`` (its stage's space for a staged run)."""
    space = load_space(opts.space_ref)
    return space if opts.stage is None else space.stage_space(opts.stage, opts.chosen)


# -- opening ----------------------------------------------------------------------------------------------------
def sampler_seed(seed: int | None, worker: int, done: int) -> int | None:
    """Each worker samples from its own stream, and a resumed study (``done`` trials so far) continues instead
    of replaying its first configurations (a seeded sampler would draw them again)."""
    return None if seed is None else seed + worker + 7919 * done


def stored_attrs(opts: RunOptions) -> dict[str, Any]:
    """The user attributes of an existing study; {} for a new one."""
    try:
        return optuna.load_study(study_name=opts.study, storage=open_storage(opts.storage)).user_attrs
    except KeyError:
        return {}


def open_study(opts: RunOptions, space: SearchSpace, create: bool, worker: int = 0) -> optuna.Study:
    """Load the study (``create``: or create it, recording the space, seed, data root and stage, and queue the
    baselines); a study made from another space is refused."""
    storage = open_storage(opts.storage)
    seed, done = _attr_seed(storage, opts.study)
    seed = opts.seed if opts.seed is not None else seed
    sampler = space.make_sampler(sampler_seed(seed, worker, done))
    pruner = space.make_pruner()
    if not create:
        return optuna.load_study(study_name=opts.study, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(study_name=opts.study, storage=storage, sampler=sampler, pruner=pruner,
                                directions=space.directions, load_if_exists=True)
    attrs = study.user_attrs
    if "space_hash" not in attrs:
        for key, value in (("space_ref", opts.space_ref), ("space", space.to_dict()),
                           ("space_hash", space.space_hash()), ("seed", opts.seed if opts.seed is not None else 0),
                           ("data_root", opts.data_root), ("stage", opts.stage), ("chosen", opts.chosen),
                           ("created", time.time())):
            study.set_user_attr(key, value)
        _queue_baselines(study, space)
    elif attrs["space_hash"] != space.space_hash():
        raise ConfigError(f"study {opts.study!r} was created from a different search space "
                          f"(hash {attrs['space_hash'][:12]} vs {space.space_hash()[:12]}); use a new --study name")
    if opts.trials is not None:
        study.set_user_attr("target_trials", opts.trials)
    elif "target_trials" not in study.user_attrs:
        study.set_user_attr("target_trials", int(space.trials))
    return study


def _queue_baselines(study: optuna.Study, space: SearchSpace) -> None:
    """A new study with ``baselines: true`` starts with head-only and each method alone (space.baseline_params);
    they count toward the target, and TPE learns from them as from its own start-up trials."""
    if not space.baselines or study.get_trials(deepcopy=False):
        return
    for name, params in space.baseline_params().items():
        study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)


def _attr_seed(storage: Any, name: str) -> tuple[int | None, int]:
    """(stored seed, number of trials so far) of an existing study; (None, 0) for a new one."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None, 0
    return study.user_attrs.get("seed"), len(study.get_trials(deepcopy=False))


def check_data(opts: RunOptions, space: SearchSpace) -> None:
    """Resolve the data root before the study is created (a failed start leaves no empty study); mini-VTAB
    without a root is built here, once, instead of in every worker."""
    space.family.data_root(space, opts.data_root or stored_attrs(opts).get("data_root"))


# -- counting toward the target ---------------------------------------------------------------------------------
def _live(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward the target: not one a re-queued retry replaces (``retry_of``: otherwise
    trials lost to a crash would use up the target and their retries would never run), not a ``surplus`` one,
    and for each replaced trial only its first retry (two recoverers may both have re-queued it)."""
    replaced = {t.user_attrs.get("retry_of") for t in trials} - {None}
    first_retry: dict[int, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("retry_of") is not None:
            first_retry.setdefault(t.user_attrs["retry_of"], t.number)
    return [t for t in trials if t.number not in replaced and not t.user_attrs.get("surplus")
            and first_retry.get(t.user_attrs.get("retry_of"), t.number) == t.number]


def _counted(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return sum(1 for t in _live(study.get_trials(deepcopy=False)) if t.state in states)


def finished(study: optuna.Study) -> int:
    return _counted(study, FINISHED)


def claimed(study: optuna.Study) -> int:
    """Finished plus running trials: a worker starts one only while this is below the target, so parallel
    workers do not overshoot it by starting trials the others are about to complete."""
    return _counted(study, (*FINISHED, TrialState.RUNNING))


def has_ticket(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` is among the first ``target`` live trials, by number (queued ones included).

    Workers check ``claimed`` before starting a trial, but two may pass that check at once; the trial
    numbers order them, so exactly ``target`` trials run and a surplus one ends at once."""
    live = _live(study.get_trials(deepcopy=False))
    return any(t.number == number for t in live) and sum(t.number < number for t in live) < target


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


def retry_attrs(t: FrozenTrial) -> dict[str, Any]:
    """A retry replaces trial ``t`` and keeps its baseline name."""
    return {"retry_of": t.number, **({"baseline": t.user_attrs["baseline"]} if "baseline" in t.user_attrs else {})}


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
        if t.state == TrialState.FAIL and t.user_attrs.get("failure") in (DIED, INTERRUPTED) \
                and t.number not in retried:
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
