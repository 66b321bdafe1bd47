"""The ``cpu`` backend of the SSD scan: the fused C++ selective-scan kernel of ``selective_scan/cpu.cpp``.

SSD is a selective scan whose decay is shared by a head's P channels and N states (mamba_ssm's own SSD tests
use this as their reference): channel d = h * P + p scans x[..., h, p] with delta = dt[..., h], A[d, :] = A[h]
for every state, B / C of group h // (H / G) (= d // (H * P / G), the kernel's grouping) and D[h]. So the
Mamba-1 kernel runs SSD exactly, with its fused softplus(dt + bias), initial and final state and every gradient,
reading x, B and C in place. Its cost is the sequential scan's, L * H * P * N updates with one exp each (SSD
needs one per head), and its backward saves one state every 8192 / (N x vector width) positions, at least 8: at
N = 128 that is 16 values per input element. ``auto`` picks it on a CPU only where it measured faster than the
chunked reference (see ``__init__``).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..selective_scan.cpu import selective_scan_cpu
from .reference import prepare_dt


def ssd_scan_cpu(
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
    chunk_size: int = 256,  # the sequential kernel has no SSD chunks (it checkpoints on its own)
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan (shapes and semantics: ``naive_ssd_scan``) on the fused C++ kernel; CPU tensors only."""
    batch, L, H, P = x.shape
    N = B.shape[3]
    fused = dt_softplus and tuple(dt_limit) == (0.0, math.inf)  # else the clamp is not the kernel's: done here
    if not fused:
        dt, dt_bias = prepare_dt(dt, dt_bias, dt_softplus, dt_limit), None
    u = x.reshape(batch, L, H * P).transpose(1, 2)  # (B, H*P, L), channels innermost
    # the kernel reads one stride per axis, so dt is repeated over each head's P channels (one copy, as u)
    delta = dt[..., None].expand(batch, L, H, P).reshape(batch, L, H * P).transpose(1, 2)
    A_d = A[:, None, None].expand(H, P, N).reshape(H * P, N)
    B_k, C_k = B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1)  # (B, G, N, L) views
    D_d = None if D is None else (D.repeat_interleave(P) if D.dim() == 1 else D.reshape(H * P))
    bias_d = None if dt_bias is None else dt_bias.repeat_interleave(P)
    h0 = None if initial_state is None else initial_state.reshape(batch, H * P, N)
    out, last = selective_scan_cpu(u, delta, A_d, B_k, C_k, D_d, None, bias_d, fused, True, initial_state=h0)
    y = out.transpose(1, 2).reshape(batch, L, H, P)
    return (y, last.reshape(batch, H, P, N)) if return_final_state else y


__all__ = ["ssd_scan_cpu"]
