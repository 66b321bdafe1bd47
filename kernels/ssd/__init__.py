"""The SSD scan of Mamba-2 (state space duality): a selective scan whose decay is one scalar per head and step.

    dt      <- clamp(softplus(dt + dt_bias), *dt_limit)
    h_t     =  exp(dt_t[h] * A[h]) * h_{t-1} + dt_t[h] * x_t[h] (outer) B_t[g(h)]        (P, N) per head h
    y_t[h]  =  h_t . C_t[g(h)] + D[h] * x_t[h]

Shapes (paper letters; mamba_ssm's ``mamba_chunk_scan_combined``): x (B, L, H, P); dt (B, L, H); A (H,);
B, C (B, L, G, N) with head h reading group h // (H / G); D (H,) or (H, P); dt_bias (H,); initial_state and the
final state (B, H, P, N).

Backends: ``reference`` (``reference.py``, the chunked form in PyTorch, any device), ``cpu`` (``cpu.py``, the
fused C++ selective-scan kernel with A repeated over P and N) and ``mamba_ssm`` (mamba-ssm's Triton kernels on
CUDA). ``naive.naive_ssd_scan`` is the float64 loop every backend is tested against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..selective_scan import ENV_BACKEND
from .reference import ssd_scan_reference


def _reference() -> Callable[..., Any]:
    return ssd_scan_reference


def _cpu() -> Callable[..., Any]:
    from .cpu import ssd_scan_cpu

    return ssd_scan_cpu


def _mamba_ssm() -> Callable[..., Any]:
    from .mamba_ssm import ssd_scan_mamba_ssm

    return ssd_scan_mamba_ssm


# backend name -> its function (imported on first use: mamba-ssm is optional)
_BACKENDS: dict[str, Callable[[], Callable[..., Any]]] = {
    "reference": _reference, "cpu": _cpu, "mamba_ssm": _mamba_ssm,
}
BACKENDS = ("auto", *_BACKENDS)
# The cpu kernel pays one exp and a saved state per (channel, state) and step, the chunked reference's einsums
# grow with N less than linearly: measured on one CPU thread, the kernel wins up to this state size, and above it the
# reference wins with chunks of at most CPU_CHUNK positions (2.5x faster than 256 at N = 128; docs/kernels.md).
CPU_MAX_N = 64
CPU_CHUNK = 64


def _cpu_available() -> bool:
    from ..selective_scan.cpu import available

    return available()  # builds on first use; warns once and returns False when it cannot


def resolve_backend(backend: str, x: Tensor, N: int | None = None) -> str:
    """The backend an ``ssd_scan`` call with ``backend`` on ``x`` (state size ``N``) runs.

    ``auto`` is ``$HYBRIDSEARCH_SCAN_BACKEND`` when that names an SSD backend (``reference``, ``cpu``,
    ``mamba_ssm``); ``triton`` there (a Mamba-1 scan backend SSD has not) leaves SSD on its own choice: ``cpu``
    for CPU tensors when the kernel builds and N <= ``CPU_MAX_N``, else ``reference``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ssd_scan backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env in _BACKENDS:
        return env
    if env not in ("", "auto", "triton"):
        raise ValueError(f"${ENV_BACKEND}={env!r} is not a scan backend; allowed: {', '.join(BACKENDS)}, triton")
    if x.device.type == "cpu" and (N is None or N <= CPU_MAX_N) and _cpu_available():
        return "cpu"
    return "reference"


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, dt_bias: Tensor | None,
           dt_limit: tuple[float, float], initial_state: Tensor | None, chunk_size: int) -> None:
    def bad(msg: str) -> ValueError:
        return ValueError(f"ssd_scan: {msg}")

    if x.dim() != 4:
        raise bad(f"x must be (batch, L, heads, headdim); got {tuple(x.shape)}")
    batch, L, H, P = x.shape
    if B.dim() != 4 or C.shape != B.shape or B.shape[:2] != (batch, L) or B.shape[2] == 0 or H % B.shape[2]:
        raise bad(f"B and C must both be (batch, L, groups, N) = ({batch}, {L}, G, N) with G dividing the {H} "
                  f"heads; got {tuple(B.shape)}, {tuple(C.shape)}")
    N = B.shape[3]
    want = {"dt": (dt, [(batch, L, H)]), "A": (A, [(H,)]), "D": (D, [(H,), (H, P)]), "dt_bias": (dt_bias, [(H,)]),
            "initial_state": (initial_state, [(batch, H, P, N)])}
    for name, (t, shapes) in want.items():
        if t is not None and tuple(t.shape) not in shapes:
            raise bad(f"{name} must be {' or '.join(map(str, shapes))}; got {tuple(t.shape)}")
    lo, hi = dt_limit
    if not lo <= hi or math.isnan(lo) or math.isnan(hi):
        raise bad(f"dt_limit must be (low, high) with low <= high; got {tuple(dt_limit)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise bad(f"chunk_size must be a positive integer; got {chunk_size!r}")


def ssd_scan(
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
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the SSD scan with the chosen backend (shapes: this module's docstring).

    Returns y (B, L, H, P) in x's dtype and, with ``return_final_state``, the fp32 state after the last position
    (B, H, P, N). Every output is differentiable with respect to every input, ``initial_state`` included.
    ``chunk_size`` is the chunk length of the chunked form (mamba_ssm's default 256); the result does not depend
    on it beyond rounding, so ``auto`` caps it at ``CPU_CHUNK`` where it runs the reference on a CPU.
    """
    _check(x, dt, A, B, C, D, dt_bias, tuple(dt_limit), initial_state, chunk_size)
    name = resolve_backend(backend, x, B.shape[3])
    if backend == "auto" and name == "reference" and x.device.type == "cpu":
        chunk_size = min(chunk_size, CPU_CHUNK)  # the fastest chunk on a CPU; the result differs only by rounding
    return _BACKENDS[name]()(
        x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
        initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk_size,
    )


__all__ = ["BACKENDS", "CPU_CHUNK", "CPU_MAX_N", "resolve_backend", "ssd_scan"]
