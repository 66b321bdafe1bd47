"""The LoRA family's methods: ParallelAdapter, LoRA(embed) and the LoRAs on the mixer's linears.

Each mixer LoRA is one part of the mixer (``peft_part``: a row block of one frozen weight): an activation branch
at ``site`` for in_proj / out_proj (one adapter per layer, both Vim directions share those linears), a merged
weight delta otherwise (one adapter per scan direction). The mixer says where a part is: Mamba-1's B rows are in
x_proj, Mamba-2's in in_proj (docs/methods.md, "Mamba-2"). Registered here in canonical order.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ...errors import ConfigError
from ..hosts import per_direction
from ..registry import Attach, register, with_defaults
from .config import AdapterConfig, LoraConfig
from .layer import EmbeddingLora, LinearLora, LowRank, PatchEmbedLora


def _lora_attacher(part: str, site: str | None, shared: bool, relu: bool = False) -> Attach:
    """shared: one adapter per layer (in_proj / out_proj are shared by both Vim directions)."""

    def attach(model: nn.Module, cfg: LoraConfig, name: str) -> None:
        if relu and cfg.dora:  # DoRA needs a weight delta; the adapter's ReLU has none
            raise ConfigError(f"methods.{name}.dora: DoRA is available on the linear LoRA family only")
        for i, rank in cfg.layer_ranks(len(model.mixers), f"methods.{name}").items():
            m = model.mixers[i]
            target, rows = m.peft_part(part)
            base = {"f": m.param(target, "f")} if shared else per_direction(m, target)
            m.peft[name] = LinearLora(name, target, base, rows, rank, cfg.scale, cfg.dropout, cfg.dora, site, relu)

    return attach


class _Lora(NamedTuple):
    name: str
    part: str  # the mixer's part (models/hooks.py Part: a row block of a frozen weight)
    site: str | None  # activation branch at this site; None: merged weight delta
    shared: bool
    rank: int  # the reference's default rank
    description: str


_PARALLEL_ADAPTER = _Lora("parallel_adapter", "out_proj", "out_proj", True, 32,
                          "ParallelAdapter beside out_proj (down, ReLU, up)")
_MIXER_LORAS = [
    _Lora("lora_in_proj", "in_proj", "in_proj", True, 32, "LoRA on the whole in_proj output (X and Z)"),
    _Lora("lora_X", "X", "in_proj", True, 64, "LoRAp(X): LoRA on the X half of in_proj"),
    _Lora("lora_Z", "Z", "in_proj", True, 64, "LoRAp(Z): LoRA on the Z (gate) half of in_proj"),
    _Lora("lora_x_proj", "x_proj", None, False, 64,
          "LoRA(x_proj), merged, per scan direction (Mamba-2: in_proj's B, C and dt rows)"),
    _Lora("lora_d", "d", None, False, 64, "LoRAp(d): the dt rows of x_proj (Mamba-2: of in_proj)"),
    _Lora("lora_B", "B", None, False, 64, "LoRAp(B): the B rows of x_proj (Mamba-2: of in_proj)"),
    _Lora("lora_C", "C", None, False, 64, "LoRAp(C): the C rows of x_proj (Mamba-2: of in_proj)"),
    _Lora("lora_dt", "dt_proj", None, False, 64, "LoRA(dt_proj), merged, per scan direction (Mamba-1 only)"),
    _Lora("lora_out_proj", "out_proj", "out_proj", True, 96, "LoRA(out_proj) branch"),
]

# registration order = canonical order (the method list): parallel_adapter, lora_embed, the mixer LoRAs
_a = _PARALLEL_ADAPTER
register(_a.name, with_defaults(AdapterConfig, rank=_a.rank), _a.description, parts=(_a.part,))(
    _lora_attacher(_a.part, _a.site, _a.shared, relu=True)
)


@register("lora_embed", with_defaults(LoraConfig, rank=32, scale=1.0), "LoRA on the patch / token embedding",
          per_layer=False)
def _attach_lora_embed(model: nn.Module, cfg: LoraConfig, name: str) -> None:
    if isinstance(cfg.rank, dict):
        raise ConfigError(f"methods.{name}.rank: must be an integer (the embedding is not per layer)")
    if cfg.dora:
        raise ConfigError(f"methods.{name}.dora: DoRA is available on the linear LoRA family only")
    if model.kind == "vim":
        c = model.cfg
        model.peft[name] = PatchEmbedLora(c.in_chans, c.d_model, c.patch_size, cfg.rank, cfg.scale, cfg.dropout)
    else:
        w = model.backbone.embedding.weight
        model.peft[name] = EmbeddingLora(w.shape[0], w.shape[1], cfg.rank, cfg.scale).to(w.device)


for _m in _MIXER_LORAS:
    register(_m.name, with_defaults(LoraConfig, rank=_m.rank), _m.description, parts=(_m.part,))(
        _lora_attacher(_m.part, _m.site, _m.shared)
    )

__all__ = ["AdapterConfig", "EmbeddingLora", "LinearLora", "LoraConfig", "LowRank", "PatchEmbedLora"]
