"""Additional-scan: N' extra SSM states in every selected mixer: per channel on Mamba-1 (layer.py), per head with
their own scan on Mamba-2 (heads.py)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...models.hooks import PeftModule
from ..hosts import per_direction, selected_layers
from ..registry import register
from .config import AdditionalScanConfig
from .heads import AdditionalHeadScan, ExtraHeadStates, check_heads_config
from .layer import AdditionalScan, ExtraStates


def _mamba1(m: nn.Module, cfg: AdditionalScanConfig, where: str) -> PeftModule:
    return AdditionalScan(per_direction(m, "A_log"), cfg.states, cfg.position, cfg.init, cfg.constant, cfg.zero_init)


def _mamba2(m: nn.Module, cfg: AdditionalScanConfig, where: str) -> PeftModule:
    check_heads_config(cfg, where)
    return AdditionalHeadScan(m.A_log, m.d_inner, cfg)


_FORMS: dict[str, Callable[[nn.Module, AdditionalScanConfig, str], PeftModule]] = {"Mamba1": _mamba1,
                                                                                   "Mamba2": _mamba2}


@register("additional_scan", AdditionalScanConfig, "Additional-scan: N' extra SSM states per channel (Mamba-2: "
          "per head, own A)")
def _attach_additional_scan(model: nn.Module, cfg: AdditionalScanConfig, name: str) -> None:
    for i in selected_layers(model, cfg, name):
        m = model.mixers[i]
        m.peft[name] = _FORMS[m.layer](m, cfg, f"methods.{name}")


__all__ = ["AdditionalHeadScan", "AdditionalScan", "AdditionalScanConfig", "ExtraHeadStates", "ExtraStates"]
