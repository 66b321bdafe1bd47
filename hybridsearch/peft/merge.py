"""Folding methods into the base weights (``merge_peft``) and naming the ones that cannot be (``unmergeable``)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .hosts import hosts
from .hybrid import PeftConfig


def unmergeable(model: nn.Module) -> list[str]:
    """Methods of ``model`` that ``merge_peft`` cannot fold into the base weights exactly."""
    return sorted({m.method for h in hosts(model) for m in h.peft.values() if not m.mergeable})


@torch.no_grad()
def merge_peft(model: nn.Module, strict: bool = True) -> nn.Module:
    """Fold every exactly-foldable method into the base weights and return the plain base model.

    Activation-branch LoRAs are folded with dropout off (the eval-mode function). Methods that change the
    architecture (prompt, affix, additional_scan, parallel_adapter, the LM's tied LoRA(embed)) cannot be
    folded: with ``strict`` that is an error naming them; otherwise they stay attached.
    """
    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise ConfigError("merge_peft: the model has no PEFT methods applied")
    blocked = unmergeable(model)
    if blocked and strict:
        raise ConfigError(f"merge_peft: cannot fold {', '.join(blocked)} into the base weights exactly; "
                          "deploy with load_adapters instead, or pass strict=False to fold the rest")
    for host in hosts(model):
        # every delta is defined on the unmerged tensors, as in forward (DoRA renormalises W + dW), so fold each
        # method from the original tensors and add the changes up; model-level methods are purely additive
        own = [p for n, p in host.named_parameters() if "peft" not in n.split(".")] if host is not model else []
        orig, change = [p.clone() for p in own], [torch.zeros_like(p) for p in own]
        for name in [n for n, m in host.peft.items() if m.mergeable]:
            host.peft[name].merge(host)
            for p, o, c in zip(own, orig, change):
                c += p - o
                p.copy_(o)
            del host.peft[name]
        for p, c in zip(own, change):
            p += c
    remaining = {n: c for n, c in cfg.methods.items() if n in blocked}
    model.peft_config = PeftConfig(remaining) if remaining else None
    if not remaining:
        model._peft_unfrozen = {}
        for p in model.parameters():
            p.requires_grad_(True)
    return model
