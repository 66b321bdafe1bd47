"""Config of Additional-scan: how many extra state columns, where they go and how their A starts."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig, check_choice, check_number, check_positive_int


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
        check_positive_int(self.states, f"{where}.states")
        check_choice(self.position, ("prefix", "suffix"), f"{where}.position")
        check_choice(self.init, ("copy", "s4d", "constant"), f"{where}.init")
        check_number(self.constant, f"{where}.constant")
        check_choice(self.zero_init, (True, False), f"{where}.zero_init")
