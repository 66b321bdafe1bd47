"""Naive selective scan: the ground truth every backend is tested against.

A plain Python loop over t in float64 that writes the recurrence down as it reads, with no chunking, no
tiling and no hand-written backward: autograd through the loop gives the reference gradients. It is a test
oracle (O(L) Python steps, float64), far too slow for training, so it is deliberately not a dispatch backend
of ``selective_scan``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan, one position at a time in float64.

    Shapes (B = batch, D = channels, L = length, N = state size, G = groups):
    u, delta, z: [B, D, L]; A: [D, N]; B, C: [B, N, L] or [B, G, N, L] (channel d uses group d // (D / G));
    D, delta_bias: [D]; initial_state: [B, D, N].

    Inputs of any float dtype are upcast (differentiably, so gradients reach the caller's tensors).
    Returns ``out`` [B, D, L] and, with ``return_last_state``, the last state [B, D, N], both **float64**
    whatever the input dtype: callers compare their backend against the float64 values, or cast.
    ``reverse`` runs t from L - 1 down to 0 (the last state is then the state after t = 0).
    """
    u, delta, A, B, C = (x.double() for x in (u, delta, A, B, C))
    batch, dim, L = u.shape
    if B.dim() == 3:  # one group shared by every channel
        B, C = B[:, None], C[:, None]
    per_group = dim // B.shape[1]
    Bd, Cd = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # [B, D, N, L]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.double()
    ys: list[Tensor] = [u.new_empty(0)] * L
    for t in range(L - 1, -1, -1) if reverse else range(L):
        dt = delta[:, :, t, None]  # [B, D, 1]
        h = torch.exp(dt * A) * h + dt * Bd[:, :, :, t] * u[:, :, t, None]
        ys[t] = (h * Cd[:, :, :, t]).sum(-1)
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return (y, h) if return_last_state else y


__all__ = ["naive_selective_scan"]
