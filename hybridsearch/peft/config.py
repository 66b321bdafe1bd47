"""What every method's config shares: the ``MethodConfig`` base, layer specs and the value checks.

Every method accepts ``layers`` (``all``, ``"a-b"``, an int or a list of those), ``lr_mult`` and
``decay_mult``. ``rank`` may also map layer ranges to ranks (``{"0-11": 4, "12-23": 16}``). Unknown fields,
wrong types and out-of-range values raise ``ConfigError`` naming the key path and allowed values.
Method families subclass ``MethodConfig`` in their own ``config.py``; the hybrid is in ``hybrid.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

LayerSpec = Any  # "all" | "a-b" | int | list[int | "a-b"]
MAX_SIZE = 65_536  # ranks, token and state counts: beyond any model's width (and torch's int64 sizes stay safe)


def layer_ranges(spec: LayerSpec, where: str = "layers") -> list[tuple[int, int]] | None:
    """Syntax check of a layer spec: inclusive (lo, hi) ranges, or None for all layers. Expands nothing."""
    if spec is None or spec == "all":
        return None
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        raise ConfigError(f"{where}: an empty list selects no layer; use 'all', an int, 'a-b' or a list of those")
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"{where}: {item!r} is not a layer; allowed: all, an int, 'a-b' or a list of those")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and "-" in item.strip()[1:]:
            try:
                lo, hi = (int(p) for p in item.split("-", 1))
            except ValueError:
                raise ConfigError(f"{where}: cannot parse {item!r}; expected 'a-b' with integers a <= b") from None
        elif isinstance(item, str) and item.strip().isdigit():
            lo = hi = int(item)
        else:
            raise ConfigError(f"{where}: {item!r} is not a layer; allowed: all, an int, 'a-b' or a list of those")
        if lo > hi:
            raise ConfigError(f"{where}: range {item!r} has min > max")
        if lo < 0:
            raise ConfigError(f"{where}: {item!r} is negative; layers count from 0")
        out.append((lo, hi))
    return out


def parse_layers(spec: LayerSpec, depth: int, where: str = "layers") -> list[int]:
    """Resolve a layer spec to sorted layer indices, checking them against ``depth``."""
    ranges = layer_ranges(spec, where)
    if ranges is None:
        return list(range(depth))
    chosen: set[int] = set()
    for lo, hi in ranges:
        if hi >= depth:
            raise ConfigError(f"{where}: {lo}-{hi} is outside the model's layers 0-{depth - 1}")
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


# -- value checks (each raises ConfigError naming ``where``) ----------------------------------------------------
def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else f"{type(value).__name__} {r[:30]}..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank(value: Any, where: str) -> None:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{where}: rank must be a positive integer, got {_show(value)}")
    if value > MAX_SIZE:
        raise ConfigError(f"{where}: rank must be an integer between 1 and {MAX_SIZE:,}, got {_show(value)}")


def check_choice(value: Any, allowed: tuple, where: str) -> None:
    """``value`` must be one of ``allowed`` with its type: 1 is not True, 0.0 is not False."""
    if not any(value == a and type(value) is type(a) for a in allowed):
        raise ConfigError(f"{where}: {_show(value)} is not allowed; allowed: {', '.join(map(str, allowed))}")


def check_positive_int(value: Any, where: str) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_SIZE:
        raise ConfigError(f"{where}: must be an integer between 1 and {MAX_SIZE:,}, got {_show(value)}")


def is_finite_number(value: Any) -> bool:
    """An int or float that is finite (an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_number(value: Any, where: str, lo: float = 0.0, lo_inclusive: bool = False) -> None:
    if not is_finite_number(value) or value < lo or (value == lo and not lo_inclusive):
        raise ConfigError(f"{where}: must be a finite number {'>=' if lo_inclusive else '>'} {lo:g}, "
                          f"got {_show(value)}")


@dataclass
class MethodConfig:
    """Fields every method has. Subclasses add their own with the reference's defaults."""

    layers: LayerSpec = "all"
    lr_mult: float = 1.0
    decay_mult: float = 1.0

    def validate(self, where: str) -> None:
        for name in ("lr_mult", "decay_mult"):
            check_number(getattr(self, name), f"{where}.{name}", 0.0, lo_inclusive=True)
        layer_ranges(self.layers, f"{where}.layers")  # syntax only; the range is checked on apply

    def layer_ranks(self, depth: int, where: str) -> dict[int, int]:
        """layer -> rank for rank-bearing methods (``rank`` int or mapping), restricted to ``layers``."""
        chosen = set(parse_layers(self.layers, depth, f"{where}.layers"))
        rank = self.rank  # type: ignore[attr-defined]
        if isinstance(rank, dict):
            out = {}
            for spec, r in rank.items():
                for i in parse_layers(str(spec), depth, f"{where}.rank[{spec!r}]"):
                    if i in chosen:
                        out[i] = r
            return out
        return dict.fromkeys(sorted(chosen), rank)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def make_method_config(cls: type[MethodConfig], settings: Any, where: str) -> MethodConfig:
    """Build and validate ``cls`` from a settings mapping, naming unknown fields and the allowed ones."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {settings!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in settings if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    cfg = cls(**settings)
    cfg.validate(where)
    return cfg
