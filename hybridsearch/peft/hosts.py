"""Where methods attach: a model's hosts (the model and its mixers), the layers a method selects and a mixer's
per-direction tensors. Shared by the method families' attach functions and by apply / merge."""

from __future__ import annotations

from torch import Tensor, nn

from .config import MethodConfig, parse_layers


def hosts(model: nn.Module) -> list[nn.Module]:
    """Every module with a ``peft`` ModuleDict: the model (model-level methods) and each mixer."""
    return [model, *model.mixers]


def selected_layers(model: nn.Module, cfg: MethodConfig, name: str) -> list[int]:
    """The layers method ``name`` attaches to (its ``layers`` spec, checked against the model's depth)."""
    return parse_layers(cfg.layers, len(model.mixers), f"methods.{name}.layers")


def per_direction(mixer: nn.Module, target: str) -> dict[str, Tensor]:
    """Scan direction -> the mixer's base tensor ``target`` (``"A_log"``, ``"x_proj.weight"``...)."""
    return {d: mixer.param(target, d) for d in mixer.directions}
