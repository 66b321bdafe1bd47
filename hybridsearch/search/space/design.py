"""Space-filling designs: points of a scrambled Sobol sequence in the unit cube of every value a trial can
sample, mapped onto the conditional space with the distributions random search draws from (``Param.from_unit``).

Independent random draws leave gaps and repeats in a few dozen trials (and are the very draws random search
makes); n Sobol points switch each method on about n/2 times and cover each range evenly. Used for the recorded
benchmark table (benchmarks/search_table/) and for a search's start-up trials, queued like the baselines.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ...errors import ConfigError
from .budget import check_budget
from .params import Param
from .schema import SampledConfig, SearchSpace, canonical_json

_BATCH = 64  # Sobol points are drawn in powers of two (their balance properties hold for 2^k points)


def dimensions(space: SearchSpace) -> dict[str, Param]:
    """Every value a trial of ``space`` can sample, by parameter name, in the order a trial asks them (each
    optional method switched on, so its own values are listed too)."""
    names: dict[str, Param] = {}

    def pick(name: str, p: Param) -> Any:
        names[name] = p
        return True if name.startswith("use.") else p.middle()

    space.pick_config(pick)
    return names


def config_at(space: SearchSpace, unit: Mapping[str, float]) -> SampledConfig:
    """The configuration at a point of the unit cube (``unit``: a coordinate for every name of ``dimensions``)."""
    return space.pick_config(lambda name, p: p.from_unit(unit[name]))


def sobol_design(space: SearchSpace, n: int, seed: int = 0, *, within_budget: bool = True,
                 exclude: Iterable[Mapping[str, Any]] = (), skip: int = 0,
                 within: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """``n`` distinct trial parameter sets from a scrambled Sobol sequence seeded with ``seed``: within the
    space's budget unless ``within_budget`` is false (``within(peft methods)``, default exact counts), none equal
    to a set in ``exclude`` (e.g. the baselines), after the first ``skip`` accepted ones."""
    from scipy.stats import qmc

    names = list(dimensions(space))
    if not names:
        return []
    sobol = qmc.Sobol(len(names), scramble=True, seed=seed)
    seen = {canonical_json(dict(p)) for p in exclude}
    out: list[dict[str, Any]] = []
    accepted = drawn = 0
    while len(out) < n:
        if drawn > 64 * (n + skip) + 4096:
            raise ConfigError(f"{space.source}: budget: only {accepted} of {drawn} design points are within the "
                              f"budget and distinct; widen budget or ask for fewer than {n + skip}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a batch of 2^k points keeps the balance; scipy warns per call
            points = sobol.random(_BATCH)
        drawn += _BATCH
        for u in points:
            cfg = config_at(space, dict(zip(names, u.tolist())))
            key = canonical_json(cfg.params)
            if key in seen or (within_budget and not _within(space, cfg, within)):
                continue
            seen.add(key)
            accepted += 1
            if accepted > skip and len(out) < n:
                out.append(cfg.params)
    return out


def _within(space: SearchSpace, cfg: SampledConfig, within: Callable[[dict[str, Any]], bool] | None) -> bool:
    return check_budget(space, cfg.peft)[0] if within is None else within(cfg.peft.to_dict()["methods"])
