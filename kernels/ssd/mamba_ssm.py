"""The ``mamba_ssm`` backend of the SSD scan: mamba-ssm's fused Triton SSD kernels (``mamba_chunk_scan_combined``,
the GPU extra), for comparison on CUDA. Not verified here: it needs a GPU with mamba-ssm installed."""

from __future__ import annotations

import math

from torch import Tensor

from hybridsearch.errors import ConfigError


def _chunk_scan_combined():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # not installed, or installed without Triton / CUDA
        raise ConfigError(f"ssd_scan backend 'mamba_ssm' needs mamba-ssm on a CUDA machine (pip install "
                          f"'hybridsearch[gpu]'): {type(e).__name__}: {e}") from None
    return mamba_chunk_scan_combined


def ssd_scan_mamba_ssm(
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
    fn = _chunk_scan_combined()
    res = fn(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state,
             dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=return_final_state)
    if return_final_state:
        return res[0], res[1].float()
    return res


__all__ = ["ssd_scan_mamba_ssm"]
