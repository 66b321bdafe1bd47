"""Backend dispatch for the selective scan (S6 recurrence of Mamba-1).

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = C_t . h_t + D * u_t,   then  y_t *= silu(z_t)  when z is given

Shapes (mamba_ssm ``selective_scan_fn``): u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,); initial_state: (batch, dim, N).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .reference import selective_scan_reference


def _reference() -> Callable[..., Any]:
    return selective_scan_reference  # looked up at call time (tests spy on it)


def _triton() -> Callable[..., Any]:
    from .triton import selective_scan_triton

    return selective_scan_triton


def _mamba_ssm() -> Callable[..., Any]:
    from .mamba_ssm import selective_scan_mamba_ssm

    return selective_scan_mamba_ssm


# backend name -> its function (imported on first use: Triton and mamba-ssm are optional)
_BACKENDS: dict[str, Callable[[], Callable[..., Any]]] = {
    "reference": _reference, "triton": _triton, "mamba_ssm": _mamba_ssm,
}
BACKENDS = ("auto", *_BACKENDS)


def _triton_available() -> bool:
    try:
        from . import triton as _  # noqa: F401
    except Exception:
        return False
    return True


def selective_scan(
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
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the selective scan with the chosen backend.

    ``backend="auto"`` uses the fused Triton kernel on CUDA tensors when it is installed and the PyTorch
    reference everywhere else. Returns ``out`` (batch, dim, L) in u's dtype, and with
    ``return_last_state=True`` also the fp32 last state (batch, dim, N). ``naive.naive_selective_scan`` is the
    float64 ground truth every backend is tested against (too slow to be a backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective_scan backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if u.is_cuda and _triton_available() else "reference"
    return _BACKENDS[backend]()(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state, initial_state=initial_state, reverse=reverse,
    )


__all__ = ["BACKENDS", "selective_scan"]
