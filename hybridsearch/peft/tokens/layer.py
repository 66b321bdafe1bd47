"""Prompt-tuning and Affix-tuning: learnable tokens shared by the whole batch.

Both use MambaPEFT's PrefixEncoder: without projection an ``Embedding(n, layers * per_layer * dim)``; with
projection ``Embedding(n, dim) -> Linear(dim, hidden) -> Tanh -> Linear(hidden, layers * per_layer * dim)``.
Prompt tokens live in the input embedding space and stay in the sequence through all layers. Affix tokens are
inserted into each mixer's scan input (``inner``: in_proj output space, X and Z; on Mamba-2 z, x, B, C and dt) or
its input (``outer_*``:
block input space, seen by in_proj) and their outputs are dropped, so the sequence keeps its length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.hooks import PeftModule, TokenInserter


class PrefixEncoder(nn.Module):
    def __init__(self, n: int, dim: int, num_layers: int, per_layer: int, projection: bool,
                 hidden: int | None = None) -> None:
        super().__init__()
        self.n, self.out_dim = n, num_layers * per_layer * dim
        self.projection = projection
        if projection:
            hidden = hidden or dim
            self.embedding = nn.Embedding(n, dim)
            self.trans = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, self.out_dim))
        else:
            self.embedding = nn.Embedding(n, self.out_dim)

    def forward(self) -> Tensor:
        """-> (n, num_layers * per_layer * dim)"""
        e = self.embedding.weight
        return self.trans(e) if self.projection else e


def placement_order(L: int, n: int, kind: str, device=None) -> tuple[Tensor, Tensor]:
    """Index ``order`` into ``cat([seq (L), tokens (n)])`` giving the new sequence, and ``keep``: the
    positions of the L original tokens in it. Token j is index L + j."""
    seq = list(range(L))
    tok = [L + j for j in range(n)]
    if kind == "prefix":
        order = tok + seq
    elif kind == "suffix":
        order = seq + tok
    elif kind == "prefix_suffix":
        h = (n + 1) // 2
        order = tok[:h] + seq + tok[h:]
    elif kind == "infix":  # n cut points splitting the sequence into n + 1 near-equal chunks
        cuts = [round(L * (j + 1) / (n + 1)) for j in range(n)]
        order, prev = [], 0
        for j, c in enumerate(cuts):
            order += seq[prev:c] + [tok[j]]
            prev = c
        order += seq[prev:]
    elif kind == "centfix":  # all tokens right before the middle token (Vim's cls position)
        c = (L - 1) // 2
        order = seq[:c] + tok + seq[c:]
    elif kind == "centfix_v2":  # half before, half after the middle token
        c, h = (L - 1) // 2, (n + 1) // 2
        order = seq[:c] + tok[:h] + seq[c : c + 1] + tok[h:] + seq[c + 1 :]
    else:
        raise ValueError(f"unknown placement {kind!r}")
    order_t = torch.tensor(order, device=device)
    keep = (order_t < L).nonzero().squeeze(1)
    return order_t, keep


def insert(seq: Tensor, tokens: Tensor, kind: str, dim: int) -> tuple[Tensor, Tensor]:
    """Insert ``tokens`` (n, C) shared by the batch into ``seq`` along ``dim`` (1 for (B, L, C), 2 for (B, C, L))."""
    L, n = seq.shape[dim], tokens.shape[0]
    order, keep = placement_order(L, n, kind, seq.device)
    if dim == 1:
        t = tokens.to(seq.dtype).unsqueeze(0).expand(seq.shape[0], -1, -1)
    else:
        t = tokens.to(seq.dtype).t().unsqueeze(0).expand(seq.shape[0], -1, -1)
    return torch.cat([seq, t], dim=dim).index_select(dim, order), keep


class Prompt(PeftModule):
    method = "prompt"
    mergeable = False

    def __init__(self, d_model: int, tokens: int, placement: str, projection: bool) -> None:
        super().__init__()
        self.placement = placement
        self.encoder = PrefixEncoder(tokens, d_model, 1, 1, projection, d_model)

    def extend_sequence(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        x, k = insert(x, self.encoder(), self.placement, dim=1)
        return x, k[keep]


class LayerAffix:
    """One layer's affix tokens, handed to its mixer (it speaks ``models.hooks.AffixHook``).

    The placement names stay here: the mixer only asks ``outer``, ``insert_outer``, ``inner`` and ``prefix``.
    """

    def __init__(self, placement: str, parts: list[Tensor]) -> None:
        self.outer = placement.startswith("outer_")
        self.placement = placement
        self.parts = parts  # one (n, C) tensor per token set

    def insert_outer(self, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.placement == "outer_single_prefix":
            return insert(h, self.parts[0], "prefix", dim=1)
        # outer_dual_prefix: n tokens prepended from the first set, n appended from the second
        h1, k1 = insert(h, self.parts[0], "prefix", dim=1)
        h2, k2 = insert(h1, self.parts[1], "suffix", dim=1)
        return h2, k2[k1]

    def _inner_tokens(self, direction: str) -> tuple[Tensor, str]:
        """(tokens, placement kind) of an inner affix in one scan direction; dual: the second set scans "b"."""
        dual, kind = self.placement.split("_", 1)
        return (self.parts[1] if dual == "dual" and direction == "b" else self.parts[0]), kind

    def inner(self, direction: str) -> TokenInserter:
        tokens, kind = self._inner_tokens(direction)
        return lambda xz: insert(xz, tokens, kind, dim=2)

    def prefix(self, direction: str) -> Tensor | None:
        """The (n, in_proj output) tokens when they all precede the sequence in ``direction``'s scan order
        (single_prefix, dual_prefix: inserted after the flip of the backward scan), else None."""
        if self.outer:
            return None
        tokens, kind = self._inner_tokens(direction)
        return tokens if kind == "prefix" else None


class Affix(PeftModule):
    method = "affix"
    mergeable = False

    def __init__(self, layers: list[int], d_model: int, d_in_proj: int, tokens: int, placement: str,
                 projection: bool, hidden: int | None) -> None:
        super().__init__()
        self.layers, self.placement = layers, placement
        outer = placement.startswith("outer_")
        self.dim = d_model if outer else d_in_proj
        self.per_layer = 2 if "dual" in placement else 1
        self.encoder = PrefixEncoder(tokens, self.dim, len(layers), self.per_layer, projection, hidden)

    def layer_affixes(self) -> dict[int, LayerAffix]:
        out = self.encoder()  # (n, layers * per_layer * dim), computed once per forward
        n, c = out.shape[0], self.per_layer * self.dim
        res = {}
        for j, layer in enumerate(self.layers):
            sl = out[:, j * c : (j + 1) * c].reshape(n, self.per_layer, self.dim)
            res[layer] = LayerAffix(self.placement, [sl[:, p] for p in range(self.per_layer)])
        return res


__all__ = ["Affix", "LayerAffix", "PrefixEncoder", "Prompt", "insert", "placement_order"]
