"""The token methods: Prompt-tuning (tokens in the input sequence) and Affix-tuning (tokens in each mixer).

Both are model-level modules (``model.peft``); the model hands each mixer its layer's affix tokens.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ..hosts import selected_layers
from ..registry import register
from .config import AFFIX_PLACEMENTS, PROMPT_PLACEMENTS, AffixConfig, PromptConfig
from .layer import Affix, LayerAffix, PrefixEncoder, Prompt, insert, placement_order


@register("prompt", PromptConfig, "Prompt-tuning: learnable tokens in the input sequence", per_layer=False)
def _attach_prompt(model: nn.Module, cfg: PromptConfig, name: str) -> None:
    placement = cfg.placement or ("prefix_suffix" if model.kind == "vim" else "prefix")
    if model.kind == "lm" and placement != "prefix":
        raise ConfigError(f"methods.{name}.placement: the language model supports only 'prefix'")
    d = model.cfg.d_model
    model.peft[name] = Prompt(d, cfg.tokens, placement, cfg.projection)


@register("affix", AffixConfig, "Affix-tuning: tokens in each scan, outputs discarded")
def _attach_affix(model: nn.Module, cfg: AffixConfig, name: str) -> None:
    placement = cfg.placement or ("dual_prefix" if model.kind == "vim" else "single_prefix")
    if model.kind == "lm" and "dual" in placement:
        raise ConfigError(f"methods.{name}.placement: {placement!r} needs two scan directions; "
                          "the language model is unidirectional (use single_* or outer_single_prefix)")
    m0 = model.mixers[0]
    layers = selected_layers(model, cfg, name)
    # inner tokens live in in_proj's output space: (x, z) on Mamba-1, (z, x, B, C, dt) on Mamba-2
    model.peft[name] = Affix(layers, m0.d_model, m0.in_proj.out_features, cfg.tokens, placement, cfg.projection,
                             cfg.hidden)


__all__ = ["AFFIX_PLACEMENTS", "PROMPT_PLACEMENTS", "Affix", "AffixConfig", "LayerAffix", "PrefixEncoder", "Prompt",
           "PromptConfig", "insert", "placement_order"]
