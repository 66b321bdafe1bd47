"""The values of a space: a ``Param`` is sampled (int / float / categorical) or fixed. In YAML a scalar is
fixed, a list is categorical, and a mapping names its kind::

    rank: 8                              # fixed
    placement: [prefix, prefix_suffix]   # categorical
    rank: {int: [4, 16], step: 4}        # int (step, log, default optional)
    scale: {log: [0.01, 1]}              # float, log-uniform (== {float: [0.01, 1], log: true})
    dropout: {float: [0.0, 0.2]}         # float (step, log, default optional)
    layers: {fixed: [0, 1, 2]}           # fixed list / mapping value
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

from .checks import MISSING, Check, Errors, as_number, join, mapping, show

PARAM_KINDS = ("int", "float", "log", "choices", "fixed")


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
        """The value when not sampled (fixed value or ``default``); ``MISSING`` if none."""
        return getattr(self, "default", MISSING)

    def middle(self) -> Any:
        """A typical value for the baseline trials: the ``default``, else the middle of the range."""
        return self.resolved

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) of the distribution random search draws from (uniform over the grid or
        the range, log-uniform for a log range): a point of the unit cube becomes a configuration (designs)."""
        return self.resolved

    def to_unit(self, v: Any) -> float:
        """Where ``v`` lies in [0, 1] (the inverse of ``from_unit`` up to the grid): a feature of a surrogate."""
        return 0.0

    def to_yaml(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _with_default(d: dict, default: Any) -> dict:
    return d if default is MISSING else {**d, "default": default}


@dataclass(frozen=True)
class IntParam(Param):
    low: int
    high: int
    step: int = 1
    log: bool = False
    default: Any = MISSING

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def middle(self) -> int:
        if self.default is not MISSING:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + self.step * math.floor((mid - self.low) / self.step + 0.5)  # half up

    def from_unit(self, u: float) -> int:
        if self.log:
            v = round(math.exp(math.log(self.low) + _clip(u) * (math.log(self.high) - math.log(self.low))))
            return min(max(v, self.low), self.high)
        n = (self.high - self.low) // self.step + 1
        return self.low + self.step * min(int(_clip(u) * n), n - 1)

    def to_unit(self, v: Any) -> float:
        return _position(float(v), self.low, self.high, self.log)

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
    default: Any = MISSING

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def middle(self) -> float:
        if self.default is not MISSING:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return mid if self.step is None else self.low + self.step * math.floor((mid - self.low) / self.step + 0.5)

    def from_unit(self, u: float) -> float:
        if self.log:
            return math.exp(math.log(self.low) + _clip(u) * (math.log(self.high) - math.log(self.low)))
        if self.step is None:
            return self.low + _clip(u) * (self.high - self.low)
        n = round((self.high - self.low) / self.step) + 1
        return self.low + self.step * min(int(_clip(u) * n), n - 1)

    def to_unit(self, v: Any) -> float:
        return _position(float(v), self.low, self.high, self.log)

    def contains(self, v: Any) -> bool:
        n = as_number(v)
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


def _clip(u: float) -> float:
    return min(max(float(u), 0.0), 1.0)


def _position(v: float, low: float, high: float, log: bool) -> float:
    if high <= low:
        return 0.0
    if log:
        return _clip((math.log(v) - math.log(low)) / (math.log(high) - math.log(low)))
    return _clip((v - low) / (high - low))


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (Python's True == 1)."""
    return a == b and (isinstance(a, bool) == isinstance(b, bool))


@dataclass(frozen=True)
class CategoricalParam(Param):
    choices: tuple[Any, ...]
    default: Any = MISSING

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def middle(self) -> Any:
        return self.choices[0] if self.default is MISSING else self.default

    def from_unit(self, u: float) -> Any:
        return self.choices[min(int(_clip(u) * len(self.choices)), len(self.choices) - 1)]

    def to_unit(self, v: Any) -> float:
        i = next((i for i, c in enumerate(self.choices) if _same(v, c)), 0)
        return i / max(len(self.choices) - 1, 1)

    def contains(self, v: Any) -> bool:
        return any(_same(v, c) for c in self.choices)

    def candidates(self) -> tuple[Any, ...]:
        return self.choices

    def to_yaml(self) -> Any:
        return list(self.choices) if self.default is MISSING else {"choices": list(self.choices),
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


def parse_param(raw: Any, path: str, errs: Errors, check: Check) -> Param | None:
    """A scalar (fixed), a list (categorical) or a mapping with one kind key; ``check`` validates each value."""
    n0 = len(errs.items)
    if isinstance(raw, list):
        p: Param | None = _categorical(raw, MISSING, path, errs, check)
    elif isinstance(raw, dict):
        p = _param_mapping(raw, path, errs, check)
    else:
        v, msg = check(raw)
        if msg:
            errs.add(path, msg)
        p = FixedParam(v)
    return p if len(errs.items) == n0 else None


def _param_mapping(raw: dict, path: str, errs: Errors, check: Check) -> Param | None:
    kinds = [k for k in raw if k in PARAM_KINDS and not (k == "log" and isinstance(raw[k], bool))]
    if len(kinds) != 1:
        got = f"got {', '.join(map(str, kinds))}" if kinds else f"got keys {', '.join(map(str, raw)) or 'none'}"
        errs.add(path, f"a parameter mapping needs exactly one of {', '.join(PARAM_KINDS)} ({got}); "
                       "write a scalar for a fixed value or a list for choices")
        return None
    kind = kinds[0]
    d = mapping(raw, path, errs, (kind, *_MODIFIERS[kind]))
    default = d.get("default", MISSING)
    if kind == "fixed":
        v, msg = check(d["fixed"])
        if msg:
            errs.add(join(path, "fixed"), msg)
        return FixedParam(v)
    if kind == "choices":
        if not isinstance(d["choices"], list):
            errs.add(join(path, "choices"), f"must be a list, got {show(d['choices'])}")
            return None
        return _categorical(d["choices"], default, join(path, "choices"), errs, check)
    return _range(kind, d, default, path, errs, check)


def _categorical(raw: list, default: Any, path: str, errs: Errors, check: Check) -> Param | None:
    if not raw:
        errs.add(path, "an empty list of choices; give at least one")
        return None
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, _CHOICE_TYPES):
            errs.add(join(path, i), f"choices must be null, bool, int, float or string, got {show(c)}; "
                                     "use {fixed: ...} for a list or mapping value")
            continue
        v, msg = check(c)
        if msg:
            errs.add(join(path, i), msg)
        elif any(_same(v, o) for o in out):
            errs.add(join(path, i), f"duplicate choice {v!r}")
        else:
            out.append(v)
    p = CategoricalParam(tuple(out), default)
    if default is not MISSING and not p.contains(default):
        errs.add(path, f"default {default!r} is not one of the choices {p.describe()}")
    return p


def _range(kind: str, d: dict, default: Any, path: str, errs: Errors, check: Check) -> Param | None:
    where = join(path, kind)
    bounds = d[kind]
    is_int = kind == "int"
    if not (isinstance(bounds, list) and len(bounds) == 2):
        errs.add(where, f"expected [low, high], got {show(bounds)}")
        return None
    lo, hi = (b if is_int else as_number(b) for b in bounds)
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
        errs.add(join(path, "log"), f"must be true or false, got {show(log)}")
        return None
    step = _step(d, is_int, log, lo, hi, path, errs)
    if step is MISSING:
        return None
    if log and lo <= 0:
        errs.add(where, f"a log range needs low > 0, got {lo}")
        return None
    for v in (lo, hi):
        _, msg = check(v)
        if msg:
            errs.add(where, f"{'low' if v == lo else 'high'} {v}: {msg}")
    p = IntParam(lo, hi, step or 1, log, default) if is_int else FloatParam(float(lo), float(hi), step, log, default)
    if default is not MISSING:
        if not is_int:
            default = as_number(default)
            p = replace(p, default=default)
        if not p.contains(default):
            errs.add(join(path, "default"), f"{d['default']!r} is outside {p.describe()}")
    return p


def _step(d: dict, is_int: bool, log: bool, lo: float, hi: float, path: str, errs: Errors) -> Any:
    if "step" not in d or d["step"] is None:
        return None
    where = join(path, "step")
    step = d["step"] if is_int else as_number(d["step"])
    if is_int and (isinstance(step, bool) or not isinstance(step, int)):
        step = None
    if step is None or step <= 0:
        errs.add(where, f"must be a positive {'integer' if is_int else 'number'}, got {show(d['step'])}")
        return MISSING
    if log and step != 1:
        errs.add(where, "a log range cannot have a step (Optuna samples log ranges continuously)")
        return MISSING
    q = (hi - lo) / step
    if abs(q - round(q)) > 1e-9:
        errs.add(where, f"high - low ({hi - lo:g}) must be a multiple of step {step:g}")
        return MISSING
    return step
