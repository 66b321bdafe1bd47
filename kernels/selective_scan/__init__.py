"""Backend dispatch for the selective scan (S6 recurrence of Mamba-1).

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = C_t . h_t + D * u_t,   then  y_t *= silu(z_t)  when z is given

Shapes (mamba_ssm ``selective_scan_fn``): u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,); initial_state: (batch, dim, N).
With ``delta_proj`` (dim, R), delta is low-rank (batch, R, L): the scan's delta is Mamba's dt_proj of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from .causal_conv1d import causal_conv1d_bidirectional_cpu, causal_conv1d_cpu, causal_conv1d_reference
from .reference import dense_delta, selective_scan_reference


def _reference() -> Callable[..., Any]:
    return selective_scan_reference  # looked up at call time (tests spy on it)


def _triton() -> Callable[..., Any]:
    from .triton import selective_scan_triton

    return selective_scan_triton


def _cpu() -> Callable[..., Any]:
    from .cpu import selective_scan_cpu

    return selective_scan_cpu


def _mamba_ssm() -> Callable[..., Any]:
    from .mamba_ssm import selective_scan_mamba_ssm

    return selective_scan_mamba_ssm


# backend name -> its function (imported on first use: Triton and mamba-ssm are optional)
_BACKENDS: dict[str, Callable[[], Callable[..., Any]]] = {
    "reference": _reference, "cpu": _cpu, "triton": _triton, "mamba_ssm": _mamba_ssm,
}
BACKENDS = ("auto", *_BACKENDS)
# Chooses the backend of every ``backend="auto"`` call of the process (debugging, benchmarks).
ENV_BACKEND = "HYBRIDSEARCH_SCAN_BACKEND"


def _triton_available() -> bool:
    try:
        from . import triton as _  # noqa: F401
    except Exception:
        return False
    return True


def _cpu_available() -> bool:
    from .cpu import available

    return available()  # builds on the first call; warns once and returns False when it cannot


def resolve_backend(backend: str, u: Tensor) -> str:
    """The backend a call with ``backend`` on ``u`` runs: ``auto`` is ``$HYBRIDSEARCH_SCAN_BACKEND`` when set,
    else ``triton`` for CUDA tensors (Triton installed), ``cpu`` for CPU tensors (the kernel builds) and
    ``reference`` everywhere else."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective_scan backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env and env != "auto":
        if env not in _BACKENDS:
            raise ValueError(f"${ENV_BACKEND}={env!r} is not a selective_scan backend; allowed: {', '.join(BACKENDS)}")
        return env
    if u.is_cuda:
        return "triton" if _triton_available() else "reference"
    if u.device.type == "cpu" and _cpu_available():
        return "cpu"
    return "reference"


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
    delta_proj: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the selective scan with the chosen backend.

    ``backend="auto"`` uses ``$HYBRIDSEARCH_SCAN_BACKEND`` when it is set, else the fused Triton kernel on CUDA
    tensors when it is installed, the fused C++ kernel on CPU tensors when it builds (``cpu.py``) and the PyTorch
    reference everywhere else. Returns ``out`` (batch, dim, L) in u's dtype, and with
    ``return_last_state=True`` also the fp32 last state (batch, dim, N). ``naive.naive_selective_scan`` is the
    float64 ground truth every backend is tested against (too slow to be a backend).

    ``delta_proj`` (dim, R) makes ``delta`` low-rank (batch, R, L), Mamba's input of dt_proj: the ``cpu`` backend
    forms the product in the kernel (neither the (batch, dim, L) delta nor its gradient is ever stored), every
    other backend takes ``dense_delta(delta, delta_proj)``.
    """
    backend = resolve_backend(backend, u)
    if backend == "cpu":
        extra = {"delta_proj": delta_proj}
    else:
        delta, extra = dense_delta(delta, delta_proj), {}
    return _BACKENDS[backend]()(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state, initial_state=initial_state, reverse=reverse, **extra,
    )


class ScanDirection(NamedTuple):
    """One direction's inputs of ``selective_scan_bidirectional`` (``selective_scan``'s, less z)."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None = None
    delta_bias: Tensor | None = None
    initial_state: Tensor | None = None
    delta_proj: Tensor | None = None  # delta low-rank (batch, R, L), as ``selective_scan``'s


def selective_scan_bidirectional(fwd: ScanDirection, bwd: ScanDirection, z: Tensor | None = None,
                                 delta_softplus: bool = False, backend: str = "auto") -> Tensor:
    """Vim's two directions averaged: ``(selective_scan(*fwd, z) + selective_scan(*bwd, z, reverse=True)) / 2``
    ("if_devide_out"). The ``cpu`` backend runs both scans into one output buffer and one z gradient (no
    separate add, halving and gradient sum); every other backend computes exactly that expression."""
    name = resolve_backend(backend, fwd.u)
    if name == "cpu" and fwd.u.numel():
        from .cpu import selective_scan_bidirectional_cpu

        return selective_scan_bidirectional_cpu(tuple(fwd), tuple(bwd), z, delta_softplus)
    y_f, y_b = (selective_scan(d.u, d.delta, d.A, d.B, d.C, d.D, z, d.delta_bias, delta_softplus,
                               initial_state=d.initial_state, reverse=reverse, backend=name, delta_proj=d.delta_proj)
                for d, reverse in ((fwd, False), (bwd, True)))
    return (y_f + y_b) / 2


def _conv_weight(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """weight as (dim, K), after checking the shapes against x (batch, dim, L)."""
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    if (x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]
            or (bias is not None and tuple(bias.shape) != (x.shape[1],))):
        raise ValueError(f"causal_conv1d needs x (batch, dim, L), weight (dim, K), bias (dim,); got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {None if bias is None else tuple(bias.shape)}")
    return weight


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True, reverse: bool = False,
                  backend: str = "auto") -> Tensor:
    """The mixer's depthwise causal conv1d (+ SiLU) of x (batch, dim, L); weight (dim, K) or (dim, 1, K), bias
    (dim,). ``reverse``: the conv of the flipped sequence, flipped back. The backend is resolved as the scan's:
    ``cpu`` runs the fused C++ kernel, every other one ``F.conv1d`` (causal_conv1d.py)."""
    weight = _conv_weight(x, weight, bias)
    if resolve_backend(backend, x) == "cpu" and x.numel() and weight.shape[1]:
        return causal_conv1d_cpu(x, weight, bias, silu, reverse)
    return causal_conv1d_reference(x, weight, bias, silu, reverse)


def causal_conv1d_bidirectional(x: Tensor, weight_f: Tensor, bias_f: Tensor | None, weight_b: Tensor,
                                bias_b: Tensor | None, silu: bool = True,
                                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Vim's two directions' convs of one x: ``(causal_conv1d(x, weight_f, bias_f), causal_conv1d(x, weight_b,
    bias_b, reverse=True))``. The ``cpu`` backend runs them as one autograd node whose backward adds both input
    gradients in the kernel; every other backend makes exactly those two calls."""
    weight_f, weight_b = _conv_weight(x, weight_f, bias_f), _conv_weight(x, weight_b, bias_b)
    if (resolve_backend(backend, x) == "cpu" and x.numel() and weight_f.shape[1]
            and weight_b.shape == weight_f.shape):
        return causal_conv1d_bidirectional_cpu(x, weight_f, bias_f, weight_b, bias_b, silu)
    return (causal_conv1d(x, weight_f, bias_f, silu, backend=backend),
            causal_conv1d(x, weight_b, bias_b, silu, reverse=True, backend=backend))


__all__ = ["BACKENDS", "ENV_BACKEND", "ScanDirection", "causal_conv1d", "causal_conv1d_bidirectional", "dense_delta",
           "resolve_backend", "selective_scan", "selective_scan_bidirectional"]
