"""The local engine: ``workers`` processes on this machine share one study through its storage.

Each worker asks the study for a trial (queued baselines and retries first, then its own sampler's draws) and
trains it in-process, until the study has its target number of finished trials. With one worker the driver
itself is the worker. A worker killed at any point loses only its running trial, which ``recover_stale``
re-queues (study.py).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable

import optuna

from ..errors import HybridSearchError
from .objective import Objective
from .space import count_methods
from .study import (
    INTERRUPTED,
    Heartbeat,
    RunOptions,
    check_data,
    claimed,
    finished,
    has_ticket,
    load_search_tasks,
    open_study,
    recover_stale,
    stage_space,
)

WAIT_S = 1.0  # poll interval of a worker waiting for the last running trials


def run_worker(opts: RunOptions, worker: int = 0, on_trial: Callable | None = None) -> None:
    """One worker: trains trials until the study has its target number of finished trials."""
    import torch

    if opts.devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = opts.devices[worker % len(opts.devices)]
    device = "cuda" if opts.devices and torch.cuda.is_available() else "cpu"
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # an explicit thread count wins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(opts.workers, 1)))
    space = stage_space(opts)
    study = open_study(opts, space, create=False, worker=worker)
    tasks = load_search_tasks(space, opts.data_root or study.user_attrs.get("data_root"))
    objective = Objective(space, tasks, device, seed=int(study.user_attrs.get("seed", 0)))
    count_methods(space, {})  # the first meta-device count imports torch's decompositions (~1.5 s): once, here
    gc.freeze()  # see the loop below
    target = int(study.user_attrs["target_trials"])
    beat = Heartbeat(study)
    deadline = time.time() + opts.timeout if opts.timeout else None

    def wrapped(trial: optuna.Trial):
        beat.ids = {trial._trial_id}
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
        beat.ids = set()
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
    check_data(opts, space)
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
