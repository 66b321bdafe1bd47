"""Additional-scan on Mamba-2: N' extra states per head, scanned beside the pretrained ones.

Mamba-2's decay is one scalar A per head, shared by the head's P channels and all its N states: that is what
lets the SSD scan work in chunks. Extra state columns with their own decay per state (Mamba-1's (E, N') A_log)
would break that structure, and sharing the head's A would give the new states no dynamics of their own. So the
N' extra states get their own per-head A (``A_log`` (H,), learnable: ``init: copy`` starts from the head's
pretrained A, ``constant`` from log(constant)), their own B and C from the conv output (``x_proj``, E -> 2N',
one group shared by every head, as Mamba-2's B and C with ngroups 1) and run as a second SSD scan with the same x
and dt, no D, from zero; its output is added to the pretrained scan's. Per layer: H + 2 E N' parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...models.hooks import PeftModule
from .config import AdditionalScanConfig


@dataclass
class ExtraHeadStates:
    A: Tensor  # (H,) negative
    B: Tensor  # (batch, L, 1, N')
    C: Tensor  # (batch, L, 1, N')


def check_heads_config(cfg: AdditionalScanConfig, where: str) -> None:
    """The options that have no Mamba-2 meaning, refused in one line."""
    if cfg.init == "s4d":
        raise ConfigError(f"{where}.init: 's4d' continues Mamba-1's per-state A = 1..N; Mamba-2's A is one scalar "
                          "per head; allowed there: copy, constant")
    if cfg.position != "prefix":
        raise ConfigError(f"{where}.position: Mamba-2's extra states scan on their own, beside the head's (no column "
                          "order); allowed there: prefix")


class AdditionalHeadScan(PeftModule):
    method = "additional_scan"
    mergeable = False

    def __init__(self, A_log: Tensor, d_inner: int, cfg: AdditionalScanConfig) -> None:
        super().__init__()
        self.states = cfg.states
        new = A_log.detach().clone() if cfg.init == "copy" else torch.full_like(A_log, math.log(cfg.constant))
        self.A_log = nn.Parameter(new.float())
        self.x_proj = nn.Linear(d_inner, 2 * cfg.states, bias=False, device=A_log.device)
        if cfg.zero_init:  # zero C rows only: no change at init, yet trainable (zero B and C is a dead saddle)
            nn.init.zeros_(self.x_proj.weight[cfg.states :])
        self.no_decay = {"A_log"}  # like the pretrained A_log

    def extra_states(self, direction: str, x: Tensor) -> ExtraHeadStates | None:
        if direction != "f":
            return None
        B, C = F.linear(x, self.x_proj.weight).split(self.states, dim=-1)  # x (B, L, E) -> (B, L, N') each
        return ExtraHeadStates(-torch.exp(self.A_log.float()), B[:, :, None], C[:, :, None])
