"""Running a search: one study, or every stage of a staged space in turn (stage k+1 tunes the methods that stage
k's best trial switched on), on a registered engine. ``run_options`` is the core both the ``run`` / ``resume``
commands and the public ``run_search`` / ``resume_search`` (api.py) stand on."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import optuna

from ..errors import ConfigError, HybridSearchError
from ..registry import Registry
from .final import queue_final
from .results import ARM, best_trials
from .space import load_space
from .startup import queue_last_baselines
from .study import RunOptions, finished, stage_space, study_target


class Monitor(Protocol):
    """Watches one study while it runs (the CLI's progress display)."""

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...

    def poll(self, study: optuna.Study) -> None: ...


# (options of the run, the engine's own options or None, per-trial callback, poll callback) -> the study
Engine = Callable[[RunOptions, Any, Callable | None, Callable | None], optuna.Study]


def _optuna_engine(opts: RunOptions, options: Any, on_trial: Callable | None, poll: Callable | None
                   ) -> optuna.Study:
    from .optuna_engine import run_study

    if options is not None:
        raise ConfigError("the optuna engine takes no engine options (RunOptions.workers / devices size it)")
    return run_study(opts, on_trial=on_trial, poll=poll)


def _ray_engine(opts: RunOptions, options: Any, on_trial: Callable | None, poll: Callable | None) -> optuna.Study:
    """``options``: ``ray_engine.RayOptions`` (None: a local Ray instance with the defaults)."""
    from .ray_engine import run_ray_study

    return run_ray_study(opts, options, on_trial=on_trial, poll=poll)


# optuna: worker processes on this machine; ray: trials as Ray tasks on a cluster (docs/engines.md)
ENGINES: Registry[Engine] = Registry("engine")
ENGINES.register("optuna", _optuna_engine)
ENGINES.register("ray", _ray_engine)


def run_options(opts: RunOptions, *, engine: str = "optuna", engine_options: Any = None, preflight: bool = True,
               monitor: Callable[[RunOptions], AbstractContextManager[Monitor]] | None = None,
               on_study: Callable[[optuna.Study], None] | None = None,
               log: Callable[[str], None] = print) -> optuna.Study:
    """Create or continue the study ``opts.study`` (a staged space: one study per stage, named
    ``STUDY.<stage name>``) and run it to its target number of finished trials; returns the last study.

    ``engine`` is a name in ``ENGINES`` and ``engine_options`` its own options (the ray engine's
    ``ray_engine.RayOptions``); ``preflight`` checks the budget, checkpoint, data and devices before any study is
    created; ``monitor`` is entered around each study's run and ``on_study`` called as each one ends.
    ``opts.stage`` set (a resumed stage) runs that one study only."""
    run_one = ENGINES.get(engine)
    opts.validate()
    space = load_space(opts.space_ref)
    if preflight:
        from .preflight import preflight as check

        check(space, opts.data_root, opts.devices)
    if opts.stage is not None or not space.stages:
        return _run(run_one, opts, engine_options, monitor, on_study, log)
    chosen, study = opts.chosen, None
    for k, st in enumerate(space.stages, 1):
        name = f"{opts.study}.{st.name or f'stage{k}'}"
        log(f"stage {k}/{len(space.stages)}: study {name}" + (f", methods {', '.join(chosen)}" if chosen else ""))
        stage_opts = dataclasses.replace(opts, study=name, stage=k, chosen=chosen, trials=opts.trials or st.trials)
        study = _run(run_one, stage_opts, engine_options, monitor, on_study, log)
        best = best_trials(study)
        if not best:
            raise HybridSearchError(f"stage {k} ({name}) finished without a completed trial; "
                                    f"see hybridsearch show {name}")
        chosen = space.stage_space(k, chosen).selected_methods(best[0].params)
    return study


def _run(run_one: Engine, opts: RunOptions, options: Any, monitor: Callable | None, on_study: Callable | None,
         log: Callable[[str], None] = print) -> optuna.Study:
    """One study to its target, then its ``final`` re-trainings, then its ``single_arm`` studies."""
    space = stage_space(opts)
    with monitor(opts) if monitor is not None else contextlib.nullcontext() as m:
        study = run_one(opts, options, m.on_trial if m else None, m.poll if m else None)
        again = dataclasses.replace(opts, warm_start=None)
        # then the queued phases, each once the one before reached its target (not after a --timeout)
        for phase in (queue_last_baselines, queue_final):
            if finished(study) < study_target(study):
                break
            if queued := phase(study, space):
                log(f"{'baselines' if phase is queue_last_baselines else 'final'}: {queued} trials queued"
                    + (f" (the top {space.final.top_k}, {space.final.seeds} seeds each)"
                       if phase is queue_final else " (each method alone, after the search)"))
            if finished(study) < study_target(study):  # queued now, or left by an interrupted run
                study = run_one(again, options, m.on_trial if m else None, m.poll if m else None)
        if m is not None:
            m.poll(study)
    if on_study is not None:
        on_study(study)
    if space.single_arm is not None and finished(study) >= study_target(study):
        for method in (n for n, ms in space.methods.items() if ms.optional):
            name = f"{opts.study}{ARM}{method}"
            log(f"single-method arm: study {name} ({space.single_arm.trials} trials)")
            arm = dataclasses.replace(opts, study=name, single=method, trials=space.single_arm.trials,
                                      warm_start=None)
            _run(run_one, arm, options, monitor, on_study, log)
        if on_study is not None:  # the study again, now compared with its tuned single methods
            on_study(study)
    return study
