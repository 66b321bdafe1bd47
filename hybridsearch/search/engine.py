"""The Optuna engine: create or resume a study, recover trials of dead workers, run N worker processes.

The study in its storage is the single source of truth: the space, its hash, the target number of finished
trials and the seed are study attributes, so ``resume`` needs only the study name and storage.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..errors import ConfigError, HybridSearchError
from .storage import GRACE_S, HEARTBEAT_S, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WAIT_S = 1.0  # poll interval of a worker waiting for the last running trials


@dataclass
class RunOptions:
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


def stage_space(opts: RunOptions):
    from .space import load_space

    space = load_space(opts.space_ref)
    return space if opts.stage is None else space.stage_space(opts.stage, opts.chosen)


def directions(space) -> list[str]:
    return ["maximize", "minimize"] if len(space.objectives) > 1 else ["maximize"]


def open_study(opts: RunOptions, space, create: bool, worker: int = 0) -> optuna.Study:
    storage = open_storage(opts.storage)
    seed, done = _attr_seed(storage, opts.study)
    seed = opts.seed if opts.seed is not None else seed
    # a resumed study continues the sampler's stream instead of replaying its first configurations
    sampler = space.make_sampler(None if seed is None else seed + worker + 7919 * done)
    pruner = space.make_pruner()
    if create:
        study = optuna.create_study(study_name=opts.study, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=directions(space), load_if_exists=True)
        attrs = study.user_attrs
        if "space_hash" not in attrs:
            study.set_user_attr("space_ref", opts.space_ref)
            study.set_user_attr("space", space.to_dict())
            study.set_user_attr("space_hash", space.space_hash())
            study.set_user_attr("seed", opts.seed if opts.seed is not None else 0)
            study.set_user_attr("data_root", opts.data_root)
            study.set_user_attr("stage", opts.stage)
            study.set_user_attr("chosen", opts.chosen)
            study.set_user_attr("created", time.time())
            _queue_baselines(study, space)
        elif attrs["space_hash"] != space.space_hash():
            raise ConfigError(f"study {opts.study!r} was created from a different search space "
                              f"(hash {attrs['space_hash'][:12]} vs {space.space_hash()[:12]}); use a new --study name")
        if opts.trials is not None:
            study.set_user_attr("target_trials", opts.trials)
        elif "target_trials" not in study.user_attrs:
            study.set_user_attr("target_trials", int(space.trials))
        return study
    return optuna.load_study(study_name=opts.study, storage=storage, sampler=sampler, pruner=pruner)


def _queue_baselines(study: optuna.Study, space) -> None:
    """A new study with ``baselines: true`` starts with head-only and each method alone (space.baseline_params);
    they count toward the target, and TPE learns from them as from its own start-up trials."""
    if not space.baselines or study.get_trials(deepcopy=False):
        return
    for name, params in space.baseline_params().items():
        study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)


def _attr_seed(storage, name: str) -> tuple[int | None, int]:
    """(stored seed, number of trials so far) of an existing study; (None, 0) for a new one."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None, 0
    return study.user_attrs.get("seed"), len(study.get_trials(deepcopy=False))


def _live(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
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


def has_ticket(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` is among the first ``target`` live trials, by number (queued ones included).

    Workers check ``claimed`` before starting a trial, but two may pass that check at once; the trial
    numbers order them, so exactly ``target`` trials run and a surplus one ends at once."""
    live = _live(study.get_trials(deepcopy=False))
    return any(t.number == number for t in live) and sum(t.number < number for t in live) < target


def finished(study: optuna.Study) -> int:
    return _counted(study, FINISHED)


def claimed(study: optuna.Study) -> int:
    """Finished plus running trials: a worker starts one only while this is below the target, so parallel
    workers do not overshoot it by starting trials the others are about to complete."""
    return _counted(study, (*FINISHED, TrialState.RUNNING))


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


DIED = "worker died (killed or crashed); re-queued"
INTERRUPTED = "interrupted (Ctrl-C); re-queued on resume"


def recover_stale(study: optuna.Study, grace: float = GRACE_S) -> list[int]:
    """Mark RUNNING trials whose worker is gone as FAIL and re-queue their parameters (same values).

    Gone = same host and the pid is dead, or no heartbeat for ``grace`` seconds (any host). Safe to run from
    several processes and to kill at any point: the FAIL write decides which recoverer re-queues (the storage
    refuses to finish a trial twice), and a FAIL left without its retry (a recoverer killed in between, or a
    trial interrupted with Ctrl-C) is re-queued by the next call."""
    requeued = []
    host, now = os.uname().nodename, time.time()
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        dead = (w.get("host") == host and not _pid_alive(int(w.get("pid", -1)))) or now - beat > grace
        if not dead:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "failure", DIED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # finished meanwhile, or another recoverer was first
            continue
        # no params yet (killed between ask and sampling): the retry draws fresh ones, and still replaces it
        study.enqueue_trial(_params(t), user_attrs=retry_attrs(t), skip_if_exists=False)
        requeued.append(t.number)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("failure") in (DIED, INTERRUPTED) \
                and t.number not in retried:
            study.enqueue_trial(_params(t), user_attrs=retry_attrs(t), skip_if_exists=False)
            requeued.append(t.number)
    return requeued


def retry_attrs(t: optuna.trial.FrozenTrial) -> dict:
    """A retry replaces trial ``t`` and keeps its baseline name."""
    return {"retry_of": t.number, **({"baseline": t.user_attrs["baseline"]} if "baseline" in t.user_attrs else {})}


def _params(t: optuna.trial.FrozenTrial) -> dict:
    """What the trial drew, and what it was queued with (a retry killed before drawing them all again)."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


class Heartbeat:
    """Writes a ``heartbeat`` attribute on the running trial every few seconds (any storage)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.trial_id = study, None
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            tid = self.trial_id
            if tid is not None:
                with contextlib.suppress(Exception):  # the trial may have just finished
                    self.study._storage.set_trial_user_attr(tid, "heartbeat", time.time())

    def stop(self) -> None:
        self._stop.set()


def run_worker(opts: RunOptions, worker: int = 0, on_trial: Callable | None = None) -> None:
    """One worker: trains trials until the study has its target number of finished trials."""
    import torch

    from .objective import Objective, _img_size, data_root, load_tasks
    from .space import count_methods

    if opts.devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = opts.devices[worker % len(opts.devices)]
    device = "cuda" if opts.devices and torch.cuda.is_available() else "cpu"
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # an explicit thread count wins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(opts.workers, 1)))
    space = stage_space(opts)
    study = open_study(opts, space, create=False, worker=worker)
    root = data_root(space, opts.data_root or study.user_attrs.get("data_root"))
    tasks = load_tasks(space, root, _img_size(space), space.fidelity.max_train_examples,
                       max_val=space.fidelity.max_val_examples)
    objective = Objective(space, tasks, device, seed=int(study.user_attrs.get("seed", 0)))
    count_methods(space, {})  # the first meta-device count imports torch's decompositions (~1.5 s): once, here
    gc.freeze()  # see the loop below
    target = int(study.user_attrs["target_trials"])
    beat = Heartbeat(study)
    deadline = time.time() + opts.timeout if opts.timeout else None

    def wrapped(trial: optuna.Trial):
        beat.trial_id = trial._trial_id
        if not has_ticket(study, trial.number, target):
            reason = "surplus: other workers started the target number of trials first"
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("failure", reason)
            raise optuna.TrialPruned(reason)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("failure", INTERRUPTED)
            raise
        except Exception as e:  # every failed trial carries its reason, wherever it failed
            if "failure" not in trial.user_attrs:
                trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            raise

    def callback(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        beat.trial_id = None
        if on_trial is not None:
            on_trial(st, trial)
        if finished(st) >= target or (deadline and time.time() > deadline):
            st.stop()

    try:
        while finished(study) < target and not (deadline and time.time() > deadline):
            if claimed(study) >= target:  # the rest are running: wait for them, re-queue any whose worker died
                recover_stale(study)
                time.sleep(WAIT_S)
                continue
            # no gc_after_trial: the objective already collects after each trial (a second full collection
            # costs 0.1-0.4 s per trial in a large process)
            study.optimize(wrapped, n_trials=1, catch=(Exception,), callbacks=[callback], gc_after_trial=False)
            # what outlives a trial (modules, data, imports, the study) lives as long as the worker: frozen, it
            # is skipped by the objective's per-trial gc.collect() (measured 180 -> 3 ms per trial, vim-proxy)
            gc.freeze()
    finally:
        beat.stop()


def _check_data(opts: RunOptions, space) -> None:
    """A missing data root fails before the study is created, so a failed start leaves no empty study."""
    from .objective import data_root

    try:
        stored = optuna.load_study(study_name=opts.study, storage=open_storage(opts.storage)).user_attrs
    except KeyError:  # a new study
        stored = {}
    root = opts.data_root or stored.get("data_root")
    if root or space.data.kind != "mini_vtab":  # mini-VTAB without a root is built by the worker
        data_root(space, root)


def _spawn_worker(opts: RunOptions, worker: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(opts, worker)
    # Done: every result is in the storage (each write commits). Skip interpreter teardown, where Triton's
    # bindings (imported by torch for meta-device math) print hundreds of "nanobind: leaked ..." lines.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_study(opts: RunOptions, on_trial: Callable | None = None, poll: Callable | None = None) -> optuna.Study:
    """Create or resume the study, recover dead trials, run ``opts.workers`` workers until the target."""
    space = stage_space(opts)
    _check_data(opts, space)
    study = open_study(opts, space, create=True)
    recover_stale(study)
    if opts.workers <= 1:
        run_worker(opts, 0, on_trial)
        return study
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawn_worker, args=(opts, i), daemon=False) for i in range(opts.workers)]
    for p in procs:
        p.start()
    try:
        while sum(p.is_alive() for p in procs):  # asks every worker, so each dead one is reaped (no zombie)
            if poll is not None:
                poll(study)
            time.sleep(1.0)
    finally:
        for p in procs:
            p.join(timeout=1)
            if p.is_alive():
                p.terminate()
    if poll is not None:
        poll(study)
    crashed = [f"worker {i} (exit status {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
    if crashed and finished(study) < int(study.user_attrs["target_trials"]):
        raise HybridSearchError(f"{', '.join(crashed)} stopped before the study reached its target; finished "
                                f"trials are kept: see the messages above, then hybridsearch resume {opts.study}")
    return study
