"""Config of the state-based methods: nothing beyond what every method has (``layers``, ``lr_mult``,
``decay_mult``); each starts at zero, so the adapted model starts as the base."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig


@dataclass
class StateConfig(MethodConfig):
    """State-offset, output-offset and initial-state tuning: one zero-initialised tensor per layer and direction."""
