"""Config of partial tuning: learn a delta (v2) or unfreeze the tensor (v1)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig, check_choice


@dataclass
class PartialConfig(MethodConfig):
    """Partial tuning: ``delta`` learns a zero-init additive delta (decayed toward the pretrained value,
    the paper's v2); ``unfreeze`` trains the original tensor (v1)."""

    mode: str = "delta"
    decay_mult: float = 10.0

    def validate(self, where: str) -> None:
        super().validate(where)
        check_choice(self.mode, ("delta", "unfreeze"), f"{where}.mode")
