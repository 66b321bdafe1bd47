"""The Mamba mixer's depthwise causal conv1d with its SiLU, the step before the selective scan.

    out[b, d, t] = silu(bias[d] + sum_k weight[d, k] * x[b, d, t - K + 1 + k])      (x = 0 before position 0)

``reverse=True`` is the same conv of the flipped sequence, flipped back (taps read x[t + K - 1 - k]): the
backward scan of Vim without a flipped copy. ``causal_conv1d`` (in ``__init__``) resolves the backend as the
scan's: ``cpu`` runs the fused C++ kernel of ``cpu.cpp`` (one pass forward, one pass backward, vectorised over
channels, deterministic weight gradients), everything else ``F.conv1d``. The same C++ library serves both, so one build.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cpu import ConvArgs, empty_like_layout, library, ptr, targ


def causal_conv1d_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                            reverse: bool = False) -> Tensor:
    """``F.conv1d`` with left padding K - 1 (flipped in and out for ``reverse``); weight (dim, K)."""
    E, K = weight.shape
    if reverse:
        x = x.flip(-1)
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=K - 1, groups=E)[..., : x.shape[-1]]
    if silu:
        out = F.silu(out)
    return out.flip(-1) if reverse else out


def _args(x: Tensor, w: Tensor, b: Tensor | None, silu: bool, reverse: bool) -> ConvArgs:
    batch, dim, L = x.shape
    a = ConvArgs(batch, dim, L, w.shape[1], torch.get_num_threads(), silu, reverse)
    a.x, a.w, a.bias = targ(x), ptr(w), ptr(b)
    return a


class _CausalConv1dCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, reverse):
        xr = x.detach() if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.detach().float()
        w = weight.detach().float().contiguous()
        b = None if bias is None else bias.detach().float().contiguous()
        out = empty_like_layout(xr)
        a = _args(xr, w, b, silu, reverse)
        a.out = targ(out)
        if library().hs_conv_forward(ctypes.byref(a)):
            raise RuntimeError("the cpu causal conv1d failed (out of memory or threads)")
        ctx.save_for_backward(xr, w, b)
        ctx.flags = (silu, reverse, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.set_materialize_grads(False)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        xr, w, b = ctx.saved_tensors
        silu, reverse, x_dtype, w_dtype, b_dtype = ctx.flags
        if dout is None:
            return None, None, None, None, None
        needs = ctx.needs_input_grad
        if dout.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dout = dout.float()
        dx = empty_like_layout(xr) if needs[0] else None
        dw = torch.empty(w.shape) if needs[1] else None
        db = torch.empty(w.shape[0]) if b is not None and needs[2] else None
        a = _args(xr, w, b, silu, reverse)
        a.dout, a.dx, a.dw, a.dbias = targ(dout), targ(dx), ptr(dw), ptr(db)
        if library().hs_conv_backward(ctypes.byref(a)):
            raise RuntimeError("the cpu causal conv1d's backward failed (out of memory or threads)")
        return (None if dx is None else dx.to(x_dtype), None if dw is None else dw.to(w_dtype),
                None if db is None else db.to(b_dtype), None, None)


def causal_conv1d_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                      reverse: bool = False) -> Tensor:
    """The fused C++ kernel (CPU tensors); weight (dim, K). Returns x's dtype, in x's layout (channels innermost
    when x is a channels-innermost view)."""
    if any(t is not None and t.device.type != "cpu" for t in (x, weight, bias)):
        raise ValueError("the cpu causal conv1d needs CPU tensors")
    return _CausalConv1dCpu.apply(x, weight, bias, bool(silu), bool(reverse))


__all__ = ["causal_conv1d_cpu", "causal_conv1d_reference"]
