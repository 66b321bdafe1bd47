"""A search space: its sections as frozen dataclasses, sampling a hybrid through an Optuna trial, the two
stages (select methods, then tune them) and the canonical form that identifies a study's space.

Conditional sampling: a method's parameters are suggested only when it is on (``use.<method>``), so
``<method>.<field>`` never appears in a trial where the method is off.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import ConfigError
from ...peft import PeftConfig
from ...tasks import TaskFamily, family_of
from ..samplers import make_pruner, make_sampler
from .checks import MISSING
from .params import CategoricalParam, FixedParam, Param


@dataclass(frozen=True)
class ModelSpace:
    name: str
    checkpoint: str | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class DataSpace:
    kind: str
    tasks: tuple[str, ...]
    root: str | None = None
    train_split: str = "train800"
    val_split: str = "val200"


@dataclass(frozen=True)
class LayerGroup:
    """Layers sharing one rank; ``tie`` reuses an earlier group's rank parameter; rank 0 leaves the group out."""

    layers: Any
    rank: Param | None = None
    tie: int | None = None


@dataclass(frozen=True)
class MethodSpace:
    name: str
    optional: bool = True
    params: dict[str, Param] = field(default_factory=dict)
    layer_groups: tuple[LayerGroup, ...] = ()
    stage1: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    max_trainable: int | None = None
    min_trainable: int | None = None
    include_head: bool = True


@dataclass(frozen=True)
class Stage:
    name: str
    trials: int
    select: bool = False
    tune: bool = False
    drop_one: bool = False


@dataclass(frozen=True)
class Fidelity:
    epochs: int = 10
    min_epochs: int = 1
    max_train_examples: int | None = None
    max_val_examples: int | None = None
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrunerSpec:
    kind: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerSpec:
    kind: str = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FinalSpec:
    """``final``: when the search reaches its target, the ``top_k`` configurations are trained again until each
    has ``seeds`` seeds (its own trial counts as one); results rank them by the mean over seeds."""

    top_k: int = 3
    seeds: int = 3


@dataclass(frozen=True)
class StartupSpec:
    """``startup``: the trials a new study queues after its baselines. ``design``: that many points of a
    scrambled Sobol design over the space (search/space/design.py), instead of the sampler's random draws."""

    design: int = 0


@dataclass(frozen=True)
class SingleArm:
    """``single_arm``: after the search, each optional method alone is tuned in its own study
    (``STUDY.single.<method>``) of ``trials`` trials, so the winner is compared with tuned single methods."""

    trials: int = 4


@dataclass
class SampledConfig:
    """One draw: the hybrid PEFT config, the training recipe (``train.Recipe`` keys) and the suggested values."""

    peft: PeftConfig
    recipe: dict[str, Any]
    params: dict[str, Any]


def base_name(always_on: list[str], has_head: bool = True) -> str | None:
    """The configuration with every optional method off, by name: the always-on methods' (``a+b``), else
    ``head_only`` where the model has a classifier head to train, else None (it would train nothing)."""
    return "+".join(always_on) if always_on else "head_only" if has_head else None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    model: ModelSpace
    data: DataSpace
    methods: dict[str, MethodSpace]
    budget: Budget = Budget()
    objectives: tuple[str, ...] = ("accuracy",)
    stages: tuple[Stage, ...] = ()
    fidelity: Fidelity = Fidelity()
    pruner: PrunerSpec = PrunerSpec()
    sampler: SamplerSpec = SamplerSpec()
    recipe: dict[str, Param] = field(default_factory=dict)
    trials: int = 20
    description: str = ""
    baselines: bool = False
    baselines_last: bool = False  # ``baselines: last``: after the search's own trials, not before them
    final: FinalSpec | None = None
    startup: StartupSpec | None = None
    single_arm: SingleArm | None = None
    # set on the spaces that stage_space() derives
    stage: int | None = None
    chosen: tuple[str, ...] = ()
    drop_one: bool = False

    # ---- sampling
    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if len(self.objectives) > 1 else ["maximize"]

    @property
    def search_tasks(self) -> list[str]:
        """The tasks a trial trains on (``fidelity.tasks``, default every ``data.tasks``)."""
        return list(self.fidelity.tasks or self.data.tasks)

    def sample(self, trial: Any, stage: int | None = None, chosen: list[str] | None = None) -> SampledConfig:
        """Suggest a hybrid through ``trial`` (``optuna.Trial`` or ``FixedTrial``); off methods suggest nothing."""
        space = self if stage is None else self.stage_space(stage, chosen)
        return space._draw(trial, strict=False)

    def fixed_config(self, params: dict[str, Any], stage: int | None = None,
                     chosen: list[str] | None = None) -> SampledConfig:
        """Rebuild a finished trial's config from its ``params`` (export / resume), checking each value."""
        import optuna

        space = self if stage is None else self.stage_space(stage, chosen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return space._draw(optuna.trial.FixedTrial(dict(params)), strict=True)

    def selected_methods(self, params: dict[str, Any]) -> list[str]:
        """The methods a trial switched on (always-on ones included), e.g. the best stage-1 trial's."""
        drop = params.get("drop", "none")
        return [n for n, m in self.methods.items()
                if (not m.optional or params.get(f"use.{n}") is True) and n != drop]

    def baseline_params(self) -> dict[str, dict[str, Any]]:
        """``baselines: true``: the trials queued first in a new study, by name: the base (every optional method
        off: ``head_only``, or named after the always-on methods, e.g. ``additional_scan``, when there are some;
        none for a language model without always-on methods, which would train nothing) and each optional
        method alone, every value at its default or the middle of its range. The leaderboard then compares the
        searched hybrid with the best single method, and with the always-on methods alone, at equal fidelity."""
        if self.stage == 2:  # stage 2 tunes methods that are always on: nothing to switch off
            return {}
        optional = [n for n, m in self.methods.items() if m.optional]
        base = self.base_name()
        out = {}
        for only in ((None,) if base else ()) + tuple(optional):
            def pick(name: str, p: Param, only: str | None = only) -> Any:
                return name == f"use.{only}" if name.startswith("use.") else p.middle()

            out[only or base] = self.pick_config(pick).params
        return out

    def base_name(self) -> str | None:
        """The name of the baseline with every optional method off (see :func:`base_name`)."""
        return base_name([n for n, m in self.methods.items() if not m.optional], self.family.has_head)

    def pick_config(self, pick: Callable[[str, Param], Any]) -> SampledConfig:
        """The configuration whose every sampled value is ``pick(name, param)`` (baselines, designs); names
        follow the conditional order, so a method's values are asked only when its ``use.<method>`` is true."""
        return self._draw(None, strict=False, pick=pick)

    def _draw(self, trial: Any, strict: bool, pick: Callable[[str, Param], Any] | None = None) -> SampledConfig:
        s = _Suggester(trial, strict, self.source, pick)
        drop = s.value("drop", CategoricalParam(("none", *self.methods))) if self.drop_one else "none"
        methods: dict[str, dict[str, Any]] = {}
        for name, ms in self.methods.items():
            if ms.optional and not s.value(f"use.{name}", CategoricalParam((False, True))):
                continue
            if name == drop:
                continue
            settings = self._method_settings(ms, s)
            if settings is not None:
                methods[name] = settings
        recipe = {k: s.value(f"recipe.{k}", p) for k, p in self.recipe.items() if k not in _METHOD_MULTS}
        recipe["epochs"] = self.fidelity.epochs
        peft = PeftConfig.from_dict({"methods": methods}, source=f"{self.source} (sampled)")
        return SampledConfig(peft, recipe, s.params)

    def _method_settings(self, ms: MethodSpace, s: _Suggester) -> dict[str, Any] | None:
        settings = {f: s.value(f"{ms.name}.{f}", p) for f, p in ms.params.items()}
        for key, f in _METHOD_MULTS.items():
            if f not in settings and key in self.recipe:
                settings[f] = s.value(f"{ms.name}.{f}", self.recipe[key])
        if ms.layer_groups:
            ranks: dict[str, int] = {}
            drawn: list[int] = []
            for i, g in enumerate(ms.layer_groups):
                r = drawn[g.tie] if g.tie is not None else s.value(f"{ms.name}.rank.g{i}", g.rank)
                drawn.append(r)
                if r > 0:
                    ranks.update(dict.fromkeys(layer_keys(g.layers), r))
            if not ranks:
                return None  # every group at rank 0: the method is off
            settings["rank"] = ranks
        return settings

    # ---- stages
    def stage_space(self, stage: int, chosen: list[str] | None = None) -> SearchSpace:
        """Stage 1: on/off only, each method at its ``stage1`` settings. Stage 2: the ``chosen`` methods
        (always on) with their full ranges, plus ``drop`` (one of them or ``none``) when ``drop_one``."""
        if not self.stages:
            raise ConfigError(f"{self.source}: stages: this space has no stages; sample it without stage=")
        if isinstance(stage, bool) or stage not in range(1, len(self.stages) + 1):
            allowed = ", ".join(str(i) for i in range(1, len(self.stages) + 1))
            raise ConfigError(f"{self.source}: stages: no stage {stage!r}; allowed: {allowed}")
        st = self.stages[stage - 1]
        return self._select_space(st) if st.select else self._tune_space(st, chosen)

    def _select_space(self, st: Stage) -> SearchSpace:
        methods = {n: MethodSpace(n, m.optional, {f: FixedParam(v) for f, v in stage1_settings(m).items()})
                   for n, m in self.methods.items()}
        recipe = {k: FixedParam(p.resolved) for k, p in self.recipe.items()}
        return replace(self, methods=methods, recipe=recipe, stages=(), trials=st.trials, stage=1)

    def _tune_space(self, st: Stage, chosen: list[str] | None) -> SearchSpace:
        where = f"{self.source}: stage 2 (chosen methods)"
        if not chosen or not isinstance(chosen, (list, tuple)):
            raise ConfigError(f"{where}: pass the methods the best stage-1 trial switched on (a non-empty list)")
        unknown = [c for c in chosen if c not in self.methods]
        if unknown:
            raise ConfigError(f"{where}: {', '.join(map(str, unknown))} not in this space; "
                              f"allowed: {', '.join(self.methods)}")
        methods = {n: replace(m, optional=False) for n, m in self.methods.items() if n in chosen}
        return replace(self, methods=methods, stages=(), trials=st.trials, stage=2, chosen=tuple(methods),
                       drop_one=st.drop_one and len(methods) > 1)

    def single_space(self, method: str) -> SearchSpace:
        """The single-method arm of ``method``: it alone (with the always-on methods), always on, its values and
        the recipe searched as in this space; no baselines, start-up design or arm of its own."""
        if method not in self.methods or not self.methods[method].optional:
            allowed = ", ".join(n for n, m in self.methods.items() if m.optional)
            raise ConfigError(f"{self.source}: single_arm: {method!r} is not an optional method; allowed: {allowed}")
        methods = {n: (replace(m, optional=False) if n == method else m) for n, m in self.methods.items()
                   if n == method or not m.optional}
        return replace(self, methods=methods, baselines=False, baselines_last=False, startup=None, single_arm=None,
                       final=None if self.final is None else replace(self.final, top_k=1))

    # ---- optuna objects and the task family
    def make_sampler(self, seed: int | None = None) -> Any:
        """The space's sampler; ``seed`` overrides the space's seed (e.g. seed + worker index)."""
        return make_sampler(self.sampler.kind, self.sampler.seed if seed is None else seed, self.sampler.options)

    def make_pruner(self) -> Any:
        return make_pruner(self.pruner.kind, self.pruner.options)

    @property
    def family(self) -> TaskFamily:
        """The task family of ``data.kind`` (how data loads, models build and trials train)."""
        return family_of(self.data.kind)

    # ---- models and counting
    def num_classes(self) -> int | None:
        """Classifier size for counting: ``model.num_classes`` or the largest search task's (None for an LM)."""
        if self.model.num_classes is not None or not self.family.has_head:
            return self.model.num_classes
        sizes = [n for n in (self.family.task_classes(self.data.kind, t) for t in self.search_tasks) if n]
        return max(sizes) if sizes else None

    def model_config(self) -> Any:
        from ...models import model_config

        return model_config(self.model.name, self.num_classes())

    # ---- export
    def to_dict(self) -> dict[str, Any]:
        """The normalized space (every default filled in); ``space_from_dict`` reads it back."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "model": dataclasses.asdict(self.model),
            "data": {**dataclasses.asdict(self.data), "tasks": list(self.data.tasks)},
            "objectives": list(self.objectives),
            "trials": self.trials,
            "budget": dataclasses.asdict(self.budget),
            "fidelity": {**dataclasses.asdict(self.fidelity), "tasks": list(self.fidelity.tasks) or None},
            "pruner": {"kind": self.pruner.kind, **self.pruner.options},
            "sampler": {"kind": self.sampler.kind, "seed": self.sampler.seed, **self.sampler.options},
            "recipe": {k: p.to_yaml() for k, p in self.recipe.items()},
            "methods": {n: _method_dict(m) for n, m in self.methods.items()},
        }
        if self.stages:
            d["stages"] = [stage_dict(s) for s in self.stages]
        if self.baselines:  # only when set: existing studies keep their space hash
            d["baselines"] = "last" if self.baselines_last else True
        for key in ("final", "startup", "single_arm"):  # the same
            if (section := getattr(self, key)) is not None:
                d[key] = dataclasses.asdict(section)
        return d

    def space_hash(self) -> str:
        """sha256 of the canonical space (name, description and file location excluded)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        if self.stage is not None:
            d["_stage"] = {"stage": self.stage, "chosen": list(self.chosen), "drop_one": self.drop_one}
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()


_METHOD_MULTS = {"method_lr_mult": "lr_mult", "method_decay_mult": "decay_mult"}


def _method_dict(m: MethodSpace) -> dict[str, Any]:
    d: dict[str, Any] = {"optional": m.optional, "params": {f: p.to_yaml() for f, p in m.params.items()}}
    if m.layer_groups:
        d["layer_groups"] = [{"layers": g.layers, **({"rank": g.rank.to_yaml()} if g.rank else {}),
                              **({"tie": g.tie} if g.tie is not None else {})} for g in m.layer_groups]
    if m.stage1:
        d["stage1"] = dict(m.stage1)
    return d


def stage_dict(s: Stage) -> dict[str, Any]:
    d: dict[str, Any] = {"name": s.name, "trials": s.trials}
    d.update({"select": True} if s.select else {"tune": True, "drop_one": s.drop_one})
    return d


def stage1_settings(m: MethodSpace) -> dict[str, Any]:
    """A method's stage-1 settings: fixed params and params' ``default`` overridden by ``stage1``."""
    out = {f: p.resolved for f, p in m.params.items() if p.resolved is not MISSING}
    return {**out, **copy.deepcopy(m.stage1)}


def _canon(obj: Any) -> Any:
    """JSON-able with string keys (a rank mapping may mix int and str keys)."""
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(_canon(obj), sort_keys=True, separators=(",", ":"), default=str)


def layer_keys(spec: Any) -> list[str]:
    """A layer spec as ``rank`` mapping keys (``"a-b"`` strings or single indices)."""
    items = spec if isinstance(spec, list) else [spec]
    return [str(i) for i in items]


class _Suggester:
    """Suggests each named value once (a tied name reuses its value) and records what was suggested."""

    def __init__(self, trial: Any, strict: bool, source: str,
                 pick: Callable[[str, Param], Any] | None = None) -> None:
        self.trial, self.strict, self.source, self.pick = trial, strict, source, pick
        self.params: dict[str, Any] = {}

    def value(self, name: str, p: Param) -> Any:
        if isinstance(p, FixedParam):
            return p.resolved
        if name in self.params:
            return self.params[name]
        try:
            v = p.suggest(self.trial, name) if self.pick is None else self.pick(name, p)
        except ValueError as e:  # FixedTrial without this name
            raise ConfigError(f"{self.source}: params: missing {name!r} ({p.describe()}): {e}") from None
        if self.strict and not p.contains(v):
            raise ConfigError(f"{self.source}: params.{name}: {v!r} is outside {p.describe()}")
        self.params[name] = v
        return v
