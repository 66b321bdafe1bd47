"""The hook points a host (a Mamba mixer or a whole model) offers to PEFT methods.

Models define the protocol and import nothing from ``hybridsearch.peft``; methods subclass ``PeftModule``.
A host keeps its method modules in ``host.peft`` (an ``nn.ModuleDict`` keyed by method name) and asks them,
at fixed points of its forward, for contributions. That keeps the forward free of per-method if-chains:

* ``delta(target, base, direction)``: an additive change to a host tensor (``"x_proj.weight"``, ``"A_log"``,
  ``"cls_token"``...) or ``None``. Merged-weight LoRAs, DoRA and partial tuning ("v2") use this.
* ``branch(site, x)``: an activation branch ``(slice, value)`` added to the output of ``site``
  (``"in_proj"``, ``"out_proj"``, ``"patch_embed"``, ``"embedding"``) or ``None``.
* ``extra_states(direction, x)``: Additional-scan's extra states, or ``None``. Mamba-1 (x: the conv output
  (B, E, L)): an object with ``concat(A, B, C)`` and ``pad_state(h)`` (zeros for its columns in a state over the
  columns so far). Mamba-2 (x: (B, L, E)): an ``A`` (H,), ``B`` and ``C`` (B, L, G', N') the mixer scans beside
  its own states, from zero.
* ``initial_state(direction)``: a state the scan starts from (the mixer's ``state_shape``: (E, N) on Mamba-1,
  (H, P, N) on Mamba-2), over the pretrained states, shared by the batch (initial-state tuning), or ``None``.
* ``scan_output(direction, readout)``: a term added to the scan's output before the z gate (Mamba-1) or the
  gated norm (Mamba-2) (state-offset and output-offset tuning), or ``None``. ``readout`` (``ScanReadout``) turns
  a state-shaped tensor into ``C_t . h`` over the pretrained states and a per-channel (E,) vector into a term of
  the output, so the methods need not know the mixer's layout.
* ``extend_sequence`` / ``layer_affixes``: model-level prompt and affix tokens; each layer's affix is an
  ``AffixHook`` that the mixer asks where its tokens go.
* ``merge(host)``: fold the method exactly into the host's base tensors (only where ``mergeable``).

A mixer names the parts methods attach to (``peft_part(name)`` -> ``Part`` or ``None`` where it has no such
part): a LoRA's row block (``"X"``, ``"B"``, ``"x_proj"``...) or a partially tuned tensor (``"A_log"``,
``"dt_bias"``, ``"norm"``...), as a base tensor name and its rows. So one method definition serves Mamba-1 (B in
x_proj) and Mamba-2 (B in in_proj), and a model without the part refuses the method before anything changes.

Training loops call ``after_optimizer_step(last)`` after every optimizer step (``peft.after_optimizer_step``):
a method with a warm-up (sparse dimension tuning) changes what it trains there. Its ``transient`` parameters
train only during that warm-up: they are not counted and not saved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

Branch = tuple[slice, Tensor]
ALL_ROWS = slice(None)


class Part(NamedTuple):
    """A part of a mixer a method attaches to: base tensor ``target`` (as ``param`` names it), rows ``rows``."""

    target: str
    rows: slice = ALL_ROWS


class ScanReadout(Protocol):
    """What a mixer's scan output offers the output-side methods, in the mixer's own layout."""

    def state(self, h: Tensor) -> Tensor:
        """``C_t . h`` at every position for a state-shaped ``h`` (the pretrained states' C): an output term."""
        ...

    def channels(self, y: Tensor) -> Tensor:
        """A per-channel (E,) vector as an output term (the same at every position)."""
        ...
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
    transient: frozenset[str] = frozenset()  # parameter names trained only during a warm-up (see the docstring)

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        return None

    def branch(self, site: str, x: Tensor) -> Branch | None:
        return None

    def extra_states(self, direction: str, x: Tensor) -> Any:
        return None

    def initial_state(self, direction: str) -> Tensor | None:
        return None

    def scan_output(self, direction: str, readout: ScanReadout) -> Tensor | None:
        return None

    def extend_sequence(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Model-level: insert tokens into the sequence; ``keep`` indexes the original tokens."""
        return x, keep

    def layer_affixes(self) -> dict[int, AffixHook] | None:
        """Model-level: per-layer affix tokens handed to each mixer."""
        return None

    def merge(self, host: nn.Module) -> None:
        raise NotImplementedError(f"{self.method} cannot be merged into the base weights")

    # -- the training lifecycle (methods with a warm-up) ---------------------------------------------------------
    def after_optimizer_step(self, last: bool) -> None:
        """Called after every optimizer step of a training run; ``last``: its final step."""

    def warmup_left(self) -> int:
        """Optimizer steps left in the method's warm-up (0: none, or over)."""
        return 0

    def end_warmup(self) -> None:
        """End the warm-up now (what the last step of a run shorter than the warm-up does)."""

    def after_load(self) -> None:
        """Called once saved adapters are loaded into the module (they are always past any warm-up)."""


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


def summed(host: nn.Module, hook: str, *args: Any) -> Tensor | None:
    """The sum of every method's ``hook(*args)`` (``initial_state``, ``scan_output``), or ``None`` if none gives one."""
    out = None
    for m in getattr(host, "peft", {}).values():
        v = getattr(m, hook)(*args)
        if v is not None:
            out = v if out is None else out + v
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


__all__ = ["ALL_ROWS", "AffixHook", "Branch", "Part", "PeftModule", "ScanReadout", "TokenInserter", "add_branches",
           "effective", "summed"]
