"""Optuna samplers and pruners by the names a space's ``sampler.kind`` / ``pruner.kind`` use (registries: a new
one is one ``register`` call). Each entry lists its options with their defaults, which the space loader checks,
and builds the Optuna object. Pruners measure resource in epochs trained so far, summed over the search tasks
(the objective's report steps), so their defaults come from the space's fidelity."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry


@dataclass(frozen=True)
class SamplerKind:
    options: dict[str, Any]  # option -> default; a bool default makes a bool option, an int one an int >= low
    build: Callable[[int | None, dict[str, Any]], Any]  # (seed, options) -> optuna sampler
    lows: dict[str, int] | None = None  # smallest allowed int options (default 0)


@dataclass(frozen=True)
class PrunerKind:
    options: tuple[str, ...]  # which of PRUNER_DEFAULTS it takes
    build: Callable[..., Any]  # **options -> optuna pruner


def _tpe(seed: int | None, o: dict[str, Any]) -> Any:
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, **o)


def _random(seed: int | None, o: dict[str, Any]) -> Any:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _nsga2(seed: int | None, o: dict[str, Any]) -> Any:
    from optuna.samplers import NSGAIISampler

    return NSGAIISampler(seed=seed, **o)


def _gp(seed: int | None, o: dict[str, Any]) -> Any:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed, warn_independent_sampling=False, **o)


SAMPLERS: Registry[SamplerKind] = Registry("sampler")
SAMPLERS.register("tpe", SamplerKind(
    {"multivariate": True, "group": True, "n_startup_trials": 10, "constant_liar": False}, _tpe))
SAMPLERS.register("random", SamplerKind({}, _random))
SAMPLERS.register("nsga2", SamplerKind({"population_size": 50}, _nsga2, {"population_size": 2}))
SAMPLERS.register("gp", SamplerKind({"n_startup_trials": 10}, _gp))


def _pruner(name: str) -> Callable[..., Any]:
    def build(**options: Any) -> Any:
        from optuna import pruners

        return getattr(pruners, name)(**options)

    return build


PRUNERS: Registry[PrunerKind] = Registry("pruner")
PRUNERS.register("hyperband", PrunerKind(("min_resource", "max_resource", "reduction_factor"),
                                         _pruner("HyperbandPruner")))
PRUNERS.register("successive_halving", PrunerKind(("min_resource", "reduction_factor", "min_early_stopping_rate"),
                                                  _pruner("SuccessiveHalvingPruner")))
PRUNERS.register("median", PrunerKind(("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
                                      _pruner("MedianPruner")))
PRUNERS.register("none", PrunerKind((), _pruner("NopPruner")))

# smallest allowed value of each pruner option (default 1)
PRUNER_LOWS = {"reduction_factor": 2, "min_early_stopping_rate": 0, "n_startup_trials": 0, "n_warmup_steps": 0}


def pruner_defaults(kind: str, min_epochs: int, max_resource: int) -> dict[str, int]:
    """Defaults of every pruner option: one epoch of one task is one resource unit."""
    return {"min_resource": min_epochs, "max_resource": max_resource,
            "reduction_factor": 3 if kind == "hyperband" else 4, "min_early_stopping_rate": 0,
            "n_startup_trials": 5, "n_warmup_steps": min_epochs, "interval_steps": 1, "n_min_trials": 1}


def make_sampler(kind: str, seed: int | None, options: dict[str, Any]) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS.get(kind).build(seed, dict(options))


def make_pruner(kind: str, options: dict[str, Any]) -> Any:
    return PRUNERS.get(kind).build(**options)
