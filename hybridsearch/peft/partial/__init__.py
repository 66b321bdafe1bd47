"""Partial tuning of mixer tensors (A, D, conv1d, dt bias, Mamba-2's gated RMSNorm) and of Vim's cls token and
position embedding. Each mixer tensor is a part the mixer names (``peft_part``): ``dt_bias`` is dt_proj's bias on
Mamba-1 and the per-head ``dt_bias`` on Mamba-2; ``A_log`` is (E, N) on Mamba-1 and one entry per head on Mamba-2.

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


def _partial_attacher(parts: tuple[str, ...]) -> Attach:
    """parts[0] gets the delta; unfreeze trains every part (conv1d: weight and bias)."""

    def attach(model: nn.Module, cfg: PartialConfig, name: str) -> None:
        for i in selected_layers(model, cfg, name):
            m = model.mixers[i]
            targets = [m.peft_part(p).target for p in parts]
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


def _mixer_partial(name: str, parts: tuple[str, ...], description: str, config: type[PartialConfig] = PartialConfig
                   ) -> None:
    register(name, config, description, parts=parts)(_partial_attacher(parts))


_mixer_partial("tune_A", ("A_log",), "A-tuning: A_log (+ A_b_log; Mamba-2: one per head)")
_mixer_partial("tune_D", ("D",), "D-tuning: D (+ D_b)")
_mixer_partial("tune_conv1d", ("conv1d.weight", "conv1d.bias"),
               "Conv1d-tuning: conv1d weight (unfreeze: weight and bias)")
_mixer_partial("tune_dt_bias", ("dt_bias",), "Bias-tuning: dt_proj bias (Mamba-2: dt_bias)",
               with_defaults(PartialConfig, decay_mult=100.0))
_mixer_partial("tune_norm", ("norm",), "Norm-tuning: the gated RMSNorm weight (Mamba-2 only)")
register("tune_cls_token", PartialConfig, "CLS-token-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("cls_token")
)
register("tune_pos_embed", PartialConfig, "Pos-embed-tuning", kinds=("vim",), per_layer=False)(
    _model_partial_attacher("pos_embed")
)

__all__ = ["PartialConfig", "PartialDelta"]
