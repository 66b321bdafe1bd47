"""The Ray engine: Ray executes trials, the Optuna study in its storage stays the single source of truth.

The driver owns the trial life-cycle with Optuna's ask/tell, using the very study (sampler, pruner, seed) the
Optuna engine opens. For each trial it asks the study as the Optuna engine does (``study.next_trial``: retries
of interrupted trials first, a sampler seeded by the trial's number) and draws the whole configuration with
``space.sample(trial)`` (one translation of the YAML space, sequential sampling from one seeded sampler), then
submits a Ray task. The task re-opens the study from the storage URL, rebinds to the same trial
(``optuna.trial.Trial(study, trial_id)``: every parameter is already set, so nothing is re-sampled) and runs
the ordinary :class:`Objective`: user attributes, intermediate values and Optuna pruning go straight to the
shared storage exactly as with the Optuna engine. The driver then tells the final state: COMPLETE with the
objective values, PRUNED (Optuna records the last intermediate value, as ``study.optimize`` does) or FAIL.
No Ray Tune scheduler stops trials behind Optuna's back, so a partial score is never recorded as COMPLETE.

Fault tolerance:
* a task whose worker or node died (pre-emption, OOM-killer, ``ray stop``), or that hit an error outside the
  objective or a CUDA out-of-memory, is resubmitted for the *same* Optuna trial (same number, parameters and
  seed) up to ``max_retries`` times; each retry is listed in the trial's ``retries`` attribute. Training
  restarts from the first epoch: ``train_classifier`` has no resume hook, and trials are seeded, so the
  retried trial reproduces the lost one;
* the driver heartbeats its in-flight trials, so ``recover_stale`` (study.py) sees them alive, and after the
  driver dies (even by SIGKILL) ``hybridsearch resume STUDY --engine ray`` marks them FAIL, re-queues their
  parameters and re-runs them; here the retry also keeps the lost trial's seed;
* a local Ray instance is watched by ``_ray_reaper.py``, which ends every Ray process the driver started once
  the driver exits, however it exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import ConfigError, HybridSearchError, TrialFailure
from ..process import keep_freed_memory
from .interrupts import signals_as_interrupt
from .objective import Objective
from .storage import StorageFault, default_storage, is_storage_fault, open_storage, storage_faults
from .study import (
    Heartbeat,
    RunOptions,
    check_data,
    claimed,
    load_search_tasks,
    next_trial,
    open_study,
    owner,
    recover_stale,
    requeue,
    stage_space,
    study_target,
)

# errors a retry may cure: a neighbour's memory on a shared GPU, a lost node, a storage hiccup
RETRYABLE_FAILURES = ("out of memory",)


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local instance; "auto" or HOST:PORT: join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions pack several trials on one GPU
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs / GPUs allow
    max_retries: int = 2
    num_cpus: int | None = None  # size of a local instance (default: Ray's count of the machine's CPUs)

    def validate(self) -> None:
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial {self.cpus_per_trial}: must be > 0")
        g = self.gpus_per_trial
        if g < 0 or (g > 1 and g != int(g)):
            raise ConfigError(f"--gpus-per-trial {g}: must be 0, a fraction in (0, 1] or a whole number")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent {self.max_concurrent}: must be >= 1")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries}: must be >= 0")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise HybridSearchError("--engine ray needs Ray: pip install 'hybridsearch[ray]'") from None
    return ray


# ---------------------------------------------------------------------------------------------- the Ray session
@contextlib.contextmanager
def ray_session(ro: RayOptions) -> Iterator[None]:
    """Connect to ``ro.address``, or start a local instance that leaves no process behind; reuse an
    instance the caller already started (and leave it running)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if ro.address:
        _reachable(ro.address)
        try:
            ray.init(address=ro.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise HybridSearchError(f"cannot join the Ray cluster at {ro.address!r}: {e}") from None
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp = tempfile.mkdtemp(prefix="hsray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    reaper = None
    try:
        ray.init(num_cpus=ro.num_cpus, include_dashboard=False, _temp_dir=temp, **quiet)
        reaper = _start_reaper(temp)
        yield
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if reaper is not None:
            reaper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(timeout=15)
        shutil.rmtree(temp, ignore_errors=True)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on HOST:PORT that does not answer (``ray.init`` would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise HybridSearchError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; "
                                f"start it with: ray start --head --port={port}") from None


def _start_reaper(temp: str) -> subprocess.Popen:
    import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is

    env = {**os.environ, "PYTHONPATH": str(Path(psutil.__file__).parents[1])}
    script = Path(__file__).with_name("_ray_reaper.py")
    return subprocess.Popen([sys.executable, str(script), str(os.getpid()), temp], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _capacity(ray, ro: RayOptions) -> int:
    """Concurrent trials: ``max_concurrent``, else what the cluster's CPUs and GPUs hold."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if ro.cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {ro.cpus_per_trial}: the Ray cluster has {cpus:g} CPUs")
    if ro.gpus_per_trial > gpus:
        raise ConfigError(f"--gpus-per-trial {ro.gpus_per_trial}: the Ray cluster has {gpus:g} GPUs")
    fits = int(cpus // ro.cpus_per_trial)
    if ro.gpus_per_trial:
        fits = min(fits, int(gpus // ro.gpus_per_trial + 1e-9))
    return ro.max_concurrent or max(1, fits)


# ------------------------------------------------------------------------------------------- the trial (worker)
def run_trial(opts: RunOptions, trial_id: int, attempt: int, cpus: float, gpus: float) -> dict[str, Any]:
    """Train one already-asked trial (in a Ray worker). Returns ``{"state", "values"?, "reason"?, "retry"?}``;
    the driver tells the state."""
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        keep_freed_memory()
    try:
        space = _space(opts)
        # a sampler that is never asked (every parameter was drawn by the driver) and the space's pruner
        storage_study = optuna.load_study(study_name=opts.study, storage=_storage(opts.storage),
                                          sampler=optuna.samplers.RandomSampler(), pruner=space.make_pruner())
        trial = optuna.trial.Trial(storage_study, trial_id)
        base = int(storage_study.user_attrs.get("seed", 0))
        attrs = storage_study.user_attrs
        tasks = load_search_tasks(space, opts.data_root or attrs.get("data_root"))
        objective = Objective(space, tasks, device, seed=base, data=attrs.get("data"))
        trial.set_user_attr("ray", {"attempt": attempt, "node": _node_id(), "cpus": cpus, "gpus": gpus,
                                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                    "setup_s": round(time.perf_counter() - t0, 3)})
        value = objective(trial)
    except optuna.TrialPruned:
        return {"state": "PRUNED"}
    except Exception as e:
        if is_storage_fault(e) or isinstance(e, StorageFault):  # not the trial's: the driver stops the run
            return {"state": "STORAGE", "reason": str(StorageFault(opts.storage, e, opts.study))
                    if not isinstance(e, StorageFault) else str(e)}
        return _failure(e)
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    return {"state": "COMPLETE", "values": [float(v) for v in values]}


def _failure(e: Exception) -> dict[str, Any]:
    if isinstance(e, TrialFailure):
        reason = str(e)
        return {"state": "FAIL", "reason": reason, "retry": reason.startswith(RETRYABLE_FAILURES)}
    # outside the objective's own handling: data, environment
    return {"state": "FAIL", "reason": f"{type(e).__name__}: {e}", "retry": True}


@functools.lru_cache(maxsize=4)
def _storage(url: str | None):
    """One storage per worker process and URL (absolute: ``_portable``): a journal is then read incrementally, not
    replayed per trial."""
    return open_storage(url)


def _space(opts: RunOptions):
    """The (staged) space, parsed once per worker process while its file is unchanged."""
    path = Path(opts.space_ref)
    mtime = path.stat().st_mtime_ns if path.is_file() else None
    return _parsed_space(opts.space_ref, mtime, opts.stage, tuple(opts.chosen or ()))


@functools.lru_cache(maxsize=4)
def _parsed_space(space_ref: str, mtime: int | None, stage: int | None, chosen: tuple[str, ...]):
    return stage_space(RunOptions(study="", storage=None, space_ref=space_ref, stage=stage,
                                  chosen=list(chosen) or None))


def _node_id() -> str | None:
    with contextlib.suppress(Exception):
        import ray

        return ray.get_runtime_context().get_node_id()
    return None


# ----------------------------------------------------------------------------------------------- the driver
@dataclass
class _Job:
    trial_id: int
    number: int
    attempt: int = 1
    retries: list[dict[str, Any]] = field(default_factory=list)


class _Driver:
    def __init__(self, study: optuna.Study, space, opts: RunOptions, ro: RayOptions,
                 on_trial: Callable | None, poll: Callable | None) -> None:
        self.ray = _import_ray()
        self.study, self.space, self.opts, self.ro = study, space, opts, ro
        self.on_trial, self.poll = on_trial, poll
        self.target = study_target(study)
        self.seed = opts.seed if opts.seed is not None else space.sampler.seed
        self.deadline = time.time() + opts.timeout if opts.timeout else None
        # resources in the decorator, not .options(): only then does Ray give each GPU trial a fresh worker
        # process (max_calls=1), so a finished trial's CUDA memory is freed and CUDA_VISIBLE_DEVICES is right
        self.remote = self.ray.remote(num_cpus=ro.cpus_per_trial, num_gpus=ro.gpus_per_trial,
                                      max_retries=0)(run_trial)
        self.pending: dict[Any, _Job] = {}

    def run(self, slots: int) -> None:
        self.beat = Heartbeat(self.study)
        try:
            while True:
                while len(self.pending) < slots and self._wanted():
                    self._submit(self._ask())
                if not self.pending:
                    break
                done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                for ref in done:
                    self._collect(ref, self.pending.pop(ref))
                if self.poll is not None:
                    self.poll(self.study)
        finally:
            self.beat.stop()
            self._abandon()

    def _wanted(self) -> bool:
        if self.deadline and time.time() > self.deadline:
            return False
        return claimed(self.study) < self.target  # running trials (ours included) count, as in engine.py

    def _ask(self) -> _Job:
        # a new trial is created already owned (one storage write), so a driver killed at any point leaves no
        # RUNNING trial without an owner for recover_stale
        trial = next_trial(self.study, self.space, self.seed, self._owner())
        self.space.sample(trial)  # the driver's sampler draws every parameter, in trial order
        return _Job(trial._trial_id, trial.number)

    @staticmethod
    def _owner() -> dict[str, Any]:
        return {"worker": owner(), "heartbeat": time.time()}

    def _owned(self, trial_id: int) -> None:
        """Mark the trial as the driver's until the worker writes its own pid (recover_stale reads both)."""
        for key, value in self._owner().items():
            self.study._storage.set_trial_user_attr(trial_id, key, value)

    def _submit(self, job: _Job) -> None:
        ro = self.ro
        ref = self.remote.options(name=f"trial-{job.number}").remote(
            self.opts, job.trial_id, job.attempt, ro.cpus_per_trial, ro.gpus_per_trial)
        self.pending[ref] = job
        self.beat.ids.add(job.trial_id)

    def _collect(self, ref, job: _Job) -> None:
        try:
            res = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # worker or node died, task lost
            res = {"state": "FAIL", "reason": f"{type(e).__name__}: {str(e).splitlines()[0]}", "retry": True}
        if res["state"] == "STORAGE":  # the trial stays unfinished: re-queued on resume (_abandon, recover_stale)
            self.pending[ref] = job
            raise HybridSearchError(res["reason"])
        if res["state"] == "FAIL" and res.get("retry") and job.attempt <= self.ro.max_retries:
            job.retries.append({"attempt": job.attempt, "reason": res["reason"]})
            self.study._storage.set_trial_user_attr(job.trial_id, "retries", job.retries)
            job.attempt += 1
            self._owned(job.trial_id)
            self._submit(job)
            return
        self.beat.ids.discard(job.trial_id)
        self._tell(job, res)

    def _tell(self, job: _Job, res: dict[str, Any]) -> None:
        storage = self.study._storage
        if res["state"] == "COMPLETE":
            frozen = self.study.tell(job.number, res["values"], skip_if_finished=True)
        elif res["state"] == "PRUNED":
            frozen = self.study.tell(job.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            reason = res.get("reason", "failed")
            if job.attempt > 1:
                reason += f" (after {job.attempt} attempts)"
            if "failure" not in storage.get_trial(job.trial_id).user_attrs or job.attempt > 1:
                with contextlib.suppress(RuntimeError):  # already finished elsewhere
                    storage.set_trial_user_attr(job.trial_id, "failure", reason)
            frozen = self.study.tell(job.number, state=TrialState.FAIL, skip_if_finished=True)
        if self.on_trial is not None:
            self.on_trial(self.study, frozen)

    def _abandon(self) -> None:
        """Interrupted: cancel in-flight tasks, mark their trials FAIL and re-queue them (same parameters); a
        storage that cannot take it leaves them RUNNING, and the next ``recover_stale`` re-queues them."""
        for ref, job in list(self.pending.items()):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                requeue(self.study, job.trial_id, "driver interrupted; re-queued")
        self.pending.clear()


def _portable(opts: RunOptions) -> RunOptions:
    """Absolute paths, so workers with another working directory (or node) open the same files."""

    def absolute(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p and "://" not in p and Path(p).exists() else p

    storage = opts.storage
    if storage is None or "://" not in storage:
        path = (storage or default_storage()).removeprefix("journal:")
        storage = str(Path(path).resolve())
    elif storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = "sqlite:///" + str(Path(storage.removeprefix("sqlite:///")).resolve())
    return dataclasses.replace(opts, storage=storage, space_ref=absolute(opts.space_ref) or opts.space_ref,
                               data_root=absolute(opts.data_root), devices=None)


def run_ray_study(opts: RunOptions, ro: RayOptions | None = None, on_trial: Callable | None = None,
                  poll: Callable | None = None) -> optuna.Study:
    """Create or resume the study, recover trials of dead drivers or workers, run trials on Ray until the
    study has its target number of finished trials (or ``opts.timeout`` passes)."""
    ro = ro or RayOptions()
    ro.validate()
    opts = _portable(opts)
    space = stage_space(opts)
    data = check_data(opts, space)
    # signals after ray.init, which installs its own SIGTERM handler
    with ray_session(ro), signals_as_interrupt(), storage_faults(opts.storage, opts.study):
        slots = _capacity(_import_ray(), ro)  # a cluster too small fails before the study is touched
        study = open_study(opts, space, create=True, data=data)
        recover_stale(study)
        _Driver(study, space, opts, ro, on_trial, poll).run(slots)
    if poll is not None:
        poll(study)
    return study
