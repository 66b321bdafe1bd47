"""Exact parameter counts: of a built model (``count_parameters``) and of a model name + hybrid without any
weights (``count_config``, on the meta device). This is the one meta-device counting path."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..models import create_model
from .apply import apply_peft, method_of
from .hybrid import PeftConfig
from .lifecycle import transient_names
from .registry import METHODS


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"base", "trainable", "head", "by_method"}``: exact counts (tied tensors counted once). A method's
    transient warm-up tensors (sparse dimension tuning's full-size A_log delta) are not its adapters: not counted."""
    seen: set[int] = set()
    transient = transient_names(model)
    base = trainable = head = 0
    by_method: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen or name in transient:
            continue
        seen.add(id(p))
        owner = method_of(model, name, p)
        n = p.numel()
        if "peft" not in name.split("."):  # base architecture, including tensors unfrozen by partial tuning
            base += n
        if p.requires_grad:
            trainable += n
            if owner == "head":
                head += n
            elif owner != "base":
                by_method[owner] = by_method.get(owner, 0) + n
        if owner in METHODS and owner not in by_method and p.requires_grad:
            by_method[owner] = 0
    if getattr(model, "peft_config", None) is not None:
        for name in model.peft_config.methods:
            by_method.setdefault(name, 0)
    return {"base": base, "trainable": trainable, "head": head, "by_method": by_method}


# (model name or path, num_classes) -> a meta-device model with no methods; building one is the slow part
# (a search counts thousands of configs), a deepcopy of it is cheap
_TEMPLATES: dict[tuple[str, int | None], nn.Module] = {}


def _meta_model(model_name: str, num_classes: int | None) -> nn.Module:
    key = (str(model_name), num_classes)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = create_model(model_name, num_classes=num_classes, device="meta")
    return copy.deepcopy(_TEMPLATES[key])


def count_config(model_name: str, config: PeftConfig | dict, num_classes: int | None = None) -> dict[str, Any]:
    """Exact counts for ``model_name`` + ``config`` on the meta device: no weights are allocated."""
    model = _meta_model(model_name, num_classes)
    apply_peft(model, config if isinstance(config, PeftConfig) else PeftConfig.from_dict(config))
    return count_parameters(model)
