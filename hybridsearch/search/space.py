"""Search spaces: the YAML format (see ``search_spaces/README.md``), its loader and checks, and sampling a
space into a hybrid PEFT config with the Optuna define-by-run API.

A value in a space is a ``Param``: a scalar is fixed, a list is categorical, and a mapping names its kind::

    rank: 8                              # fixed
    placement: [prefix, prefix_suffix]   # categorical
    rank: {int: [4, 16], step: 4}        # int (step, log, default optional)
    scale: {log: [0.01, 1]}              # float, log-uniform (== {float: [0.01, 1], log: true})
    dropout: {float: [0.0, 0.2]}         # float (step, log, default optional)
    layers: {fixed: [0, 1, 2]}           # fixed list / mapping value

Conditional sampling: a method's parameters are suggested only when it is on (``use.<method>``), so
``<method>.<field>`` never appears in a trial where the method is off.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, HybridSearchError
from ..peft.config import PeftConfig, parse_layers
from ..peft.methods import METHODS

BUNDLED_PACKAGE = "hybridsearch.search_spaces"
DATA_KINDS = ("vtab", "mini_vtab", "commonsense")
OBJECTIVES = ("accuracy", "params")
PRUNERS = ("hyperband", "successive_halving", "median", "none")
SAMPLERS = ("tpe", "random", "nsga2", "gp")
PARAM_KINDS = ("int", "float", "log", "choices", "fixed")
_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# -- errors ---------------------------------------------------------------------------------------------------
class SpaceError(ConfigError):
    """Every problem found in a space; ``errors`` holds one ``file: key.path: problem; allowed ...`` each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        more = f" (+{len(errors) - 1} more; `hybridsearch validate` lists them all)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.errors,))


class _Errors:
    """Collects errors instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []
        self.seen: set[tuple[str, str]] = set()

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}")


def _join(path: str, key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _show(v: Any) -> str:
    kind = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping"}.get(type(v), type(v).__name__)
    return f"{v!r} ({kind})" if not isinstance(v, (list, dict)) else kind


# -- scalar checks: (value) -> (normalized value, error or None) ------------------------------------------------
Check = Callable[[Any], tuple[Any, "str | None"]]


def _as_number(v: Any) -> float | int | None:
    """A finite int/float; numeric strings too (PyYAML reads ``1e-3`` as a string)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):
        v = float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None


def c_int(lo: int | None = None, null: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if v is None and null:
            return v, None
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"must be an integer{' or null' if null else ''}, got {_show(v)}"
        if lo is not None and v < lo:
            return v, f"must be >= {lo}, got {v}"
        return v, None

    return check


def c_float(lo: float | None = None, open_lo: bool = False, null: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if v is None and null:
            return v, None
        n = _as_number(v)
        want = f"a number{'' if lo is None else (' > ' if open_lo else ' >= ') + str(lo)}{' or null' if null else ''}"
        if n is None or (lo is not None and (n < lo or (open_lo and n == lo))):
            return v, f"must be {want}, got {_show(v)}"
        return n, None

    return check


def c_choice(*allowed: Any) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        ok = any(v == a and type(v) is type(a) for a in allowed)
        return v, None if ok else f"{_show(v)} is not allowed; allowed: {', '.join(map(str, allowed))}"

    return check


def c_bool() -> Check:
    return c_choice(True, False)


def c_str(null: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if (v is None and null) or (isinstance(v, str) and v.strip()):
            return v, None
        return v, f"must be a non-empty string{' or null' if null else ''}, got {_show(v)}"

    return check


def _mapping(raw: Any, path: str, errs: _Errors, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """``raw`` as a dict restricted to ``allowed`` keys; unknown and missing keys are errors."""
    allowed = tuple(allowed)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errs.add(path, f"expected a mapping with keys {', '.join(allowed)}, got {_show(raw)}")
        raw = {}
    for k in raw:
        if k not in allowed:
            errs.add(_join(path, k), f"unknown key; allowed: {', '.join(allowed)}")
    for k in required:
        if k not in raw:
            errs.add(_join(path, k), "required key is missing")
    return {k: v for k, v in raw.items() if k in allowed}


def _get(d: dict, key: str, path: str, errs: _Errors, check: Check, default: Any = None) -> Any:
    if key not in d:
        return default
    v, msg = check(d[key])
    if msg:
        errs.add(_join(path, key), msg)
        return default
    return v


# -- parameters -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A value of the space: sampled (int / float / categorical) or fixed."""

    def suggest(self, trial: Any, name: str) -> Any:
        raise NotImplementedError

    def contains(self, v: Any) -> bool:
        raise NotImplementedError

    def candidates(self) -> tuple[Any, ...]:
        """Values that bound the parameter count: (low, high), every choice, or the fixed value."""
        raise NotImplementedError

    @property
    def resolved(self) -> Any:
        """The value when not sampled (fixed value or ``default``); ``_MISSING`` if none."""
        return getattr(self, "default", _MISSING)

    def middle(self) -> Any:
        """A typical value for the baseline trials: the ``default``, else the middle of the range."""
        return self.resolved

    def to_yaml(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _with_default(d: dict, default: Any) -> dict:
    return d if default is _MISSING else {**d, "default": default}


@dataclass(frozen=True)
class IntParam(Param):
    low: int
    high: int
    step: int = 1
    log: bool = False
    default: Any = _MISSING

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def middle(self) -> int:
        if self.default is not _MISSING:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + self.step * math.floor((mid - self.low) / self.step + 0.5)  # half up

    def contains(self, v: Any) -> bool:
        ok = isinstance(v, int) and not isinstance(v, bool)
        return ok and self.low <= v <= self.high and (v - self.low) % self.step == 0

    def candidates(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def to_yaml(self) -> Any:
        d: dict[str, Any] = {"int": [self.low, self.high]}
        if self.step != 1:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return _with_default(d, self.default)

    def describe(self) -> str:
        return f"int {self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "") + \
            (" log" if self.log else "")


@dataclass(frozen=True)
class FloatParam(Param):
    low: float
    high: float
    step: float | None = None
    log: bool = False
    default: Any = _MISSING

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def middle(self) -> float:
        if self.default is not _MISSING:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return mid if self.step is None else self.low + self.step * math.floor((mid - self.low) / self.step + 0.5)

    def contains(self, v: Any) -> bool:
        n = _as_number(v)
        return n is not None and self.low - 1e-12 <= n <= self.high + 1e-12

    def candidates(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def to_yaml(self) -> Any:
        d: dict[str, Any] = {"log": [self.low, self.high]} if self.log else {"float": [self.low, self.high]}
        if self.step is not None:
            d["step"] = self.step
        return _with_default(d, self.default)

    def describe(self) -> str:
        return f"{'log' if self.log else 'float'} {self.low:g}..{self.high:g}" + \
            (f" step {self.step:g}" if self.step is not None else "")


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (Python's True == 1)."""
    return a == b and (isinstance(a, bool) == isinstance(b, bool))


@dataclass(frozen=True)
class CategoricalParam(Param):
    choices: tuple[Any, ...]
    default: Any = _MISSING

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def middle(self) -> Any:
        return self.choices[0] if self.default is _MISSING else self.default

    def contains(self, v: Any) -> bool:
        return any(_same(v, c) for c in self.choices)

    def candidates(self) -> tuple[Any, ...]:
        return self.choices

    def to_yaml(self) -> Any:
        return list(self.choices) if self.default is _MISSING else {"choices": list(self.choices),
                                                                    "default": self.default}

    def describe(self) -> str:
        return "[" + ", ".join(map(str, self.choices)) + "]"


@dataclass(frozen=True)
class FixedParam(Param):
    value: Any

    def suggest(self, trial: Any, name: str) -> Any:
        return copy.deepcopy(self.value)

    def contains(self, v: Any) -> bool:
        return _same(v, self.value)

    def candidates(self) -> tuple[Any, ...]:
        return (self.value,)

    @property
    def resolved(self) -> Any:
        return copy.deepcopy(self.value)

    def to_yaml(self) -> Any:
        return {"fixed": self.value} if isinstance(self.value, (list, dict)) else self.value

    def describe(self) -> str:
        return f"= {self.value}"


_CHOICE_TYPES = (type(None), bool, int, float, str)
_MODIFIERS = {"int": ("step", "log", "default"), "float": ("step", "log", "default"), "log": ("default",),
              "choices": ("default",), "fixed": ()}


def parse_param(raw: Any, path: str, errs: _Errors, check: Check) -> Param | None:
    """A scalar (fixed), a list (categorical) or a mapping with one kind key; ``check`` validates each value."""
    n0 = len(errs.items)
    if isinstance(raw, list):
        p: Param | None = _categorical(raw, _MISSING, path, errs, check)
    elif isinstance(raw, dict):
        p = _param_mapping(raw, path, errs, check)
    else:
        v, msg = check(raw)
        if msg:
            errs.add(path, msg)
        p = FixedParam(v)
    return p if len(errs.items) == n0 else None


def _param_mapping(raw: dict, path: str, errs: _Errors, check: Check) -> Param | None:
    kinds = [k for k in raw if k in PARAM_KINDS and not (k == "log" and isinstance(raw[k], bool))]
    if len(kinds) != 1:
        got = f"got {', '.join(map(str, kinds))}" if kinds else f"got keys {', '.join(map(str, raw)) or 'none'}"
        errs.add(path, f"a parameter mapping needs exactly one of {', '.join(PARAM_KINDS)} ({got}); "
                       "write a scalar for a fixed value or a list for choices")
        return None
    kind = kinds[0]
    d = _mapping(raw, path, errs, (kind, *_MODIFIERS[kind]))
    default = d.get("default", _MISSING)
    if kind == "fixed":
        v, msg = check(d["fixed"])
        if msg:
            errs.add(_join(path, "fixed"), msg)
        return FixedParam(v)
    if kind == "choices":
        if not isinstance(d["choices"], list):
            errs.add(_join(path, "choices"), f"must be a list, got {_show(d['choices'])}")
            return None
        return _categorical(d["choices"], default, _join(path, "choices"), errs, check)
    return _range(kind, d, default, path, errs, check)


def _categorical(raw: list, default: Any, path: str, errs: _Errors, check: Check) -> Param | None:
    if not raw:
        errs.add(path, "an empty list of choices; give at least one")
        return None
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, _CHOICE_TYPES):
            errs.add(_join(path, i), f"choices must be null, bool, int, float or string, got {_show(c)}; "
                                     "use {fixed: ...} for a list or mapping value")
            continue
        v, msg = check(c)
        if msg:
            errs.add(_join(path, i), msg)
        elif any(_same(v, o) for o in out):
            errs.add(_join(path, i), f"duplicate choice {v!r}")
        else:
            out.append(v)
    p = CategoricalParam(tuple(out), default)
    if default is not _MISSING and not p.contains(default):
        errs.add(path, f"default {default!r} is not one of the choices {p.describe()}")
    return p


def _range(kind: str, d: dict, default: Any, path: str, errs: _Errors, check: Check) -> Param | None:
    where = _join(path, kind)
    bounds = d[kind]
    is_int = kind == "int"
    if not (isinstance(bounds, list) and len(bounds) == 2):
        errs.add(where, f"expected [low, high], got {_show(bounds)}")
        return None
    lo, hi = (b if is_int else _as_number(b) for b in bounds)
    if is_int and any(isinstance(b, bool) or not isinstance(b, int) for b in (lo, hi)):
        errs.add(where, f"int bounds must be integers, got {bounds!r}")
        return None
    if lo is None or hi is None:
        errs.add(where, f"bounds must be finite numbers, got {bounds!r}")
        return None
    if lo > hi:
        errs.add(where, f"low {lo} > high {hi} (min > max)")
        return None
    log = kind == "log" or d.get("log", False)
    if not isinstance(log, bool):
        errs.add(_join(path, "log"), f"must be true or false, got {_show(log)}")
        return None
    step = _step(d, is_int, log, lo, hi, path, errs)
    if step is _MISSING:
        return None
    if log and lo <= 0:
        errs.add(where, f"a log range needs low > 0, got {lo}")
        return None
    for v in (lo, hi):
        _, msg = check(v)
        if msg:
            errs.add(where, f"{'low' if v == lo else 'high'} {v}: {msg}")
    p = IntParam(lo, hi, step or 1, log, default) if is_int else FloatParam(float(lo), float(hi), step, log, default)
    if default is not _MISSING:
        if not is_int:
            default = _as_number(default)
            p = replace(p, default=default)
        if not p.contains(default):
            errs.add(_join(path, "default"), f"{d['default']!r} is outside {p.describe()}")
    return p


def _step(d: dict, is_int: bool, log: bool, lo: float, hi: float, path: str, errs: _Errors) -> Any:
    if "step" not in d or d["step"] is None:
        return None
    where = _join(path, "step")
    step = d["step"] if is_int else _as_number(d["step"])
    if is_int and (isinstance(step, bool) or not isinstance(step, int)):
        step = None
    if step is None or step <= 0:
        errs.add(where, f"must be a positive {'integer' if is_int else 'number'}, got {_show(d['step'])}")
        return _MISSING
    if log and step != 1:
        errs.add(where, "a log range cannot have a step (Optuna samples log ranges continuously)")
        return _MISSING
    q = (hi - lo) / step
    if abs(q - round(q)) > 1e-9:
        errs.add(where, f"high - low ({hi - lo:g}) must be a multiple of step {step:g}")
        return _MISSING
    return step


# -- the space ------------------------------------------------------------------------------------------------
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


@dataclass
class SampledConfig:
    """One draw: the hybrid PEFT config, the training recipe (``train.Recipe`` keys) and the suggested values."""

    peft: PeftConfig
    recipe: dict[str, Any]
    params: dict[str, Any]


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
        """``baselines: true``: the trials queued first in a new study, by name: ``head_only`` (every optional
        method off; not for language models) and each optional method alone, every value at its default or the
        middle of its range. The leaderboard then compares the searched hybrid with the best single method at
        equal fidelity."""
        if self.stage == 2:  # stage 2 tunes methods that are always on: nothing to switch off
            return {}
        optional = [n for n, m in self.methods.items() if m.optional]
        # a language model has no classifier head: with every method off nothing would train
        head_only = () if self.data.kind == "commonsense" else (None,)
        out = {}
        for only in (*head_only, *optional):
            def pick(name: str, p: Param, only: str | None = only) -> Any:
                return name == f"use.{only}" if name.startswith("use.") else p.middle()

            out[only or "head_only"] = self._draw(None, strict=False, pick=pick).params
        return out

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
                    ranks.update(dict.fromkeys(_layer_keys(g.layers), r))
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

    # ---- optuna objects
    def make_sampler(self, seed: int | None = None) -> Any:
        """The space's sampler; ``seed`` overrides the space's seed (e.g. seed + worker index)."""
        import optuna
        from optuna import samplers

        sp, o = self.sampler, self.sampler.options
        seed = sp.seed if seed is None else seed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if sp.kind == "tpe":
                return samplers.TPESampler(seed=seed, multivariate=o["multivariate"], group=o["group"],
                                           n_startup_trials=o["n_startup_trials"],
                                           constant_liar=o["constant_liar"])
            if sp.kind == "gp":
                return samplers.GPSampler(seed=seed, n_startup_trials=o["n_startup_trials"],
                                          warn_independent_sampling=False)
            if sp.kind == "nsga2":
                return samplers.NSGAIISampler(seed=seed, population_size=o["population_size"])
            return samplers.RandomSampler(seed=seed)

    def make_pruner(self) -> Any:
        """Resource = epochs trained so far, summed over the search tasks (the objective's report steps)."""
        from optuna import pruners

        kind, o = self.pruner.kind, self.pruner.options
        if kind == "hyperband":
            return pruners.HyperbandPruner(**o)
        if kind == "successive_halving":
            return pruners.SuccessiveHalvingPruner(**o)
        if kind == "median":
            return pruners.MedianPruner(**o)
        return pruners.NopPruner()

    # ---- models and counting
    def num_classes(self) -> int | None:
        """Classifier size for counting: ``model.num_classes`` or the largest search task's (None for an LM)."""
        if self.model.num_classes is not None or self.data.kind == "commonsense":
            return self.model.num_classes
        sizes = [n for n in (_task_classes(self.data.kind, t) for t in self.search_tasks) if n]
        return max(sizes) if sizes else None

    def model_config(self) -> Any:
        from ..models import model_config

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
            d["stages"] = [_stage_dict(s) for s in self.stages]
        if self.baselines:  # only when set: existing studies keep their space hash
            d["baselines"] = True
        return d

    def space_hash(self) -> str:
        """sha256 of the canonical space (name, description and file location excluded)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        if self.stage is not None:
            d["_stage"] = {"stage": self.stage, "chosen": list(self.chosen), "drop_one": self.drop_one}
        return hashlib.sha256(_canonical_json(d).encode()).hexdigest()


_METHOD_MULTS = {"method_lr_mult": "lr_mult", "method_decay_mult": "decay_mult"}


def _method_dict(m: MethodSpace) -> dict[str, Any]:
    d: dict[str, Any] = {"optional": m.optional, "params": {f: p.to_yaml() for f, p in m.params.items()}}
    if m.layer_groups:
        d["layer_groups"] = [{"layers": g.layers, **({"rank": g.rank.to_yaml()} if g.rank else {}),
                              **({"tie": g.tie} if g.tie is not None else {})} for g in m.layer_groups]
    if m.stage1:
        d["stage1"] = dict(m.stage1)
    return d


def _stage_dict(s: Stage) -> dict[str, Any]:
    d: dict[str, Any] = {"name": s.name, "trials": s.trials}
    d.update({"select": True} if s.select else {"tune": True, "drop_one": s.drop_one})
    return d


def stage1_settings(m: MethodSpace) -> dict[str, Any]:
    """A method's stage-1 settings: fixed params and params' ``default`` overridden by ``stage1``."""
    out = {f: p.resolved for f, p in m.params.items() if p.resolved is not _MISSING}
    return {**out, **copy.deepcopy(m.stage1)}


def _canon(obj: Any) -> Any:
    """JSON-able with string keys (a rank mapping may mix int and str keys)."""
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    return obj


def _canonical_json(obj: Any) -> str:
    return json.dumps(_canon(obj), sort_keys=True, separators=(",", ":"), default=str)


def _layer_keys(spec: Any) -> list[str]:
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


# -- loading --------------------------------------------------------------------------------------------------
_TOP = ("name", "description", "model", "data", "methods", "budget", "objectives", "stages", "fidelity",
        "pruner", "sampler", "recipe", "trials", "baselines")


def bundled_spaces() -> list[str]:
    """Names of the search spaces shipped with the package."""
    root = resources.files(BUNDLED_PACKAGE)
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def _resolve(ref: str | Path) -> tuple[Any, str]:
    """(readable file, name for messages): an existing path, else a bundled space by name."""
    path = Path(ref)
    if path.is_file():
        return path, str(ref)
    name = str(ref)
    if "/" not in name and "\\" not in name:
        fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        bundled = resources.files(BUNDLED_PACKAGE) / fname
        if bundled.is_file():
            return bundled, fname
    raise ConfigError(f"{ref}: no such search space file; bundled spaces: {', '.join(bundled_spaces())}")


def load_space(ref: str | Path) -> SearchSpace:
    """Load and check a space: a path, or a bundled name (``mini_vtab`` / ``mini_vtab.yaml``)."""
    file, label = _resolve(ref)
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as e:
        raise ConfigError(f"{label}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not a text file (UTF-8 YAML expected)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{label}: malformed YAML{at}: {getattr(e, 'problem', None) or e}") from None
    stem = label.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return space_from_dict(data, source=label, default_name=stem, location=str(file))


def space_from_dict(data: Any, source: str = "<dict>", default_name: str = "space",
                    location: str | None = None) -> SearchSpace:
    """Build a space from parsed YAML; every problem found is reported at once as ``SpaceError``."""
    errs = _Errors(source)
    try:
        space = _build(data, errs, default_name, location or source)
    except HybridSearchError:
        raise
    except Exception as e:  # a bug in a check must not hide the user's file behind a traceback
        errs.add("", f"could not be checked ({type(e).__name__}: {e})")
        space = None
    if errs.items or space is None:
        raise SpaceError(errs.items or [f"{source}: invalid search space"])
    return space


def _build(data: Any, errs: _Errors, default_name: str, location: str) -> SearchSpace | None:
    if not isinstance(data, dict):
        errs.add("", f"expected a mapping with keys {', '.join(_TOP)}, got {_show(data)}")
        return None
    d = _mapping(data, "", errs, _TOP, required=("model", "data", "methods"))
    model = _parse_model(d.get("model"), errs)
    data_ = _parse_data(d.get("data"), errs)
    fidelity = _parse_fidelity(d.get("fidelity"), data_, errs)
    objectives = _parse_objectives(d.get("objectives", ["accuracy"]), errs)
    methods = _parse_methods(d.get("methods"), errs)
    recipe = _parse_recipe(d.get("recipe"), errs)
    budget = _parse_budget(d.get("budget"), errs)
    trials = _get(d, "trials", "", errs, c_int(1), 20)
    baselines = _get(d, "baselines", "", errs, c_bool(), False)
    stages = _parse_stages(d.get("stages"), trials, errs)
    n_tasks = len(fidelity.tasks or (data_.tasks if data_ else ()))
    pruner = _parse_pruner(d.get("pruner"), fidelity, n_tasks, objectives, errs)
    sampler = _parse_sampler(d.get("sampler"), errs)
    _cross_checks(model, data_, methods, recipe, stages, errs)
    if errs.items or model is None or data_ is None:
        return None
    return SearchSpace(
        name=_get(d, "name", "", errs, c_str(), default_name), source=location, model=model, data=data_,
        methods=methods, budget=budget, objectives=objectives, stages=stages, fidelity=fidelity, pruner=pruner,
        sampler=sampler, recipe=recipe, trials=trials, baselines=baselines,
        description=_get(d, "description", "", errs, c_str(null=True), "") or "",
    )


def _parse_model(raw: Any, errs: _Errors) -> ModelSpace | None:
    d = _mapping(raw, "model", errs, ("name", "checkpoint", "num_classes"), required=("name",))
    name = _get(d, "name", "model", errs, c_str())
    if name is None:
        return None
    return ModelSpace(name, _get(d, "checkpoint", "model", errs, c_str(null=True)),
                      _get(d, "num_classes", "model", errs, c_int(1, null=True)))


def _known_tasks(kind: str) -> tuple[str, ...] | None:
    try:
        if kind == "vtab":
            from ..data.vtab import VTAB_TASKS
            return tuple(VTAB_TASKS)
        if kind == "mini_vtab":
            from ..data.mini_vtab import MINI_TASKS
            return tuple(MINI_TASKS)
        from ..data.commonsense import TASKS
        return TASKS
    except ImportError:  # an optional data module missing: task names are checked when data loads
        return None


def _task_classes(kind: str, task: str) -> int | None:
    try:
        if kind == "vtab":
            from ..data.vtab import VTAB_TASKS
            return VTAB_TASKS[task].num_classes
        if kind == "mini_vtab":
            from ..data.mini_vtab import MINI_TASKS
            return MINI_TASKS[task].num_classes
    except (ImportError, KeyError):
        pass
    return None


_SPLITS = {"vtab": ("train800", "val200", "train800val200", "test"), "commonsense": ("train", "val")}
_DEFAULT_SPLITS = {"vtab": ("train800", "val200"), "commonsense": ("train", "val")}


def _parse_data(raw: Any, errs: _Errors) -> DataSpace | None:
    d = _mapping(raw, "data", errs, ("kind", "root", "tasks", "train_split", "val_split"),
                 required=("kind", "tasks"))
    kind = _get(d, "kind", "data", errs, c_choice(*DATA_KINDS))
    if kind is None:
        return None
    family = "commonsense" if kind == "commonsense" else "vtab"
    tasks = _parse_tasks(d.get("tasks"), kind, errs)
    train_def, val_def = _DEFAULT_SPLITS[family]
    train = _get(d, "train_split", "data", errs, c_choice(*_SPLITS[family]), train_def)
    val = _get(d, "val_split", "data", errs, c_choice(*_SPLITS[family]), val_def)
    if val == "test":
        errs.add("data.val_split", "searching on the test split leaks it into model selection; "
                                   f"allowed: {', '.join(s for s in _SPLITS[family] if s != 'test')}")
    if train in ("test",) or train == val or (train == "train800val200" and val == "val200"):
        errs.add("data.train_split", f"{train!r} overlaps val_split {val!r}; use train800 with val200")
    return DataSpace(kind, tuple(tasks), _get(d, "root", "data", errs, c_str(null=True)), train, val)


def _parse_tasks(raw: Any, kind: str, errs: _Errors) -> list[str]:
    if not isinstance(raw, list) or not raw:
        if raw is not None:
            errs.add("data.tasks", f"expected a non-empty list of task names, got {_show(raw)}")
        return []
    known = _known_tasks(kind)
    out: list[str] = []
    for i, t in enumerate(raw):
        if not isinstance(t, str):
            errs.add(f"data.tasks[{i}]", f"expected a task name, got {_show(t)}")
        elif known is not None and t not in known:
            errs.add(f"data.tasks[{i}]", f"unknown {kind} task {t!r}; allowed: {', '.join(known)}")
        elif t in out:
            errs.add(f"data.tasks[{i}]", f"duplicate task {t!r}")
        else:
            out.append(t)
    return out


def _parse_fidelity(raw: Any, data: DataSpace | None, errs: _Errors) -> Fidelity:
    keys = ("epochs", "min_epochs", "max_train_examples", "max_val_examples", "tasks")
    d = _mapping(raw, "fidelity", errs, keys)
    epochs = _get(d, "epochs", "fidelity", errs, c_int(1), 10)
    min_epochs = _get(d, "min_epochs", "fidelity", errs, c_int(1), 1)
    if min_epochs > epochs:
        errs.add("fidelity.min_epochs", f"{min_epochs} > epochs {epochs} (min > max)")
    tasks = _fidelity_tasks(d.get("tasks"), data, errs)
    return Fidelity(epochs, min_epochs, _get(d, "max_train_examples", "fidelity", errs, c_int(1, null=True)),
                    _get(d, "max_val_examples", "fidelity", errs, c_int(1, null=True)), tasks)


def _fidelity_tasks(raw: Any, data: DataSpace | None, errs: _Errors) -> tuple[str, ...]:
    """``null`` (all), an int (the first n data.tasks) or a subset of data.tasks."""
    all_tasks = list(data.tasks) if data else []
    if raw is None:
        return ()
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= max(len(all_tasks), 1):
            errs.add("fidelity.tasks", f"must be between 1 and {len(all_tasks)} (the number of data.tasks), got {raw}")
            return ()
        return tuple(all_tasks[:raw])
    if not isinstance(raw, list) or not raw:
        errs.add("fidelity.tasks", f"expected null, a count or a non-empty list of data.tasks, got {_show(raw)}")
        return ()
    for i, t in enumerate(raw):
        if t not in all_tasks:
            errs.add(f"fidelity.tasks[{i}]", f"{t!r} is not in data.tasks; allowed: {', '.join(all_tasks)}")
    return tuple(t for t in all_tasks if t in raw)


def _parse_objectives(raw: Any, errs: _Errors) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if raw in (["accuracy"], ["accuracy", "params"]):
        return tuple(raw)
    errs.add("objectives", f"{raw!r} is not allowed; allowed: [accuracy] (maximize mean validation accuracy) "
                           "or [accuracy, params] (also minimize trainable parameters)")
    return ("accuracy",)


def _method_field_check(name: str, f: str, default: Any) -> Check:
    """Validates one value of field ``f`` by building the PEFT config of ``name`` with it."""

    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(default, float) and isinstance(v, str) and _as_number(v) is not None:
            v = float(v)  # PyYAML reads 1e-3 as a string
        if f == "layers" and (isinstance(v, bool) or v is None):
            return v, f"{v!r} is not a layer spec; allowed: all, an int, 'a-b' or a list of those"
        if f in ("layers", "rank") and (msg := _huge_range(v)):
            return v, msg
        try:
            PeftConfig.from_dict({"methods": {name: {f: copy.deepcopy(v)}}}, source="@")
        except ConfigError as e:
            return v, str(e).split(": ", 2)[-1]
        except (TypeError, ValueError, AttributeError) as e:
            return v, f"invalid value {v!r} ({type(e).__name__}: {e})"
        return v, None

    return check


_RANGE_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_MAX_LAYERS = 10_000


def _huge_range(v: Any) -> str | None:
    """Layer ranges beyond any model are refused before the PEFT checks expand them into index sets."""
    items = list(v) if isinstance(v, dict) else v if isinstance(v, list) else [v]
    for item in items:
        m = _RANGE_RE.fullmatch(item) if isinstance(item, str) else None
        big = (m and int(m.group(2)) >= _MAX_LAYERS) or (isinstance(item, int) and item >= _MAX_LAYERS)
        if big:
            return f"layer {item!r} is beyond any model (< {_MAX_LAYERS:,} layers)"
    return None


def _group_rank_check(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return v, f"a group rank must be an integer >= 0 (0 leaves the group out), got {_show(v)}"
    return v, None


def _parse_methods(raw: Any, errs: _Errors) -> dict[str, MethodSpace]:
    if isinstance(raw, list):  # shorthand: a list of names, each optional with PEFT defaults
        if not all(isinstance(n, str) for n in raw):
            errs.add("methods", "a list of methods must hold method names only")
            return {}
        raw = dict.fromkeys(raw)
    if not isinstance(raw, dict) or not raw:
        if raw is not None:
            errs.add("methods", f"expected a non-empty mapping of method name -> settings, got {_show(raw)}")
        return {}
    out = {}
    for name in raw:
        if name not in METHODS:
            errs.add(_join("methods", name), f"unknown method; allowed: {', '.join(METHODS.names())}")
            continue
        ms = _parse_method(name, raw[name], errs)
        if ms is not None:
            out[name] = ms
    return {n: out[n] for n in METHODS.names() if n in out}  # canonical order


def _parse_method(name: str, raw: Any, errs: _Errors) -> MethodSpace | None:
    path = f"methods.{name}"
    spec = METHODS.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(spec.config)}
    d = _mapping(raw, path, errs, ("optional", "params", "stage1", "layer_groups"))
    optional = _get(d, "optional", path, errs, c_bool(), True)
    pmap = _mapping(d.get("params"), f"{path}.params", errs, defaults)
    params = {}
    for f, v in pmap.items():
        p = parse_param(v, f"{path}.params.{f}", errs, _method_field_check(name, f, defaults[f]))
        if p is not None:
            params[f] = p
    if "layers" in pmap and not spec.per_layer:
        errs.add(f"{path}.params.layers", f"{name} is not per layer; remove 'layers'")
    stage1 = _parse_stage1(name, d.get("stage1"), params, defaults, errs)
    groups = _parse_groups(name, d.get("layer_groups"), pmap, spec, errs) if "layer_groups" in d else ()
    return MethodSpace(name, optional, params, groups, stage1)


def _parse_stage1(name: str, raw: Any, params: dict[str, Param], defaults: dict, errs: _Errors) -> dict:
    path = f"methods.{name}.stage1"
    n0 = len(errs.items)
    d = _mapping(raw, path, errs, defaults)
    out = {}
    for f, v in d.items():
        v, msg = _method_field_check(name, f, defaults[f])(v)
        if msg:
            errs.add(_join(path, f), msg)
        out[f] = v
    settings = {**{f: p.resolved for f, p in params.items() if p.resolved is not _MISSING}, **out}
    try:  # the stage-1 settings together
        PeftConfig.from_dict({"methods": {name: settings}}, source="@")
    except ConfigError as e:
        if len(errs.items) == n0:  # report the combination only when no single value was wrong
            errs.add(path, str(e).split(": ", 2)[-1])
    return out


def _parse_groups(name: str, raw: Any, pmap: dict, spec: Any, errs: _Errors) -> tuple[LayerGroup, ...]:
    path = f"methods.{name}.layer_groups"
    if "rank" not in {f.name for f in dataclasses.fields(spec.config)} or not spec.per_layer:
        errs.add(path, f"{name} has no per-layer rank; layer groups apply to the per-layer LoRA family "
                       f"({', '.join(n for n, s in METHODS.items() if s.per_layer and hasattr(s.config, 'rank'))})")
        return ()
    for f in ("rank", "layers"):
        if f in pmap:
            errs.add(f"methods.{name}.params.{f}", "set per group in layer_groups; remove it from params")
    if not isinstance(raw, list) or not raw:
        errs.add(path, f"expected a non-empty list of {{layers, rank | tie}}, got {_show(raw)}")
        return ()
    groups: list[LayerGroup] = []
    seen: set[int] = set()
    for i, g in enumerate(raw):
        gp = _join(path, i)
        gd = _mapping(g, gp, errs, ("layers", "rank", "tie"), required=("layers",))
        layers = gd.get("layers")
        if "layers" in gd:
            _group_layers(layers, gp, seen, errs)
        rank, tie = None, None
        if ("rank" in gd) == ("tie" in gd):
            errs.add(gp, "give exactly one of rank (its own) or tie (the index of an earlier group)")
        elif "rank" in gd:
            rank = parse_param(gd["rank"], _join(gp, "rank"), errs, _group_rank_check)
        else:
            tie = gd["tie"]
            if isinstance(tie, bool) or not isinstance(tie, int) or not 0 <= tie < i or groups[tie].tie is not None:
                allowed = [j for j in range(i) if groups[j].tie is None]
                errs.add(_join(gp, "tie"), f"must be the index of an earlier untied group; allowed: {allowed}")
                tie = None
        groups.append(LayerGroup(layers, rank, tie))
    return tuple(groups)


def _group_layers(layers: Any, path: str, seen: set[int], errs: _Errors) -> None:
    if layers == "all" or isinstance(layers, bool) or layers is None:
        errs.add(_join(path, "layers"), f"a group needs explicit layers ('a-b', an int or a list), got {layers!r}")
        return
    if msg := _huge_range(layers):
        errs.add(_join(path, "layers"), msg)
        return
    try:
        idx = set(parse_layers(layers, 10**9, "@"))
    except ConfigError as e:
        errs.add(_join(path, "layers"), str(e).split(": ", 1)[-1])
        return
    overlap = sorted(idx & seen)
    if overlap:
        errs.add(_join(path, "layers"), f"layers {overlap[:8]} are already in an earlier group")
    seen.update(idx)


# recipe key -> (default or _MISSING when only present if declared, check)
_RECIPE: dict[str, tuple[Any, Check]] = {
    "optimizer": ("adamw", c_choice("adamw", "sgd")),
    "lr": (1e-3, c_float(0, open_lo=True)),
    "weight_decay": (1e-4, c_float(0)),
    "batch_size": (32, c_int(1)),
    "eval_batch_size": (256, c_int(1)),
    "schedule": ("cosine", c_choice("cosine", "linear", "constant")),
    "warmup_epochs": (1.0, c_float(0)),
    "min_lr": (1e-5, c_float(0)),
    "grad_clip": (None, c_float(0, open_lo=True, null=True)),
    "method_lr_mult": (_MISSING, c_float(0)),
    "method_decay_mult": (_MISSING, c_float(0)),
    "head_lr_mult": (_MISSING, c_float(0)),
    "head_decay_mult": (_MISSING, c_float(0)),
    "train_on_inputs": (_MISSING, c_bool()),  # language spaces: loss on the prompt too (reference) or not
}


def _parse_recipe(raw: Any, errs: _Errors) -> dict[str, Param]:
    if isinstance(raw, dict) and "epochs" in raw:
        errs.add("recipe.epochs", "unknown key: the number of epochs is fidelity.epochs")
        raw = {k: v for k, v in raw.items() if k != "epochs"}
    d = _mapping(raw, "recipe", errs, _RECIPE)
    out: dict[str, Param] = {}
    for k, (default, check) in _RECIPE.items():
        if k in d:
            p = parse_param(d[k], f"recipe.{k}", errs, check)
            if p is not None:
                out[k] = p
        elif default is not _MISSING:
            out[k] = FixedParam(default)
    return out


def _parse_budget(raw: Any, errs: _Errors) -> Budget:
    d = _mapping(raw, "budget", errs, ("max_trainable", "min_trainable", "include_head"))
    hi = _get(d, "max_trainable", "budget", errs, c_int(1, null=True))
    lo = _get(d, "min_trainable", "budget", errs, c_int(0, null=True))
    if hi is not None and lo is not None and lo > hi:
        errs.add("budget.min_trainable", f"{lo} > max_trainable {hi} (min > max)")
    return Budget(hi, lo, _get(d, "include_head", "budget", errs, c_bool(), True))


def _parse_stages(raw: Any, trials: int, errs: _Errors) -> tuple[Stage, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        errs.add("stages", f"expected a list of 1 or 2 stages ([select] or [select, tune]), got {_show(raw)}")
        return ()
    out = []
    for i, s in enumerate(raw):
        path = f"stages[{i}]"
        d = _mapping(s, path, errs, ("name", "trials", "select", "tune", "drop_one"))
        want = "select" if i == 0 else "tune"
        for k in ("select", "tune"):
            _get(d, k, path, errs, c_bool(), False)
        if d.get(want) is not True or d.get("select" if want == "tune" else "tune") is True:
            errs.add(path, f"stage {i + 1} must set {want}: true (stage 1 selects methods, stage 2 tunes them)")
        drop = _get(d, "drop_one", path, errs, c_bool(), False)
        if drop and want == "select":
            errs.add(_join(path, "drop_one"), "only the tune stage (stage 2) may drop a method")
        name = _get(d, "name", path, errs, c_str(), want)
        out.append(Stage(name, _get(d, "trials", path, errs, c_int(1), trials), want == "select",
                         want == "tune", bool(drop)))
    return tuple(out)


_PRUNER_KEYS = {
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "none": (),
}


def _parse_pruner(raw: Any, fid: Fidelity, n_tasks: int, objectives: tuple[str, ...], errs: _Errors) -> PrunerSpec:
    kind = raw.get("kind", "none") if isinstance(raw, dict) else "none"
    if kind not in PRUNERS:
        errs.add("pruner.kind", f"{kind!r} is not allowed; allowed: {', '.join(PRUNERS)}")
        return PrunerSpec()
    d = _mapping(raw, "pruner", errs, ("kind", *_PRUNER_KEYS[kind]))
    if len(objectives) > 1 and kind != "none":
        errs.add("pruner.kind", f"{kind!r}: Optuna cannot prune a multi-objective study (trial.report raises); "
                                "allowed with two objectives: none")
    defaults = {"min_resource": fid.min_epochs, "max_resource": fid.epochs * max(n_tasks, 1),
                "reduction_factor": 3 if kind == "hyperband" else 4, "min_early_stopping_rate": 0,
                "n_startup_trials": 5, "n_warmup_steps": fid.min_epochs, "interval_steps": 1, "n_min_trials": 1}
    lows = {"reduction_factor": 2, "min_early_stopping_rate": 0, "n_startup_trials": 0, "n_warmup_steps": 0}
    opts = {k: _get(d, k, "pruner", errs, c_int(lows.get(k, 1)), defaults[k]) for k in _PRUNER_KEYS[kind]}
    if "max_resource" in opts and opts["min_resource"] > opts["max_resource"]:
        errs.add("pruner.min_resource", f"{opts['min_resource']} > max_resource {opts['max_resource']} (min > max)")
    return PrunerSpec(kind, opts)


_SAMPLER_KEYS = {
    "tpe": {"multivariate": True, "group": True, "n_startup_trials": 10, "constant_liar": False},
    "gp": {"n_startup_trials": 10},
    "nsga2": {"population_size": 50},
    "random": {},
}


def _parse_sampler(raw: Any, errs: _Errors) -> SamplerSpec:
    kind = raw.get("kind", "tpe") if isinstance(raw, dict) else "tpe"
    if kind not in SAMPLERS:
        errs.add("sampler.kind", f"{kind!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
        return SamplerSpec()
    defaults = _SAMPLER_KEYS[kind]
    d = _mapping(raw, "sampler", errs, ("kind", "seed", *defaults))
    seed = _get(d, "seed", "sampler", errs, c_int(0, null=True), 0)
    opts = {}
    for k, v in defaults.items():
        check = c_bool() if isinstance(v, bool) else c_int(2 if k == "population_size" else 0)
        opts[k] = _get(d, k, "sampler", errs, check, v)
    if kind == "tpe" and opts["group"] and not opts["multivariate"]:
        errs.add("sampler.group", "group: true needs multivariate: true (Optuna's TPE)")
    return SamplerSpec(kind, seed, opts)


def _cross_checks(model: ModelSpace | None, data: DataSpace | None, methods: dict[str, MethodSpace],
                  recipe: dict[str, Param], stages: tuple[Stage, ...], errs: _Errors) -> None:
    if stages and stages[0].select:
        if not any(m.optional for m in methods.values()):
            errs.add("stages[0].select", "stage 1 switches methods on and off, but no method is optional")
        for k, p in recipe.items():
            if p.resolved is _MISSING:
                errs.add(f"recipe.{k}", "a searched recipe value needs 'default' (stage 1 samples methods only)")
    kind = _model_kind(model.name) if model else None
    if kind is None or data is None:
        return
    want = "lm" if data.kind == "commonsense" else "vim"
    if kind != want:
        errs.add("model.name", f"{model.name!r} is a {kind} model but data.kind {data.kind!r} needs a {want} model")
    for n in methods:
        if kind not in METHODS.get(n).kinds:
            errs.add(f"methods.{n}", f"not available for {model.name!r} ({kind}); "
                                     f"applies to {', '.join(METHODS.get(n).kinds)}")


def _model_kind(name: str) -> str | None:
    from ..models import MODELS

    return MODELS.get(name).kind if name in MODELS else None


# -- exact counts, budget and deep validation -------------------------------------------------------------------
_COUNTS: dict[tuple, dict] = {}
_TEMPLATES: dict[tuple, Any] = {}


def count_methods(space: SearchSpace, methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact counts (meta device, nothing allocated) of the space's model with ``methods`` attached, plus
    ``budgeted``: what the budget limits (trainable, less the head when ``include_head`` is false)."""
    nc = space.num_classes()
    key = (space.model.name, nc, _canonical_json(methods))
    if key not in _COUNTS:
        if len(_COUNTS) > 4096:
            _COUNTS.clear()
        _COUNTS[key] = _exact_counts(space.model.name, nc, copy.deepcopy(methods))
    counts = {**_COUNTS[key], "by_method": dict(_COUNTS[key]["by_method"])}
    counts["budgeted"] = counts["trainable"] - (0 if space.budget.include_head else counts["head"])
    return counts


def _exact_counts(model_name: str, num_classes: int | None, methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``peft.count_config`` on a copy of one cached meta-device model (building it is the slow part)."""
    from ..models import create_model
    from ..peft import apply_peft, count_parameters

    key = (model_name, num_classes)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = create_model(model_name, num_classes=num_classes, device="meta")
    model = copy.deepcopy(_TEMPLATES[key])
    return count_parameters(apply_peft(model, PeftConfig.from_dict({"methods": methods})))


def check_budget(space: SearchSpace, peft_config: PeftConfig | dict) -> tuple[bool, dict[str, Any]]:
    """(within budget, exact counts) for one config, before any training."""
    cfg = peft_config if isinstance(peft_config, PeftConfig) else PeftConfig.from_dict(peft_config)
    counts = count_methods(space, cfg.to_dict()["methods"])
    b, n = space.budget, counts["budgeted"]
    ok = (b.max_trainable is None or n <= b.max_trainable) and (b.min_trainable is None or n >= b.min_trainable)
    return ok, counts


@dataclass
class SpaceReport:
    """What ``validate_space`` found: errors, warnings and the exact sizes of the extreme configurations."""

    space: SearchSpace
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    smallest: dict[str, Any] | None = None  # {"methods": ..., "counts": ...}
    largest: dict[str, Any] | None = None
    stage1: dict[str, Any] | None = None  # {"smallest": ..., "largest": ...}
    per_method: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> {"min", "max"} own params

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, "summary": describe(self.space),
                "smallest": self.smallest, "largest": self.largest, "stage1": self.stage1,
                "per_method": self.per_method}


def describe(space: SearchSpace) -> dict[str, Any]:
    """A compact, JSON-able summary of a space (what ``hybridsearch validate`` prints)."""
    methods = {}
    for n, m in space.methods.items():
        methods[n] = {"optional": m.optional, "params": {f: p.describe() for f, p in m.params.items()}}
        if m.layer_groups:
            methods[n]["layer_groups"] = [{"layers": g.layers, "rank": g.rank.describe() if g.rank else
                                           f"tie g{g.tie}"} for g in m.layer_groups]
        if space.stages:
            methods[n]["stage1"] = stage1_settings(m)
    return {
        "name": space.name, "source": space.source, "hash": space.space_hash(),
        "model": dataclasses.asdict(space.model), "num_classes": space.num_classes(),
        "data": {**dataclasses.asdict(space.data), "tasks": list(space.data.tasks)},
        "objectives": list(space.objectives), "directions": space.directions, "trials": space.trials,
        "stages": [_stage_dict(s) for s in space.stages], "budget": dataclasses.asdict(space.budget),
        "fidelity": {**dataclasses.asdict(space.fidelity), "tasks": space.search_tasks},
        "pruner": {"kind": space.pruner.kind, **space.pruner.options},
        "sampler": {"kind": space.sampler.kind, "seed": space.sampler.seed, **space.sampler.options},
        "recipe": {k: p.describe() for k, p in space.recipe.items()}, "methods": methods,
    }


def validate_space(space: SearchSpace, count: bool = True) -> SpaceReport:
    """Checks that need the model: it resolves, every value of every method applies to it, and the budget can
    be met (the smallest configuration fits ``max_trainable``, the largest reaches ``min_trainable``)."""
    rep = SpaceReport(space)
    src = Path(space.source).name if Path(space.source).is_file() else space.source
    err = _Errors(src)
    warn = _Errors(src)
    if _check_model(space, err, warn) and count:
        _check_counts(space, rep, err, warn)
    rep.errors, rep.warnings = err.items, warn.items
    return rep


def _check_model(space: SearchSpace, err: _Errors, warn: _Errors) -> bool:
    from ..models import MODELS

    m = space.model
    if m.name not in MODELS and not Path(m.name).exists():
        err.add("model.name", f"{m.name!r} is neither a registered model nor an existing checkpoint path; "
                              f"allowed: {', '.join(MODELS.names())}")
        return False
    if m.checkpoint is not None and not Path(m.checkpoint).exists():
        warn.add("model.checkpoint", f"{m.checkpoint} does not exist on this machine")
    elif m.checkpoint is None and m.name in MODELS:
        bundled = MODELS.get(m.name).checkpoint
        if bundled is None:
            warn.add("model.checkpoint", f"none given and {m.name} has no bundled weights: pass the pretrained "
                                         "checkpoint at run time (otherwise the backbone is randomly initialised)")
        else:
            try:
                bundled()
            except HybridSearchError as e:
                warn.add("model.checkpoint", str(e))
    if space.data.root is not None and not Path(space.data.root).exists():
        warn.add("data.root", f"{space.data.root} does not exist on this machine")
    return True


def _check_counts(space: SearchSpace, rep: SpaceReport, err: _Errors, warn: _Errors) -> None:
    try:
        count_methods(space, {})
    except Exception as e:  # the model itself cannot be built
        err.add("model.name", f"cannot build {space.model.name!r}: {e}")
        return
    small, large = {}, {}
    for n, ms in space.methods.items():
        lo, hi = _method_extremes(space, ms, err)
        for target, s in ((small, lo), (large, hi)):
            if s is not None and (target is large or not ms.optional):
                target[n] = s
        own = [_own(space, n, s) for s in (lo, hi)]
        rep.per_method[n] = {"min": own[0], "max": own[1]}
    rep.smallest = _counted(space, small, "the smallest configuration", err)
    rep.largest = _counted(space, large, "the largest configuration", err)
    if space.stages:
        st = {n: stage1_settings(m) for n, m in space.methods.items()}
        on = {n: s for n, s in st.items() if not space.methods[n].optional}
        rep.stage1 = {"smallest": _counted(space, on, "the smallest stage-1 configuration", err),
                      "largest": _counted(space, st, "the largest stage-1 configuration", err)}
    _check_budget_bounds(space, rep, err, warn)


def _own(space: SearchSpace, name: str, settings: dict | None) -> int:
    if settings is None:
        return 0
    try:
        return count_methods(space, {name: settings})["by_method"].get(name, 0)
    except Exception:
        return 0


def _counted(space: SearchSpace, methods: dict, what: str, err: _Errors) -> dict[str, Any] | None:
    try:
        return {"methods": methods, "counts": count_methods(space, methods)}
    except Exception as e:
        err.add("methods", f"{what} cannot be applied to {space.model.name}: {e}")
        return None


def _method_extremes(space: SearchSpace, ms: MethodSpace, err: _Errors) -> tuple[dict | None, dict | None]:
    """(smallest, largest) settings of one method by exact counts (categorical values tried one at a time;
    int and float ranges at their ends). ``None`` when the method is off at that end (every group rank 0)."""
    path = f"methods.{ms.name}"
    out: list[dict | None] = []
    for pick, end in ((min, 0), (max, -1)):
        base = {f: _end(p, end) for f, p in ms.params.items()}
        for f, p in ms.params.items():
            if isinstance(p, CategoricalParam) and len(p.choices) > 1:
                scored = [(n, c) for c in p.choices
                          if (n := _score(space, ms, {**base, f: c}, f"{path}.params.{f}", err, c)) is not None]
                if scored:
                    base[f] = pick(scored, key=lambda t: t[0])[1]
        s = _with_groups(ms, base, end)
        if s is not None and _score(space, ms, s, path, err, None) is None:
            s = None
        out.append(s)
    return out[0], out[1]


def _end(p: Param, end: int) -> Any:
    c = p.candidates()
    return c[end] if isinstance(p, (IntParam, FloatParam)) else c[0]


def _with_groups(ms: MethodSpace, base: dict, end: int) -> dict | None:
    if not ms.layer_groups:
        return dict(base)
    ranks, drawn = {}, []
    for g in ms.layer_groups:
        r = drawn[g.tie] if g.tie is not None else sorted(g.rank.candidates())[end]
        drawn.append(r)
        if r > 0:
            ranks.update(dict.fromkeys(_layer_keys(g.layers), r))
    return {**base, "rank": ranks} if ranks else None


def _score(space: SearchSpace, ms: MethodSpace, settings: dict, path: str, err: _Errors, choice: Any) -> int | None:
    try:
        return count_methods(space, {ms.name: settings})["budgeted"]
    except Exception as e:
        what = f"choice {choice!r}" if choice is not None else f"{settings}"
        if (path, str(e)) not in err.seen:  # the same failure shows at both ends of a range: report it once
            err.seen.add((path, str(e)))
            err.add(path, f"{what} cannot be applied to {space.model.name}: {e}")
        return None


def _check_budget_bounds(space: SearchSpace, rep: SpaceReport, err: _Errors, warn: _Errors) -> None:
    b = space.budget
    head = "" if b.include_head else " (head excluded)"
    checks = [("", rep.smallest, rep.largest)]
    if rep.stage1:
        checks.append(("stage-1 ", rep.stage1["smallest"], rep.stage1["largest"]))
    for what, lo, hi in checks:
        if b.max_trainable is not None and lo and lo["counts"]["budgeted"] > b.max_trainable:
            off = "every optional method off, the others at their smallest"
            err.add("budget.max_trainable", f"{b.max_trainable:,} is below the smallest {what}configuration "
                                            f"({lo['counts']['budgeted']:,} trainable{head}: {off}); "
                                            "no configuration can meet it")
        if b.min_trainable is not None and hi and hi["counts"]["budgeted"] < b.min_trainable:
            err.add("budget.min_trainable", f"{b.min_trainable:,} is above the largest {what}configuration "
                                            f"({hi['counts']['budgeted']:,} trainable{head}); "
                                            "no configuration can meet it")
    if b.max_trainable is None or rep.smallest is None:
        return
    floor = rep.smallest["counts"]["budgeted"]
    for n, own in rep.per_method.items():
        if space.methods[n].optional and floor + own["min"] > b.max_trainable:
            warn.add(f"methods.{n}", f"its smallest setting ({own['min']:,} parameters) never fits "
                                     f"budget.max_trainable {b.max_trainable:,}: it can never be switched on")
