"""How a new study starts: the trials it queues before its sampler draws anything (baselines, the best
configurations of another study, a space-filling design), and the baselines of ``baselines: last``, queued once
the search's own trials are done. The real engines (through ``study.open_study`` and ``run.py``) and the simulator
(``simulate.py``) queue through here, so a simulated study starts as a real one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..errors import ConfigError
from .space import SearchSpace

WARM_TOP = 4  # configurations a warm start takes from the other study when the space asks for no design


def queue_startup(study: optuna.Study, space: SearchSpace, seed: int | None = 0,
                  warm: list[FrozenTrial] | None = None, within: Callable[[dict], bool] | None = None) -> None:
    """A new study's first trials, queued; they count toward the target, and TPE learns from them as from its own
    start-up trials (so none of them repeats a random draw):

    1. with ``baselines: true``, head-only and each method alone (space.baseline_params);
    2. with ``warm`` (``--warm-start STUDY``: its completed trials, best first), the best configurations of that
       study that this space can run: ``startup.design`` of them, else ``WARM_TOP``;
    3. with ``startup.design``, the rest of that many points of a Sobol design seeded with ``seed``.

    ``within``: the budget check of a design point (default: exact counts). The simulator (search/simulate.py)
    queues through here too, so it runs what a real study runs."""
    if study.get_trials(deepcopy=False):
        return
    queued: list[dict[str, Any]] = []
    if space.baselines_last:  # queued by queue_last_baselines once the search's own trials are done
        study.set_user_attr("baselines_last", len(space.baseline_params()))
    elif space.baselines:
        for name, params in space.baseline_params().items():
            study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)
            queued.append(params)
    design = space.startup.design if space.startup else 0
    for t, params in _fitting(space, warm or [], design or WARM_TOP):
        study.enqueue_trial(params, user_attrs={"warm_start": t.number}, skip_if_exists=False)
        queued.append(params)
        design -= 1
    if design > 0:
        from .space.design import sobol_design

        for params in sobol_design(space, design, seed or 0, exclude=queued, within=within):
            study.enqueue_trial(params, user_attrs={"design": True}, skip_if_exists=False)


def queue_last_baselines(study: optuna.Study, space: SearchSpace) -> int:
    """``baselines: last``: queue the baselines once the search's own trials are done (they measure the winner
    against each method alone without delaying the search); returns how many were queued (0: none pending)."""
    if not space.baselines_last or any("baseline" in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return 0
    baselines = space.baseline_params()
    for name, params in baselines.items():
        study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)
    return len(baselines)


def warm_trials(storage: Any, name: str) -> list[FrozenTrial]:
    """The completed trials of study ``name`` (``--warm-start``), best first; refused before anything is written
    when the study is not in this storage or has no completed trial."""
    from .results import ranked_trials

    try:
        other = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"--warm-start {name!r}: no such study in this storage; it must be a finished study "
                          "of the same storage (hybridsearch show lists a study's trials)") from None
    best = ranked_trials(other)
    if not best:
        raise ConfigError(f"--warm-start {name!r}: the study has no completed trial to start from")
    return best


def _fitting(space: SearchSpace, trials: list[FrozenTrial], n: int) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    """The first ``n`` of ``trials`` whose configuration this space can run: every parameter it samples is there
    and within its range (a study of another task, of the same or an overlapping space)."""
    out: list[tuple[FrozenTrial, dict[str, Any]]] = []
    for t in trials:
        if len(out) >= n:
            break
        try:
            params = space.fixed_config(t.params).params
        except ConfigError:
            continue
        if params not in [p for _, p in out]:
            out.append((t, params))
    return out
