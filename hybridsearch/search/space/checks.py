"""The checks a search space is read with: every problem is collected (``Errors``) with its key path, and
reported at once as one ``SpaceError``; a check maps a value to (normalised value, error or None)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import ConfigError

MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()
MAX_INT = 2**53  # beyond this an int is no count or size of anything real (and stops being exact as a float)
MAX_SEED = 2**32 - 1  # numpy's RandomState, which Optuna's samplers seed, takes 0 .. 2**32 - 1
MAX_COUNT = 1_000_000  # trials, epochs, classes: far beyond any real search
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class SpaceError(ConfigError):
    """Every problem found in a space; ``errors`` holds one ``file: key.path: problem; allowed ...`` each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        more = f" (+{len(errors) - 1} more; `hybridsearch validate` lists them all)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.errors,))


class Errors:
    """Collects errors instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []
        self.seen: set[tuple[str, str]] = set()

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}")


def join(path: str, key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def show(v: Any) -> str:
    kind = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping"}.get(type(v), type(v).__name__)
    return f"{v!r} ({kind})" if not isinstance(v, (list, dict)) else kind


Check = Callable[[Any], tuple[Any, "str | None"]]


def as_number(v: Any) -> float | int | None:
    """A finite int/float; numeric strings too (PyYAML reads ``1e-3`` as a string). An int too large for a float
    (``math.isfinite`` would raise) is no number either."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):
        v = float(v)
    if isinstance(v, int) and abs(v) > MAX_INT:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None


def c_int(lo: int = 0, null: bool = False, hi: int = MAX_INT) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if v is None and null:
            return v, None
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"must be an integer{' or null' if null else ''}, got {show(v)}"
        if not lo <= v <= hi:
            return v, f"must be an integer between {lo:,} and {hi:,}, got {_short_int(v)}"
        return v, None

    return check


def _short_int(v: int) -> str:
    return str(v) if abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"


def c_float(lo: float | None = None, open_lo: bool = False, null: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if v is None and null:
            return v, None
        n = as_number(v)
        want = f"a number{'' if lo is None else (' > ' if open_lo else ' >= ') + str(lo)}{' or null' if null else ''}"
        if n is None or (lo is not None and (n < lo or (open_lo and n == lo))):
            return v, f"must be {want}, got {show(v)}"
        return n, None

    return check


def c_choice(*allowed: Any) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        ok = any(v == a and type(v) is type(a) for a in allowed)
        return v, None if ok else f"{show(v)} is not allowed; allowed: {', '.join(map(str, allowed))}"

    return check


def c_bool() -> Check:
    return c_choice(True, False)


def c_str(null: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if (v is None and null) or (isinstance(v, str) and v.strip()):
            return v, None
        return v, f"must be a non-empty string{' or null' if null else ''}, got {show(v)}"

    return check


def mapping(raw: Any, path: str, errs: Errors, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """``raw`` as a dict restricted to ``allowed`` keys; unknown and missing keys are errors."""
    allowed = tuple(allowed)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errs.add(path, f"expected a mapping with keys {', '.join(allowed)}, got {show(raw)}")
        raw = {}
    for k in raw:
        if k not in allowed:
            errs.add(join(path, k), f"unknown key; allowed: {', '.join(allowed)}")
    for k in required:
        if k not in raw:
            errs.add(join(path, k), "required key is missing")
    return {k: v for k, v in raw.items() if k in allowed}


def get(d: dict, key: str, path: str, errs: Errors, check: Check, default: Any = None) -> Any:
    if key not in d:
        return default
    v, msg = check(d[key])
    if msg:
        errs.add(join(path, key), msg)
        return default
    return v
