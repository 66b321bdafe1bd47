"""The LoRA family (LoRA(in_proj), LoRAp(X/Z), LoRA(x_proj), LoRAp(d/B/C), LoRA(dt_proj), LoRA(out_proj)),
ParallelAdapter and LoRA(embed), with the optional DoRA magnitude.

The LoRA module is MambaPEFT's: ``down`` (in -> r, default Linear init), dropout, ``up`` (r -> out, zero init),
output times a constant ``scale`` (no alpha / r). It runs either as an activation branch beside a frozen
linear (in_proj, X, Z, out_proj; dropout active) or as a merged weight delta ``scale * up @ down`` on a row
block of a frozen weight (x_proj, d, B, C, dt_proj). DoRA always works on the weight:
``W' = m * (W + s dW) / ||W + s dW||`` with the column norm detached and ``m`` initialised to ``||W||``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.hooks import Branch, PeftModule


class LowRank(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, dropout: float = 0.0, relu: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.up.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(x)
        return self.up(self.dropout(F.relu(h) if self.relu else h))

    def weight(self) -> Tensor:
        return self.up.weight @ self.down.weight  # (out, in)


class LinearLora(PeftModule):
    """LoRA on rows ``rows`` of the frozen weight ``target`` of a mixer, one adapter per scan direction.

    ``site`` set -> activation branch at that site (unless DoRA); ``site`` None -> merged weight delta.
    """

    mergeable = True

    def __init__(
        self, method: str, target: str, base: dict[str, Tensor], rows: slice, rank: int, scale: float,
        dropout: float = 0.0, dora: bool = False, site: str | None = None, relu: bool = False,
    ) -> None:
        super().__init__()
        self.method, self.target, self.rows, self.scale, self.site, self.dora = method, target, rows, scale, site, dora
        self.mergeable = not relu
        some = next(iter(base.values()))
        n_out = len(range(*rows.indices(some.shape[0])))
        drop = dropout if site is not None and not dora else 0.0
        self.adapters = nn.ModuleDict({d: LowRank(w.shape[1], n_out, rank, drop, relu) for d, w in base.items()})
        if dora:  # one magnitude per input column, from the frozen weight's row block
            self.magnitude = nn.ParameterDict(
                {d: nn.Parameter(w[rows].detach().norm(dim=0, keepdim=True).clone()) for d, w in base.items()}
            )
        self.no_decay = {"magnitude"}

    def branch(self, site: str, x: Tensor) -> Branch | None:
        if site != self.site or self.dora:
            return None
        return self.rows, self.scale * self.adapters["f"](x)

    def delta(self, target: str, base: Tensor, direction: str = "f") -> Tensor | None:
        if target != self.target or (self.site is not None and not self.dora) or direction not in self.adapters:
            return None
        block = self._block_delta(base, direction)
        if self.rows == slice(None):
            return block
        full = base.new_zeros(base.shape)
        full[self.rows] = block
        return full

    def _block_delta(self, base: Tensor, direction: str) -> Tensor:
        dw = self.scale * self.adapters[direction].weight().to(base.dtype)
        if not self.dora:
            return dw
        w = base[self.rows]
        v = w + dw
        return self.magnitude[direction] * v / v.norm(dim=0, keepdim=True).detach() - w

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        for d in self.adapters:
            w = host.param(self.target, d)
            w[self.rows] += self._block_delta(w, d)


class PatchEmbedLora(PeftModule):
    """LoRA(embed) on Vim: conv ``down`` (C -> r, kernel = stride = patch) and 1x1 ``up`` (zero init)."""

    method = "lora_embed"
    mergeable = True

    def __init__(self, in_chans: int, d_model: int, patch: int, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Conv2d(in_chans, rank, patch, stride=patch, bias=False)
        self.up = nn.Conv2d(rank, d_model, 1, bias=False)
        nn.init.zeros_(self.up.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def branch(self, site: str, x: Tensor) -> Branch | None:
        if site != "patch_embed":
            return None
        return slice(None), self.scale * self.up(self.dropout(self.down(x)))

    @torch.no_grad()
    def merge(self, host: nn.Module) -> None:
        w = torch.einsum("or,rchw->ochw", self.up.weight[:, :, 0, 0], self.down.weight)
        host.patch_embed.proj.weight += self.scale * w


class EmbeddingLora(PeftModule):
    """LoRA(embed) on the LM: ``A`` (vocab x r, N(0,1)) and ``B`` (r x D, zero); delta = A[token] B.

    Not mergeable: the embedding is tied to the LM head, so folding would change the head too.
    """

    method = "lora_embed"

    def __init__(self, vocab: int, d_model: int, rank: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.randn(vocab, rank))
        self.B = nn.Parameter(torch.zeros(rank, d_model))

    def branch(self, site: str, x: Tensor) -> Branch | None:
        if site != "embedding":
            return None
        return slice(None), self.scale * (F.embedding(x, self.A) @ self.B)
