"""The hook points a host (a Mamba mixer or a whole model) offers to PEFT methods.

Models define the protocol and import nothing from ``hybridsearch.peft``; methods subclass ``PeftModule``.
A host keeps its method modules in ``host.peft`` (an ``nn.ModuleDict`` keyed by method name) and asks them,
at fixed points of its forward, for contributions. That keeps the forward free of per-method if-chains:

* ``delta(target, base, direction)``: an additive change to a host tensor (``"x_proj.weight"``, ``"A_log"``,
  ``"cls_token"``...) or ``None``. Merged-weight LoRAs, DoRA and partial tuning ("v2") use this.
* ``branch(site, x)``: an activation branch ``(slice, value)`` added to the output of ``site``
  (``"in_proj"``, ``"out_proj"``, ``"patch_embed"``, ``"embedding"``) or ``None``.
* ``extra_states(direction, x)``: Additional-scan's extra (A, B, C) state columns, or ``None``.
* ``extend_sequence`` / ``layer_affixes``: model-level prompt and affix tokens; each layer's affix is an
  ``AffixHook`` that the mixer asks where its tokens go.
* ``merge(host)``: fold the method exactly into the host's base tensors (only where ``mergeable``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

Branch = tuple[slice, Tensor]
# inserts tokens into a (B, C, L) sequence; returns it and the positions of the original tokens
TokenInserter = Callable[[Tensor], tuple[Tensor, Tensor]]


class AffixHook(Protocol):
    """One layer's affix tokens as its mixer sees them; the mixer only asks, it knows no placement names."""

    outer: bool  # True: the tokens enter the mixer's input (before in_proj); False: each scan's input

    def insert_outer(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Outer affix: (B, L, D) -> (B, L', D) with the tokens, and the positions of the original tokens."""
        ...

    def inner(self, direction: str) -> TokenInserter:
        """Inner affix: the insertion into one direction's scan input (in that direction's scan order)."""
        ...

    def prefix(self, direction: str) -> Tensor | None:
        """Inner affix: the (n, 2E) tokens when they all precede the sequence in ``direction``'s scan order,
        else ``None``. The mixer may then enter them as an initial scan state instead of inserting them."""
        ...


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

    def layer_affixes(self) -> dict[int, AffixHook] | None:
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


__all__ = ["AffixHook", "Branch", "PeftModule", "TokenInserter", "add_branches", "effective"]
