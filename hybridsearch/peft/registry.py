"""The method registry: every PEFT method by its pinned name, with its config class, attach function and source
(the paper and year it comes from).

Each method family registers its methods when ``hybridsearch.peft`` imports it. Registration order is the
canonical order in which a hybrid is applied and exported, so ``peft/__init__.py`` fixes the family order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from ..registry import Registry
from .config import MethodConfig

MAMBAPEFT = "MambaPEFT (Yoshimura et al., ICLR 2025, arXiv 2411.03855)"
SDT = "SDT / SDLoRA (Galim et al., ICML 2025, arXiv 2410.09016)"
STATE_TUNING = "State-based PEFT: state-offset tuning (Kang et al., ACL 2025, arXiv 2503.03499)"

Attach = Callable[[nn.Module, Any, str], None]  # (model, the method's config, method name) -> attaches modules
A = TypeVar("A", bound=Attach)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[MethodConfig]
    attach: Attach
    description: str
    kinds: tuple[str, ...] = ("vim", "lm")
    per_layer: bool = True  # honours ``layers``
    source: str = MAMBAPEFT
    parts: tuple[str, ...] = ()  # the mixer parts it needs (models/hooks.py Part); a mixer without one refuses it

    def defaults(self, **overrides: Any) -> MethodConfig:
        return self.config(**overrides)


METHODS: Registry[MethodSpec] = Registry("PEFT method")


def register(name: str, config: type[MethodConfig], description: str, kinds: tuple[str, ...] = ("vim", "lm"),
             per_layer: bool = True, source: str = MAMBAPEFT, parts: tuple[str, ...] = ()) -> Callable[[A], A]:
    """Decorator registering an attach function as method ``name``."""

    def deco(fn: A) -> A:
        METHODS.register(name, MethodSpec(name, config, fn, description, kinds, per_layer, source, parts))
        return fn

    return deco


def with_defaults(cls: type[MethodConfig], **defaults: Any) -> type[MethodConfig]:
    """A config subclass with different defaults (the reference's per-method defaults), same class name."""
    fields = [(k, type(v), dataclasses.field(default=v)) for k, v in defaults.items()]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
