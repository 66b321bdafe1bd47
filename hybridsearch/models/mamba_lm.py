"""Mamba language model (mamba_ssm ``MambaLMHeadModel``), state-dict compatible with state-spaces checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .hooks import AffixHook, add_branches, effective
from .layers import Block, RMSNorm
from .mixer import MambaMixer


@dataclass
class MambaConfig:
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    pad_vocab_size_multiple: int = 8
    eps: float = 1e-5

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    def to_dict(self) -> dict:
        return asdict(self)


class MambaBackbone(nn.Module):
    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(MambaMixer(cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank, layer_idx=i),
                  cfg.d_model, 0.0, cfg.eps)
            for i in range(cfg.n_layer)
        )
        self.norm_f = RMSNorm(cfg.d_model, cfg.eps)


class LMHeadModel(nn.Module):
    """What the Mamba-1 and Mamba-2 LMs share (mamba_ssm's ``MambaLMHeadModel`` around their backbone): the
    initialisation, the layer views and the forward through the PEFT hooks of the embedding and the sequence."""

    kind = "lm"  # trains, evaluates and deploys on the Mamba LM paths
    backbone: nn.Module
    lm_head: nn.Linear

    def _init_weights(self, n_layer: int) -> None:
        """mamba_ssm's ``_init_weights`` (nothing to do on the meta device)."""
        if self.lm_head.weight.is_meta:
            return
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for layer in self.backbone.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(n_layer)
            for lin in (layer.mixer.in_proj, layer.mixer.out_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def mixers(self) -> list[nn.Module]:
        return [layer.mixer for layer in self.backbone.layers]

    def forward_hidden(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> final hidden states (B, L, D) of the real tokens."""
        w = effective(self, "embedding.weight", self.backbone.embedding.weight)
        x = add_branches(self, "embedding", input_ids, nn.functional.embedding(input_ids, w))
        keep = torch.arange(x.shape[1], device=x.device)
        affixes: dict[int, AffixHook] = {}
        for m in self.peft.values():
            x, keep = m.extend_sequence(x, keep)
            affixes.update(m.layer_affixes() or {})
        hidden, residual = x, None
        for i, layer in enumerate(self.backbone.layers):
            hidden, residual = layer(hidden, residual, affix=affixes.get(i))
        residual = residual + hidden
        hidden = self.backbone.norm_f(residual.to(self.backbone.norm_f.weight.dtype))
        return hidden[:, keep]

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) -> logits (B, L, padded vocab)."""
        return self.lm_head(self.forward_hidden(input_ids))


class MambaLM(LMHeadModel):
    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = MambaBackbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight  # tied, as in every released Mamba
        self.peft = nn.ModuleDict()
        self._init_weights(cfg.n_layer)
