"""The hybrid PEFT config: one YAML document mapping method names to their settings.

    methods:
      lora_X: {rank: 64, scale: 0.1}
      additional_scan: {states: 6, position: prefix, init: copy}
      affix: {tokens: 3, placement: dual_prefix, projection: false}
      tune_A: {}
      lora_out_proj: {rank: 8, layers: "12-23"}

Each method's settings are its family's config (see config.py for what every method accepts). Unknown methods
or fields, wrong types and out-of-range values raise ``ConfigError`` naming the key path and allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..safeio import load_yaml
from .config import MethodConfig, make_method_config
from .registry import METHODS


@dataclass
class PeftConfig:
    """A hybrid: method name -> its config, applied in the registry's canonical order."""

    methods: dict[str, MethodConfig] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "<dict>") -> PeftConfig:
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping with key 'methods', got {type(d).__name__}")
        extra = set(d) - {"methods"}
        if extra:
            raise ConfigError(f"{source}: unknown top-level key(s) {sorted(map(str, extra))}; allowed: methods")
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
        """Read a PEFT config file: YAML read by ``safeio.load_yaml`` (duplicate keys, alias bombs, deep nesting
        and files over its size cap are refused with one line), then checked as ``from_dict``."""
        return cls.from_dict(load_yaml(Path(path), error=ConfigError, what="PEFT config"), str(path))

    def to_dict(self) -> dict[str, Any]:
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
