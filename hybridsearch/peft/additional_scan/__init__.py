"""Additional-scan: N' extra SSM state columns per channel in every selected mixer (see layer.py)."""

from __future__ import annotations

from torch import nn

from ..hosts import per_direction, selected_layers
from ..registry import register
from .config import AdditionalScanConfig
from .layer import AdditionalScan, ExtraStates


@register("additional_scan", AdditionalScanConfig, "Additional-scan: N' extra SSM states per channel")
def _attach_additional_scan(model: nn.Module, cfg: AdditionalScanConfig, name: str) -> None:
    for i in selected_layers(model, cfg, name):
        m = model.mixers[i]
        m.peft[name] = AdditionalScan(per_direction(m, "A_log"), cfg.states, cfg.position, cfg.init, cfg.constant,
                                      cfg.zero_init)


__all__ = ["AdditionalScan", "AdditionalScanConfig", "ExtraStates"]
