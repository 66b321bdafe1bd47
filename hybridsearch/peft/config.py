"""The hybrid PEFT config: one YAML document mapping method names to their settings.

    methods:
      lora_X: {rank: 64, scale: 0.1}
      additional_scan: {states: 6, position: prefix, init: copy}
      affix: {tokens: 3, placement: dual_prefix, projection: false}
      tune_A: {}
      lora_out_proj: {rank: 8, layers: "12-23"}

Every method accepts ``layers`` (``all``, ``"a-b"``, an int or a list of those), ``lr_mult`` and
``decay_mult``. ``rank`` may also map layer ranges to ranks (``{"0-11": 4, "12-23": 16}``). Unknown methods
or fields, wrong types and out-of-range values raise ``ConfigError`` naming the key path and allowed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

LayerSpec = Any  # "all" | "a-b" | int | list[int | "a-b"]


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


def _check_rank(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: rank must be a positive integer, got {value!r}")


@dataclass
class MethodConfig:
    """Fields every method has. Subclasses add their own with the reference's defaults."""

    layers: LayerSpec = "all"
    lr_mult: float = 1.0
    decay_mult: float = 1.0

    def validate(self, where: str) -> None:
        for name in ("lr_mult", "decay_mult"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}.{name}: must be a number >= 0, got {v!r}")
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


def _choice(value: Any, allowed: tuple, where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {value!r}")


def _number(value: Any, where: str, lo: float = 0.0, lo_inclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < lo or (value == lo and not lo_inclusive):
        raise ConfigError(f"{where}: must be a number {'>=' if lo_inclusive else '>'} {lo}, got {value!r}")


@dataclass
class LoraConfig(MethodConfig):
    """LoRA family: ``down`` (in -> rank) then ``up`` (rank -> out, zero init), output times ``scale``."""

    rank: int | dict[str, int] = 8
    scale: float = 0.1
    dropout: float = 0.1
    dora: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        if isinstance(self.rank, dict):
            if not self.rank:
                raise ConfigError(f"{where}.rank: an empty mapping selects no layer")
            for k, v in self.rank.items():
                _check_rank(v, f"{where}.rank[{k!r}]")
                layer_ranges(str(k), f"{where}.rank[{k!r}]")
        else:
            _check_rank(self.rank, f"{where}.rank")
        _number(self.scale, f"{where}.scale")
        _number(self.dropout, f"{where}.dropout", 0.0, lo_inclusive=True)
        if self.dropout >= 1:
            raise ConfigError(f"{where}.dropout: must be < 1, got {self.dropout!r}")
        if not isinstance(self.dora, bool):
            raise ConfigError(f"{where}.dora: must be true or false, got {self.dora!r}")


@dataclass
class AdapterConfig(LoraConfig):
    """ParallelAdapter: like LoRA with a ReLU between down and up; beside out_proj."""


PROMPT_PLACEMENTS = ("prefix", "suffix", "infix", "prefix_suffix")
_INNER = ("prefix", "suffix", "infix", "centfix", "centfix_v2")
AFFIX_PLACEMENTS = tuple(f"{s}_{p}" for s in ("single", "dual") for p in _INNER) + (
    "outer_single_prefix",
    "outer_dual_prefix",
)


@dataclass
class PromptConfig(MethodConfig):
    """Prompt-tuning: ``tokens`` learnable tokens in the input embedding space.

    ``placement`` defaults to ``prefix_suffix`` on Vim and ``prefix`` (the only one it supports) on the LM.
    """

    tokens: int = 8
    placement: str | None = None
    projection: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive_int(self.tokens, f"{where}.tokens")
        if self.placement is not None:
            _choice(self.placement, PROMPT_PLACEMENTS, f"{where}.placement")
        _choice(self.projection, (True, False), f"{where}.projection")


@dataclass
class AffixConfig(MethodConfig):
    """Affix-tuning: tokens entering each mixer's scan (``inner``) or its input (``outer_*``), outputs dropped.

    ``placement`` defaults to ``dual_prefix`` on Vim and ``single_prefix`` on the (unidirectional) LM.
    """

    tokens: int = 3
    placement: str | None = None
    projection: bool = False
    hidden: int | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive_int(self.tokens, f"{where}.tokens")
        if self.placement is not None:
            _choice(self.placement, AFFIX_PLACEMENTS, f"{where}.placement")
        _choice(self.projection, (True, False), f"{where}.projection")
        if self.hidden is not None:
            _positive_int(self.hidden, f"{where}.hidden")


@dataclass
class AdditionalScanConfig(MethodConfig):
    """Additional-scan: ``states`` extra SSM state columns per channel with their own A and B/C projection."""

    states: int = 6
    position: str = "prefix"
    init: str = "copy"
    constant: float = 1.0
    zero_init: bool = False
    decay_mult: float = 1.0

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive_int(self.states, f"{where}.states")
        _choice(self.position, ("prefix", "suffix"), f"{where}.position")
        _choice(self.init, ("copy", "s4d", "constant"), f"{where}.init")
        _number(self.constant, f"{where}.constant")
        _choice(self.zero_init, (True, False), f"{where}.zero_init")


@dataclass
class PartialConfig(MethodConfig):
    """Partial tuning: ``delta`` learns a zero-init additive delta (decayed toward the pretrained value,
    the paper's v2); ``unfreeze`` trains the original tensor (v1)."""

    mode: str = "delta"
    decay_mult: float = 10.0

    def validate(self, where: str) -> None:
        super().validate(where)
        _choice(self.mode, ("delta", "unfreeze"), f"{where}.mode")


@dataclass
class PeftConfig:
    """A hybrid: method name -> its config, applied in the registry's canonical order."""

    methods: dict[str, MethodConfig] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "<dict>") -> PeftConfig:
        from .methods import METHODS

        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping with key 'methods', got {type(d).__name__}")
        extra = set(d) - {"methods"}
        if extra:
            raise ConfigError(f"{source}: unknown top-level key(s) {sorted(extra)}; allowed: methods")
        raw = d.get("methods") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: methods: expected a mapping of method name -> settings")
        methods: dict[str, MethodConfig] = {}
        for name, settings in raw.items():
            where = f"{source}: methods.{name}"
            if name not in METHODS:
                raise ConfigError(f"{where}: unknown method; allowed: {', '.join(METHODS.names())}")
            methods[name] = make_method_config(METHODS.get(name).config, settings or {}, where)
        return cls(methods)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PeftConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"{path}: malformed YAML{at}: {getattr(e, 'problem', None) or e}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        from .methods import METHODS

        order = [n for n in METHODS.names() if n in self.methods]
        return {"methods": {n: _compact(self.methods[n]) for n in order}}

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text


def _compact(cfg: MethodConfig) -> dict[str, Any]:
    """Every field (explicit beats implicit in an exported config), with tuples as lists."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()}


def make_method_config(cls: type[MethodConfig], settings: Any, where: str) -> MethodConfig:
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {settings!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in settings if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    cfg = cls(**settings)
    cfg.validate(where)
    return cfg
