"""Partial tuning: A-, D-, conv1d-, dt-bias-, cls-token- and pos-embed-tuning.

``mode: delta`` (the paper's v2) keeps the pretrained tensor frozen and learns a zero-init additive delta
whose weight decay pulls it back toward the pretrained value; ``mode: unfreeze`` (v1) trains the tensor itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.hooks import PeftModule


class PartialDelta(PeftModule):
    mergeable = True

    def __init__(self, method: str, target: str, base: dict[str, Tensor]) -> None:
        super().__init__()
        self.method, self.target = method, target
        self.delta_ = nn.ParameterDict({d: nn.Parameter(torch.zeros_like(w)) for d, w in base.items()})
        self.no_decay: set[str] = set()

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        if target != self.target or direction not in self.delta_:
            return None
        return self.delta_[direction]

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        for d, delta in self.delta_.items():
            target = host.param(self.target, d) if hasattr(host, "param") else getattr(host, self.target)
            target += delta
