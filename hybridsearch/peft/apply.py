"""Attaching a hybrid to a model (``apply_peft``), telling which method owns a parameter (``method_of``) and
the optimizer groups with each method's ``lr_mult`` / ``decay_mult`` (``param_groups``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models.transformers_interop import is_transformers_object, mamba_lm_from_object
from .hosts import hosts
from .hybrid import PeftConfig
from .registry import METHODS


def _check_parts(model: nn.Module, config: PeftConfig) -> None:
    """Refuse a method whose mixer part this model lacks (Mamba-2 has no dt_proj, Mamba-1 no gated norm), in one
    line, before anything changes."""
    mixer = model.mixers[0]
    for name in config.methods:
        spec = METHODS.get(name)
        missing = [p for p in spec.parts if mixer.peft_part(p) is None]
        if missing and model.kind in spec.kinds:
            has = [n for n in METHODS.names() if model.kind in METHODS.get(n).kinds
                   and all(mixer.peft_part(p) is not None for p in METHODS.get(n).parts)]
            raise ConfigError(f"methods.{name}: this model's {mixer.layer} mixer has no {', '.join(missing)}; "
                              f"allowed there: {', '.join(has)}")


def apply_peft(model: nn.Module, config: PeftConfig | dict | str | Path) -> nn.Module:
    """Freeze the base, attach every method of ``config`` (canonical order), keep the classifier head trainable.

    Returns the adapted model. A transformers ``MambaForCausalLM`` is first converted exactly into a new
    hybridsearch ``MambaLM`` (as ``create_model(obj)``), and that one is adapted and returned: use the return
    value, as with PEFT's ``get_peft_model``; the transformers object is left as it was."""
    if getattr(model, "kind", None) not in ("vim", "lm"):
        if not is_transformers_object(model):
            raise ConfigError(f"apply_peft: expects a model from hybridsearch.create_model or a transformers "
                              f"MambaForCausalLM, got a {type(model).__name__}")
        model = mamba_lm_from_object(model)
    if not isinstance(config, PeftConfig):
        config = PeftConfig.from_dict(config) if isinstance(config, dict) else PeftConfig.from_yaml(config)
    if getattr(model, "peft_config", None) is not None:
        raise ConfigError("this model already has PEFT methods applied; build a fresh model to apply another")
    _check_parts(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    model._peft_unfrozen = {}
    device = next(model.parameters()).device  # new tensors live with the base (meta: nothing is allocated)
    for name in METHODS.names():
        if name not in config.methods:
            continue
        spec, cfg = METHODS.get(name), config.methods[name]
        if model.kind not in spec.kinds:
            raise ConfigError(f"methods.{name}: not available for this model (applies to {', '.join(spec.kinds)})")
        if not spec.per_layer and cfg.layers != "all":
            raise ConfigError(f"methods.{name}.layers: {name} is not per layer; remove 'layers'")
        with torch.device(device):
            spec.attach(model, cfg, name)
    for host in hosts(model):  # new method parameters are the trainable ones
        for p in host.peft.parameters():
            p.requires_grad_(True)
    if model.kind == "vim":
        model.head.requires_grad_(True)
    model.peft_config = config
    return model


def method_of(model: nn.Module, name: str, param: nn.Parameter) -> str:
    """Which method (or ``head`` / ``base``) a parameter belongs to, by exact path segment, never substring."""
    parts = name.split(".")
    if "peft" in parts:
        return parts[parts.index("peft") + 1]
    unfrozen = getattr(model, "_peft_unfrozen", {})
    if id(param) in unfrozen:
        return unfrozen[id(param)]
    if parts[0] == "head":
        return "head"
    return "base"


_NO_DECAY_NAMES = ("A_log", "A_b_log", "cls_token", "pos_embed")


def _plain_no_decay(name: str, p: nn.Parameter) -> bool:
    """Full fine-tuning / head: no decay on norms, biases, tokens, A_log and D (the reference's rule)."""
    return p.ndim < 2 or name.split(".")[-1] in _NO_DECAY_NAMES


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 head_decay_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups with each method's ``lr_mult`` / ``decay_mult``. Pretrained-style tensors (A_log, norms,
    biases, DoRA magnitudes, unfrozen v1 tensors) get no decay; v2 deltas are decayed toward zero."""
    cfg = getattr(model, "peft_config", None)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    module_of = dict(model.named_modules())  # "layers.0.mixer.peft.additional_scan" -> its PeftModule
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = method_of(model, name, p)
        mc = cfg.methods.get(owner) if cfg is not None else None
        lr_mult = mc.lr_mult if mc else (head_lr_mult if owner == "head" else 1.0)
        decay = weight_decay * (mc.decay_mult if mc else (head_decay_mult if owner == "head" else 1.0))
        local = name.split(".")
        no_decay = owner in ("base", "head") and _plain_no_decay(name, p)
        no_decay = no_decay or id(p) in getattr(model, "_peft_unfrozen", {})
        if "peft" in local:
            mod_path = ".".join(local[: local.index("peft") + 2])
            pm = module_of.get(mod_path)
            no_decay = no_decay or any(t in local for t in getattr(pm, "no_decay", ()))
        key = (lr * lr_mult, 0.0 if no_decay else decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in groups.items()]
