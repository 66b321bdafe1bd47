"""The protocol every PEFT module speaks with its host (a Mamba mixer or a whole model).

A host keeps its method modules in ``host.peft`` (an ``nn.ModuleDict`` keyed by method name) and asks them,
at fixed points of its forward, for contributions. That keeps the forward free of per-method if-chains:

* ``delta(target, base, direction)``: an additive change to a host tensor (``"x_proj.weight"``, ``"A_log"``,
  ``"cls_token"``...) or ``None``. Merged-weight LoRAs, DoRA and partial tuning ("v2") use this.
* ``branch(site, x)``: an activation branch ``(slice, value)`` added to the output of ``site``
  (``"in_proj"``, ``"out_proj"``, ``"patch_embed"``, ``"embedding"``) or ``None``.
* ``extra_states(direction, x)``: Additional-scan's extra (A, B, C) state columns, or ``None``.
* ``extend_sequence`` / ``layer_affixes``: model-level prompt and affix tokens.
* ``merge(host)``: fold the method exactly into the host's base tensors (only where ``mergeable``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

Branch = tuple[slice, Tensor]


class PeftModule(nn.Module):
    """Base class: contributes nothing unless a subclass overrides a hook."""

    method: str = ""
    mergeable: bool = False

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        return None

    def branch(self, site: str, x: Tensor) -> Branch | None:
        return None

    def extra_states(self, direction: str, x: Tensor) -> Any:
        return None

    def extend_sequence(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Model-level: insert tokens into the sequence; ``keep`` indexes the original tokens."""
        return x, keep

    def layer_affixes(self) -> dict[int, Any] | None:
        """Model-level: per-layer affix tokens handed to each mixer."""
        return None

    def merge(self, host: nn.Module) -> None:
        raise NotImplementedError(f"{self.method} cannot be merged into the base weights")


def effective(host: nn.Module, target: str, base: Tensor, direction: str = "f") -> Tensor:
    """``base`` plus every method's delta for ``target`` (returns ``base`` itself when nothing applies)."""
    out = base
    peft = getattr(host, "peft", None)
    if peft:
        for m in peft.values():
            d = m.delta(target, base, direction)
            if d is not None:
                out = out + d
    return out


def add_branches(host: nn.Module, site: str, x: Tensor, y: Tensor) -> Tensor:
    """Add every method's activation branch at ``site`` (input ``x``) to the site's output ``y``."""
    peft = getattr(host, "peft", None)
    if not peft:
        return y
    for m in peft.values():
        b = m.branch(site, x)
        if b is not None:
            sl, val = b
            if sl == slice(None):
                y = y + val
            else:
                y = torch.cat([y[..., : sl.start], y[..., sl] + val, y[..., sl.stop :]], dim=-1)
    return y
