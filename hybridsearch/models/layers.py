"""Building blocks shared by Vim and the Mamba LM: RMSNorm, DropPath and the Add -> Norm -> Mixer block."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import rms_norm
from .mixer import MambaMixer


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.backend = "auto"  # kernels.rms_norm's, resolved as the mixers' scan_backend

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps, backend=self.backend)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or rate 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """mamba_ssm ``Block``: residual = residual + drop_path(hidden); hidden = mixer(norm(residual)).

    The residual stream is kept in fp32 (``residual_in_fp32``), as in Vim and mamba_ssm.
    """

    def __init__(self, mixer: MambaMixer, d_model: int, drop_path: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(d_model, eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: Tensor, residual: Tensor | None, affix=None) -> tuple[Tensor, Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)), affix=affix)
        return hidden, residual
