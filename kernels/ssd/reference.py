"""PyTorch reference backend of the SSD scan: the chunked form of Mamba-2 (the paper's Listing 1, state-spaces'
``ssd_minimal.py``), in fp32, with autograd through PyTorch for every gradient.

The sequence is cut into chunks of Q positions. Within a chunk the scan is a masked, attention-like quadratic
form; across chunks only one (P, N) state per head is passed on:

1. ``Acs`` = the cumulative sum of dt * A within each chunk (one scalar per head and position);
2. intra-chunk: y_diag[l] = sum_{s <= l} (C_l . B_s) exp(Acs_l - Acs_s) dt_s x_s;
3. each chunk's own state: S_c = sum_s exp(Acs_last - Acs_s) dt_s x_s (outer) B_s;
4. state passing, a loop over chunks: h_c = exp(Acs_last,c) h_{c-1} + S_c, from ``initial_state``;
5. inter-chunk: y_off[l] = exp(Acs_l) C_l . h_{c-1}; y = y_diag + y_off + D x.

Heads are kept as (G, J) = (groups, heads per group), so C . B is computed once per group, not once per head.
A length that is not a multiple of Q is padded with dt = 0 (decay 1, no input): the final state is exact.
Everything here is plain differentiable PyTorch, so the gradients are autograd's; it runs on any device, and on
a GPU its einsums are batched matmuls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def prepare_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    """dt (B, L, H) -> clamp(softplus(dt + dt_bias), *dt_limit) in fp32, as mamba_ssm's kernels do (the clamp
    always applies; its default (0, inf) changes nothing after a softplus)."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(dt_limit[0], dt_limit[1])


def _segsum(a: Tensor) -> Tensor:
    """a (..., Q) -> (..., Q, Q) with [l, s] = a[s+1] + ... + a[l] for s <= l, -inf above the diagonal.

    A cumulative sum of masked copies instead of a difference of cumulative sums: no cancellation between two
    large negative sums (transformers' and ssd_minimal's stable ``segsum``)."""
    Q = a.shape[-1]
    ones = torch.ones(Q, Q, dtype=torch.bool, device=a.device)
    out = a[..., None].expand(*a.shape, Q)  # [i, s] = a[i]
    out = out.masked_fill(~ones.tril(-1), 0.0).cumsum(dim=-2)  # [l, s] = sum of a[i] for s < i <= l
    return out.masked_fill(~ones.tril(0), -math.inf)


def ssd_scan_reference(
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
    chunk_size: int = 256,
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan in chunks of ``chunk_size`` (shapes and semantics: ``naive_ssd_scan``). Returns y (B, L, H, P)
    in x's dtype and, with ``return_final_state``, the fp32 final state (B, H, P, N); all differentiable."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    J = H // G
    dtype = x.dtype
    dtf = prepare_dt(dt, dt_bias, dt_softplus, dt_limit)  # (B, L, H)
    Q = max(1, min(chunk_size, L))
    pad = (-L) % Q
    nc = (L + pad) // Q
    xdt = x.float() * dtf[..., None]  # (B, L, H, P)
    dA = dtf * A.float()  # (B, L, H)
    Bf, Cf = B.float(), C.float()
    if pad:  # dt = 0 there: decay 1 and no input, so the state after the last real position is kept
        xdt, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bf, Cf))
        dA = F.pad(dA, (0, 0, 0, pad))
    xdt = xdt.view(batch, nc, Q, G, J, P)
    Bc, Cc = Bf.view(batch, nc, Q, G, N), Cf.view(batch, nc, Q, G, N)
    dA = dA.view(batch, nc, Q, G, J).permute(0, 1, 3, 4, 2)  # (B, c, G, J, Q)
    Acs = dA.cumsum(-1)  # (B, c, G, J, Q)

    # 2. intra-chunk: the masked quadratic form, C . B once per group
    decay = torch.exp(_segsum(dA))  # (B, c, G, J, Q, Q): [l, s] = exp(Acs_l - Acs_s) for s <= l, else 0
    CB = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc)  # (B, c, G, Q, Q)
    y = torch.einsum("bcgjls,bcsgjp->bclgjp", CB[:, :, :, None] * decay, xdt)  # (B, c, Q, G, J, P)

    # 3. every chunk's own final state, from a zero start. The decays to the chunk's end are the segment sums'
    # last row, not exp(Acs_last - Acs): that difference cancels, and its gradient with respect to A loses all
    # precision when the decay is strong (measured: 4e-6 absolute against a true dA of 5e-7)
    decay_to_end = decay[..., -1, :]  # (B, c, G, J, Q)
    S = torch.einsum("bclgn,bcgjl,bclgjp->bcgjpn", Bc, decay_to_end, xdt)  # (B, c, G, J, P, N)

    # 4. state passing across chunks
    h = (x.new_zeros(batch, G, J, P, N, dtype=torch.float32) if initial_state is None
         else initial_state.float().reshape(batch, G, J, P, N))
    chunk_decay = torch.exp(Acs[..., -1])  # (B, c, G, J)
    starts = []
    for c in range(nc):
        starts.append(h)
        h = chunk_decay[:, c, ..., None, None] * h + S[:, c]
    h_in = torch.stack(starts, 1)  # (B, c, G, J, P, N): the state entering each chunk

    # 5. inter-chunk: the entering state, decayed to each position, read by C
    y = y + torch.einsum("bclgn,bcgjpn,bcgjl->bclgjp", Cc, h_in, torch.exp(Acs))
    y = y.reshape(batch, nc * Q, H, P)[:, :L]
    if D is not None:
        Df = D.float()
        y = y + (Df[:, None] if Df.dim() == 1 else Df) * x.float()
    y = y.to(dtype)
    return (y, h.reshape(batch, H, P, N)) if return_final_state else y


__all__ = ["prepare_dt", "ssd_scan_reference"]
