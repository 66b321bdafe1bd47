"""State-based tuning (Kang et al., ACL 2025): a trainable tensor that acts on the scan's state or output.

Per selected layer and scan direction, one zero-initialised tensor, shaped as the mixer's state (``state_shape``:
(E, N) on Mamba-1, (H, P, N) on Mamba-2, whose A is one scalar per head and does not enter the offsets):

* ``StateOffset`` h': the output reads ``C_t . (h_t + h')``, so the scan's output gains ``C_t . h'``
  (Mamba-1, per channel d: ``sum_n C_t[n] h'[d, n]``; Mamba-2, per head h and channel p: ``sum_n C_t[g(h), n]
  h'[h, p, n]``) before the z gate (Mamba-1) or the gated norm (Mamba-2), at every position;
* ``OutputOffset`` y' (E,): the output gains ``y'`` there, at every position;
* ``InitialState`` h_0: the scan starts from ``h_0`` instead of zeros (shared by the batch).

The offsets are computed outside the scan (the mixer's ``scan_output`` hook hands them a ``ScanReadout`` over
the pretrained states' C), so every scan backend runs them unchanged. None of the three folds into the base
weights: ``C_t . h'`` is ``(h' W_C) u_t``, a full E x E map of the conv output (D is diagonal), ``y' silu(z_t)``
depends on the input through z, and ``h_0`` reaches position t through the input-dependent decays
``exp(delta_s A)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.hooks import PeftModule, ScanReadout


def _zeros(shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.ParameterDict:
    return nn.ParameterDict({d: nn.Parameter(torch.zeros(s, device=device)) for d, s in shapes.items()})


class StateOffset(PeftModule):
    method = "state_offset"

    def __init__(self, directions: tuple[str, ...], state_shape: tuple[int, ...], channels: int,
                 device: torch.device) -> None:
        super().__init__()
        self.h = _zeros(dict.fromkeys(directions, state_shape), device)

    def scan_output(self, direction: str, readout: ScanReadout) -> Tensor | None:
        if direction not in self.h:
            return None
        return readout.state(self.h[direction])


class OutputOffset(PeftModule):
    method = "output_offset"

    def __init__(self, directions: tuple[str, ...], state_shape: tuple[int, ...], channels: int,
                 device: torch.device) -> None:
        super().__init__()
        self.y = _zeros(dict.fromkeys(directions, (channels,)), device)

    def scan_output(self, direction: str, readout: ScanReadout) -> Tensor | None:
        if direction not in self.y:
            return None
        return readout.channels(self.y[direction])  # the same offset at every position


class InitialState(PeftModule):
    method = "init_state"

    def __init__(self, directions: tuple[str, ...], state_shape: tuple[int, ...], channels: int,
                 device: torch.device) -> None:
        super().__init__()
        self.h0 = _zeros(dict.fromkeys(directions, state_shape), device)
        self.no_decay = {"h0"}  # as the reference: a state, not a weight

    def initial_state(self, direction: str) -> Tensor | None:
        return self.h0.get(direction)
