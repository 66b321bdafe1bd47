"""Naive SSD scan: the ground truth every SSD backend is tested against.

A plain Python loop over t in float64 that writes Mamba-2's recurrence down as it reads (one scalar decay per
head and step), with no chunking and no hand-written backward: autograd through the loop gives the reference
gradients. A test oracle (O(L) Python steps, float64), far too slow to train with, so not a dispatch backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 256,  # accepted for a uniform signature; the loop has no chunks
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan one position at a time in float64.

    Shapes (B batch, L length, H heads, P head dim, G groups, N state size; head h reads group h // (H / G)):
    x (B, L, H, P); dt (B, L, H); A (H,); B, C (B, L, G, N); D (H,) or (H, P); dt_bias (H,);
    initial_state (B, H, P, N).

        dt      <- clamp(softplus(dt + dt_bias), *dt_limit)          (softplus only with dt_softplus)
        h_t     =  exp(dt_t[h] * A[h]) * h_{t-1} + dt_t[h] * x_t[h, :] (outer) B_t[g(h), :]     (P, N) per head
        y_t[h]  =  h_t . C_t[g(h), :] + D[h] * x_t[h]

    Returns y (B, L, H, P) and, with ``return_final_state``, the state after the last position (B, H, P, N),
    both **float64**, differentiable with respect to every input (inputs are upcast differentiably).
    """
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    batch, L, H, P = x.shape
    per_group = H // B.shape[2]
    Bh = B.repeat_interleave(per_group, dim=2)  # (B, L, H, N)
    Ch = C.repeat_interleave(per_group, dim=2)
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(dt_limit[0], dt_limit[1])
    h = x.new_zeros(batch, H, P, B.shape[3]) if initial_state is None else initial_state.double()
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # (B, H)
        h = decay[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))  # (B, H, P)
    y = torch.stack(ys, 1) if ys else x.new_zeros(batch, 0, H, P)
    if D is not None:
        Dd = D.double()
        y = y + (Dd[:, None] if Dd.dim() == 1 else Dd) * x
    return (y, h) if return_final_state else y


__all__ = ["naive_ssd_scan"]
