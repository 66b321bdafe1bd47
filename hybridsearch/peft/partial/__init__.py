"""Partial tuning of mixer tensors (A, D, conv1d, dt bias) and of Vim's cls token and position embedding.

``mode: unfreeze`` trains a base tensor in place: ``model._peft_unfrozen`` (parameter id -> method) is how
counting and the optimizer groups tell it apart from the rest of the frozen base.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ..hosts import per_direction, selected_layers
from ..registry import Attach, register, with_defaults
from .config import PartialConfig
from .layer import PartialDelta


def _partial_attacher(targets: tuple[str, ...]) -> Attach:
    """targets[0] gets the delta; unfreeze trains every target (conv1d: weight and bias)."""

    def attach(model: nn.Module, cfg: PartialConfig, name: str) -> None:
        for i in selected_layers(model, cfg, name):
            m = model.mixers[i]
            if cfg.mode == "delta":
                m.peft[name] = PartialDelta(name, targets[0], per_direction(m, targets[0]))
            else:
                for t in targets:
                    for d in m.directions:
                        _unfreeze(model, m.param(t, d), name)

    return attach


def _unfreeze(model: nn.Module, p: nn.Parameter, method: str) -> None:
    p.requires_grad_(True)
    model._peft_unfrozen[id(p)] = method


def _model_partial_attacher(target: str) -> Attach:
    def attach(model: nn.Module, cfg: PartialConfig, name: str) -> None:
        if model.kind != "vim":
            raise ConfigError(f"methods.{name}: applies to Vision Mamba only (the LM has no {target})")
        if cfg.mode == "delta":
            model.peft[name] = PartialDelta(name, target, {"f": getattr(model, target)})
        else:
            _unfreeze(model, getattr(model, target), name)

    return attach


register("tune_A", PartialConfig, "A-tuning: A_log (+ A_b_log)")(_partial_attacher(("A_log",)))
register("tune_D", PartialConfig, "D-tuning: D (+ D_b)")(_partial_attacher(("D",)))
register("tune_conv1d", PartialConfig, "Conv1d-tuning: conv1d weight (unfreeze: weight and bias)")(
    _partial_attacher(("conv1d.weight", "conv1d.bias"))
)
register("tune_dt_bias", with_defaults(PartialConfig, decay_mult=100.0), "Bias-tuning: dt_proj bias")(
    _partial_attacher(("dt_proj.bias",))
)
register("tune_cls_token", PartialConfig, "CLS-token-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("cls_token")
)
register("tune_pos_embed", PartialConfig, "Pos-embed-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("pos_embed")
)

__all__ = ["PartialConfig", "PartialDelta"]
