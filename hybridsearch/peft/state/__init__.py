"""State-based tuning (Kang et al., ACL 2025): state-offset, output-offset and initial-state tuning (layer.py)."""

from __future__ import annotations

from torch import nn

from ...models.hooks import PeftModule
from ..hosts import selected_layers
from ..registry import STATE_TUNING, Attach, register
from .config import StateConfig
from .layer import InitialState, OutputOffset, StateOffset

_KINDS = {"state_offset": StateOffset, "output_offset": OutputOffset, "init_state": InitialState}
_DESCRIPTIONS = {
    "state_offset": "State-offset tuning: the output reads C_t (h_t + h'), h' trained",
    "output_offset": "Output-offset tuning: a trained offset y' on each step's output",
    "init_state": "Initial-state tuning: the scan starts from a trained h_0",
}


def _attacher(cls: type[PeftModule]) -> Attach:
    def attach(model: nn.Module, cfg: StateConfig, name: str) -> None:
        for i in selected_layers(model, cfg, name):
            m = model.mixers[i]
            m.peft[name] = cls(m.directions, m.state_shape, m.d_inner, m.param("A_log", "f").device)

    return attach


for _name, _cls in _KINDS.items():
    register(_name, StateConfig, _DESCRIPTIONS[_name], source=STATE_TUNING)(_attacher(_cls))

__all__ = ["InitialState", "OutputOffset", "StateConfig", "StateOffset"]
