"""Vision Mamba (hustvl Vim, bimamba "v2", middle cls token), state-dict compatible with the released .pth files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .hooks import add_branches, effective
from .layers import Block, DropPath, RMSNorm
from .mixer import MambaMixer


@dataclass
class VimConfig:
    d_model: int = 384
    depth: int = 24
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    num_classes: int = 1000
    drop_path_rate: float = 0.1
    eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VimConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)


class VisionMamba(nn.Module):
    kind = "vim"

    def __init__(self, cfg: VimConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, D))
        # layer 0 gets rate 0, layer i gets linspace(0, rate, depth)[i-1] (as in Vim)
        n = max(cfg.depth - 1, 1)
        rates = [0.0] + [cfg.drop_path_rate * j / n for j in range(cfg.depth - 1)]
        self.layers = nn.ModuleList(
            Block(
                MambaMixer(D, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank, bidirectional=True, layer_idx=i),
                D, rates[i], cfg.eps,
            )
            for i in range(cfg.depth)
        )
        self.norm_f = RMSNorm(D, cfg.eps)
        self.drop_path = DropPath(cfg.drop_path_rate)
        self.head = nn.Linear(D, cfg.num_classes)
        self.peft = nn.ModuleDict()
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for layer in self.layers:  # prenorm residual rescale (mamba_ssm _init_weights)
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(self.cfg.depth)
        nn.init.zeros_(self.head.weight)  # MMPreTrain's VisionTransformerClsHead default
        nn.init.zeros_(self.head.bias)

    @property
    def mixers(self) -> list[MambaMixer]:
        return [layer.mixer for layer in self.layers]

    def forward_features(self, img: Tensor) -> Tensor:
        """img (B, 3, H, W) -> cls-token feature (B, D)."""
        x = add_branches(self, "patch_embed", img, self.patch_embed.proj(img))  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, M, D)
        Bsz, M, _ = x.shape
        cls_idx = M // 2
        cls = effective(self, "cls_token", self.cls_token).expand(Bsz, -1, -1)
        x = torch.cat([x[:, :cls_idx], cls, x[:, cls_idx:]], dim=1)
        x = x + effective(self, "pos_embed", self.pos_embed)
        keep = torch.arange(x.shape[1], device=x.device)
        affixes: dict[int, object] = {}
        for m in self.peft.values():
            x, keep = m.extend_sequence(x, keep)
            affixes.update(m.layer_affixes() or {})
        hidden, residual = x, None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, affix=affixes.get(i))
        residual = residual + self.drop_path(hidden)
        hidden = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return hidden[:, keep[cls_idx]]

    def forward(self, img: Tensor) -> Tensor:
        return self.head(self.forward_features(img))
