"""Config of sparse dimension tuning: the warm-up length, the frozen fractions and the tensors it tunes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ..config import MethodConfig, check_positive_int, is_finite_number

TARGETS = ("A_log", "B", "C")  # A_log, and the B / C rows of x_proj


def _check_fraction(value: Any, where: str) -> None:
    if not is_finite_number(value) or not 0 <= value < 1:
        raise ConfigError(f"{where}: must be a number in [0, 1) (the fraction frozen), got {value!r}")


@dataclass
class SdtConfig(MethodConfig):
    """SDT: after ``warmup_steps`` optimizer steps, freeze ``channel_freeze`` of the channels and, in A_log,
    ``state_freeze`` of each kept channel's states (ranked by how much the warm-up changed A_log); then train
    only the kept entries of ``targets``."""

    warmup_steps: int = 10
    channel_freeze: float = 0.99
    state_freeze: float = 0.75
    targets: Any = TARGETS  # a list of A_log, B, C

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive_int(self.warmup_steps, f"{where}.warmup_steps")
        _check_fraction(self.channel_freeze, f"{where}.channel_freeze")
        _check_fraction(self.state_freeze, f"{where}.state_freeze")
        t = self.targets
        if (not isinstance(t, (list, tuple)) or not t or not all(isinstance(x, str) for x in t)
                or not set(t) <= set(TARGETS) or len(set(t)) != len(t)):
            raise ConfigError(f"{where}.targets: must be a non-empty list of distinct names from "
                              f"{', '.join(TARGETS)}, got {t!r}")
        self.targets = tuple(x for x in TARGETS if x in t)  # one canonical form: the round trip compares equal


def kept(n: int, frozen: float) -> int:
    """How many of ``n`` channels or states stay trainable: ``n - round(frozen n)`` (the reference's rounding),
    at least one."""
    return max(1, n - round(frozen * n))
