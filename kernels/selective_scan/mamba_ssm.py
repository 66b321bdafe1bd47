"""The ``mamba_ssm`` backend: mamba-ssm's CUDA kernel (the GPU extra), for comparison with the Triton backend.

mamba-ssm's ``selective_scan_fn`` has no initial state and no reverse scan: ``reverse`` is served by flipped
copies (what Vim does), an initial state is refused with a clear error.
"""

from __future__ import annotations

from torch import Tensor

from hybridsearch.errors import ConfigError


def _selective_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # not installed, or installed without its CUDA extension
        raise ConfigError(f"selective_scan backend 'mamba_ssm' needs mamba-ssm with CUDA (pip install "
                          f"'hybridsearch[gpu]'): {type(e).__name__}: {e}") from None
    return selective_scan_fn


def selective_scan_mamba_ssm(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False, *,
    initial_state: Tensor | None = None, reverse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    fn = _selective_scan_fn()
    if initial_state is not None:
        raise ConfigError("selective_scan backend 'mamba_ssm' has no initial_state; use backend 'triton' or "
                          "'reference'")
    if reverse:
        u, delta, B, C = u.flip(-1), delta.flip(-1), B.flip(-1), C.flip(-1)
        z = None if z is None else z.flip(-1)
    res = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not reverse:
        return res
    if return_last_state:
        return res[0].flip(-1), res[1]
    return res.flip(-1)
