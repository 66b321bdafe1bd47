"""State-based tuning (Kang et al., ACL 2025): a trainable tensor that acts on the scan's state or output.

Per selected layer and scan direction, one zero-initialised tensor:

* ``StateOffset`` h' (E, N): the output reads ``C_t . (h_t + h')``, so the scan's output gains ``C_t . h'``
  (per channel d, ``sum_n C_t[n] h'[d, n]``) before the z gate, at every position;
* ``OutputOffset`` y' (E,): the output gains ``y'`` before the z gate, at every position;
* ``InitialState`` h_0 (E, N): the scan starts from ``h_0`` instead of zeros (shared by the batch).

The offsets are computed outside the scan from C and z (the mixer's ``scan_output`` hook), so every scan backend
runs them unchanged. None of the three folds into the base weights: ``C_t . h'`` is ``(h' W_C) u_t``, a full
E x E map of the conv output (D is diagonal), ``y' silu(z_t)`` depends on the input through z, and ``h_0``
reaches position t through the input-dependent decays ``exp(delta_s A)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.hooks import PeftModule


def _zeros(shapes: dict[str, tuple[int, ...]], device: torch.device) -> nn.ParameterDict:
    return nn.ParameterDict({d: nn.Parameter(torch.zeros(s, device=device)) for d, s in shapes.items()})


class StateOffset(PeftModule):
    method = "state_offset"

    def __init__(self, A_log: dict[str, Tensor]) -> None:
        super().__init__()
        self.h = _zeros({d: tuple(a.shape) for d, a in A_log.items()}, next(iter(A_log.values())).device)

    def scan_output(self, direction: str, C: Tensor) -> Tensor | None:
        if direction not in self.h:
            return None
        return torch.einsum("bnl,dn->bdl", C.float(), self.h[direction].float())  # (B, E, L)


class OutputOffset(PeftModule):
    method = "output_offset"

    def __init__(self, A_log: dict[str, Tensor]) -> None:
        super().__init__()
        self.y = _zeros({d: (a.shape[0],) for d, a in A_log.items()}, next(iter(A_log.values())).device)

    def scan_output(self, direction: str, C: Tensor) -> Tensor | None:
        if direction not in self.y:
            return None
        return self.y[direction].float()[:, None]  # (E, 1): the same offset at every position


class InitialState(PeftModule):
    method = "init_state"

    def __init__(self, A_log: dict[str, Tensor]) -> None:
        super().__init__()
        self.h0 = _zeros({d: tuple(a.shape) for d, a in A_log.items()}, next(iter(A_log.values())).device)
        self.no_decay = {"h0"}  # as the reference: a state, not a weight

    def initial_state(self, direction: str) -> Tensor | None:
        return self.h0.get(direction)
