"""Sparse dimension tuning, SDT (Galim et al., ICML 2025): a warm-up, then a few channels and states (layer.py)."""

from __future__ import annotations

from torch import nn

from ..hosts import per_direction, selected_layers
from ..registry import SDT, register
from .config import TARGETS, SdtConfig, kept
from .layer import SparseDimensions


@register("sdt", SdtConfig, "Sparse dimension tuning: a warm-up ranks channels and states, a few of them train",
          source=SDT)
def _attach_sdt(model: nn.Module, cfg: SdtConfig, name: str) -> None:
    for i in selected_layers(model, cfg, name):
        m = model.mixers[i]
        m.peft[name] = SparseDimensions(per_direction(m, "A_log"), m.dt_rank, cfg)


__all__ = ["TARGETS", "SdtConfig", "SparseDimensions", "kept"]
