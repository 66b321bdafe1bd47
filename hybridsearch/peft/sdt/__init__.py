"""Sparse dimension tuning, SDT (Galim et al., ICML 2025): a warm-up, then a few channels and states (layer.py);
on Mamba-2 a few heads of A_log and states of B / C (heads.py)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...models.hooks import PeftModule
from ..hosts import per_direction, selected_layers
from ..registry import SDT, register
from .config import TARGETS, SdtConfig, kept
from .heads import SparseHeads
from .layer import SparseDimensions

_FORMS: dict[str, Callable[[nn.Module, SdtConfig], PeftModule]] = {
    "Mamba1": lambda m, cfg: SparseDimensions(per_direction(m, "A_log"), m.dt_rank, cfg),
    "Mamba2": SparseHeads,
}


@register("sdt", SdtConfig, "Sparse dimension tuning: a warm-up ranks channels and states, a few of them train",
          source=SDT)
def _attach_sdt(model: nn.Module, cfg: SdtConfig, name: str) -> None:
    for i in selected_layers(model, cfg, name):
        m = model.mixers[i]
        m.peft[name] = _FORMS[m.layer](m, cfg)


__all__ = ["TARGETS", "SdtConfig", "SparseDimensions", "SparseHeads", "kept"]
