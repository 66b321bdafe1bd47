"""Additional-scan: enlarge each channel's SSM state from N to N + N' with fresh columns.

Per layer and scan direction: ``A_log`` (E, N') for the new columns and ``x_proj`` (E -> 2N', no bias) for
their B (rows [0, N')) and C (rows [N', 2N')). The pretrained states are untouched; delta is shared.
Init of the new A columns: ``copy`` (the adjacent pretrained column: column 0 for prefix, N-1 for suffix),
``s4d`` (continue the S4D-real sequence N+1, N+2, ...) or ``constant`` (log of a constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.hooks import PeftModule


@dataclass
class ExtraStates:
    A: Tensor  # (E, N') negative
    B: Tensor  # (batch, N', L)
    C: Tensor  # (batch, N', L)
    prefix: bool

    def concat(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        parts = [(self.A, A), (self.B.to(B.dtype), B), (self.C.to(C.dtype), C)]
        dims = (1, 1, 1)
        return tuple(torch.cat(p if self.prefix else p[::-1], dim=d) for p, d in zip(parts, dims))  # type: ignore

    def pad_state(self, h: Tensor) -> Tensor:
        """A state (E, N) over the columns so far -> (E, N + N'): the new columns start at zero."""
        zeros = h.new_zeros(h.shape[0], self.A.shape[1])
        return torch.cat([zeros, h] if self.prefix else [h, zeros], dim=1)


class AdditionalScan(PeftModule):
    method = "additional_scan"
    mergeable = False

    def __init__(self, A_log: dict[str, Tensor], states: int, position: str, init: str, constant: float,
                 zero_init: bool) -> None:
        super().__init__()
        self.prefix = position == "prefix"
        self.states = states
        logs, projs = {}, {}
        for d, a in A_log.items():
            E, N = a.shape
            if init == "copy":
                col = a[:, :1] if self.prefix else a[:, N - 1 :]
                new = col.detach().expand(E, states).clone()
            elif init == "s4d":
                new = torch.log(torch.arange(N + 1, N + 1 + states, dtype=torch.float32, device=a.device)).repeat(E, 1)
            else:
                new = torch.full((E, states), math.log(constant), device=a.device)
            logs[d] = nn.Parameter(new.float())
            proj = nn.Linear(E, 2 * states, bias=False, device=a.device)
            if zero_init:  # zero C rows only: no change at init, yet trainable (zero B and C is a dead saddle)
                nn.init.zeros_(proj.weight[states:])
            projs[d] = proj
        self.A_log = nn.ParameterDict(logs)
        self.x_proj = nn.ModuleDict(projs)
        self.no_decay = {"A_log"}  # like the pretrained A_log

    def extra_states(self, direction: str, x: Tensor) -> ExtraStates | None:
        if direction not in self.A_log:
            return None
        bc = F.linear(x.transpose(1, 2), self.x_proj[direction].weight).transpose(1, 2)  # (B, 2N', L)
        B, C = bc.split(self.states, dim=1)
        return ExtraStates(-torch.exp(self.A_log[direction].float()), B, C, self.prefix)
