"""Configs of the LoRA family: ``LoraConfig`` (every LoRA and LoRA(embed)) and ``AdapterConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ..config import MethodConfig, check_number, check_rank, layer_ranges


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
                check_rank(v, f"{where}.rank[{k!r}]")
                layer_ranges(str(k), f"{where}.rank[{k!r}]")
        else:
            check_rank(self.rank, f"{where}.rank")
        check_number(self.scale, f"{where}.scale")
        check_number(self.dropout, f"{where}.dropout", 0.0, lo_inclusive=True)
        if self.dropout >= 1:
            raise ConfigError(f"{where}.dropout: must be < 1, got {self.dropout!r}")
        if not isinstance(self.dora, bool):
            raise ConfigError(f"{where}.dora: must be true or false, got {self.dora!r}")


@dataclass
class AdapterConfig(LoraConfig):
    """ParallelAdapter: like LoRA with a ReLU between down and up; beside out_proj."""
