"""The local engine: ``workers`` processes on this machine share one study through its storage.

Each worker asks the study for a trial (retries of interrupted trials first, then queued baselines, then its
sampler's draws: ``study.next_trial``), trains it in-process and tells the result, until the study has its
target number of finished trials. With one worker the driver itself is the worker. A worker killed at any
point loses only its running trial, which ``recover_stale`` re-queues (study.py). SIGTERM or SIGHUP of the
driver stops its workers like Ctrl-C (their trials are re-queued on resume); a worker also stops when its
driver dies, however it dies. A fault of the storage stops the run with one line; it never fails a trial.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import HybridSearchError
from ..process import keep_freed_memory
from .interrupts import die_with_parent, signals_as_interrupt
from .objective import Objective
from .space import count_methods
from .storage import StorageFault, is_storage_fault, storage_faults
from .study import (
    INTERRUPTED,
    STORAGE_FAULT,
    Heartbeat,
    RunOptions,
    check_data,
    claimed,
    finished,
    has_ticket,
    load_search_tasks,
    next_trial,
    open_study,
    owner,
    recover_stale,
    stage_space,
    study_target,
)

WAIT_S = 1.0  # poll interval of a worker waiting for the last running trials
SURPLUS = "surplus: other workers started the target number of trials first"


def run_worker(opts: RunOptions, worker: int = 0, on_trial: Callable | None = None) -> None:
    """One worker: trains trials until the study has its target number of finished trials."""
    with storage_faults(opts.storage, opts.study):
        _Worker(opts, worker, on_trial).run()


class _Worker:
    def __init__(self, opts: RunOptions, worker: int, on_trial: Callable | None) -> None:
        import torch

        if opts.devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = opts.devices[worker % len(opts.devices)]
        self.device = "cuda" if opts.devices and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            keep_freed_memory()
            if "OMP_NUM_THREADS" not in os.environ:  # an explicit thread count wins
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(opts.workers, 1)))
        self.opts, self.on_trial = opts, on_trial
        self.space = stage_space(opts)
        self.study = open_study(opts, self.space, create=False)
        attrs = self.study.user_attrs
        tasks = load_search_tasks(self.space, opts.data_root or attrs.get("data_root"))
        self.objective = Objective(self.space, tasks, self.device, seed=int(attrs.get("seed", 0)),
                                   data=attrs.get("data"))
        self.seed = opts.seed if opts.seed is not None else self.space.sampler.seed
        self.target = study_target(self.study)
        self.deadline = time.time() + opts.timeout if opts.timeout else None

    def _done(self) -> bool:
        return finished(self.study) >= self.target or bool(self.deadline and time.time() > self.deadline)

    def run(self) -> None:
        count_methods(self.space, {})  # the first meta-device count imports torch's decompositions: once, here
        gc.freeze()  # see below
        beat = Heartbeat(self.study)
        try:
            while not self._done():
                if claimed(self.study) >= self.target:  # the rest are running: wait, re-queue any whose worker died
                    recover_stale(self.study)
                    time.sleep(WAIT_S)
                    continue
                self._one_trial(beat)
                # what outlives a trial (modules, data, imports, the study) lives as long as the worker: frozen, it
                # is skipped by the objective's per-trial gc.collect() (measured 180 -> 3 ms per trial, vim-proxy)
                gc.freeze()
        finally:
            beat.stop()

    def _one_trial(self, beat: Heartbeat) -> None:
        """Ask, train, tell: the ask / tell of ``study.optimize``, with the queue order of ``next_trial`` and the
        faults kept apart (a storage fault or an interrupt is not the trial's failure)."""
        study = self.study
        trial = next_trial(study, self.space, self.seed, {"worker": owner()})
        beat.ids = {trial._trial_id}
        values: Any = None
        try:
            if not has_ticket(study, trial.number, self.target):
                trial.set_user_attr("surplus", True)
                trial.set_user_attr("failure", SURPLUS)
                state = TrialState.PRUNED
            else:
                values, state = self.objective(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            _mark(study, trial, INTERRUPTED)
            raise
        except Exception as e:
            if is_storage_fault(e) or isinstance(e, StorageFault):  # not the trial's failure: stop the run
                _mark(study, trial, STORAGE_FAULT)
                raise
            if "failure" not in trial.user_attrs:  # every failed trial carries its reason, wherever it failed
                trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            state = TrialState.FAIL
        finally:
            beat.ids = set()
        frozen = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state,
                            skip_if_finished=True)
        if self.on_trial is not None:
            self.on_trial(study, frozen)


def _mark(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """FAIL with a reason ``recover_stale`` re-queues; a storage that cannot take it leaves the trial RUNNING,
    which ``recover_stale`` re-queues too once its worker is gone."""
    with contextlib.suppress(Exception):
        study._storage.set_trial_user_attr(trial._trial_id, "failure", reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _spawn_worker(opts: RunOptions, worker: int, errors: Any, parent: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    status = 0
    try:
        with signals_as_interrupt():
            die_with_parent(parent)
            run_worker(opts, worker)
    except KeyboardInterrupt:
        status = 130
    except HybridSearchError as e:  # one line, reported by the driver
        errors.put((worker, isinstance(e, StorageFault), str(e)))
        status = 2
    # Done: every result is in the storage (each write commits). Skip interpreter teardown, where Triton's
    # bindings (imported by torch for meta-device math) print hundreds of "nanobind: leaked ..." lines.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_study(opts: RunOptions, on_trial: Callable | None = None, poll: Callable | None = None) -> optuna.Study:
    """Create or resume the study, recover dead trials, run ``opts.workers`` workers until the target."""
    space = stage_space(opts)
    data = check_data(opts, space)
    with storage_faults(opts.storage, opts.study), signals_as_interrupt():
        study = open_study(opts, space, create=True, data=data)
        recover_stale(study)
        if opts.workers <= 1:
            run_worker(opts, 0, on_trial)
            return study
        _run_processes(opts, study, poll)
    return study


def _run_processes(opts: RunOptions, study: optuna.Study, poll: Callable | None) -> None:
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_spawn_worker, args=(opts, i, errors, os.getpid()), daemon=False)
             for i in range(opts.workers)]
    for p in procs:
        p.start()
    try:
        while sum(p.is_alive() for p in procs):  # asks every worker, so each dead one is reaped (no zombie)
            if poll is not None:
                poll(study)
            time.sleep(1.0)
    finally:
        for p in procs:  # interrupted: stop the workers as Ctrl-C does (they mark their trials interrupted)
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if poll is not None:
        poll(study)
    reasons = []
    while not errors.empty():
        reasons.append(errors.get())
    if reasons:  # a storage fault, bad data...: the first worker's own line
        worker, fault, message = min(reasons)
        raise HybridSearchError(message if fault else f"{message} (worker {worker}); finished trials are kept: fix "
                                                      f"it, then hybridsearch resume {opts.study}")
    crashed = [f"worker {i} (exit status {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
    if crashed and finished(study) < study_target(study):
        raise HybridSearchError(f"{', '.join(crashed)} stopped before the study reached its target; finished "
                                f"trials are kept: see the messages above, then hybridsearch resume {opts.study}")
