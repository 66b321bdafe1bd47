"""RMSNorm of the Mamba and Vim blocks: ``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, in fp32.

``rms_norm`` resolves its backend as the scan's: ``cpu`` runs the fused C++ kernel of ``selective_scan/cpu.cpp``
(one pass over each row forward, one backward, a weight gradient summed in a fixed order), every other backend
the PyTorch expression ``rms_norm_reference``, which the kernel is tested against. Why a kernel: that expression
is six elementwise passes forward and more backward over the residual stream, memory-bound on a CPU (measured:
up to 6 % of a vim-proxy training step, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .selective_scan import resolve_backend
from .selective_scan.cpu import NormArgs, ptr, readable, run_kernel, targ


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype)


def _rows(t: Tensor, d: int) -> Tensor:
    """(rows, d) with unit stride along d, in a dtype the kernel reads."""
    t = readable(t.reshape(-1, d))
    return t if t.stride(-1) == 1 else t.contiguous()


def _args(x: Tensor, w: Tensor, rstd: Tensor, eps: float) -> NormArgs:
    a = NormArgs(x.shape[0], x.shape[1], torch.get_num_threads())
    a.x, a.w, a.rstd, a.eps = targ(x), ptr(w), ptr(rstd), float(eps)
    return a


def _forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """out (x's shape and dtype) and, for the backward, x as rows, the fp32 weight and 1 / rms per row."""
    xr, w = _rows(x, x.shape[-1]), weight.detach().float().contiguous()
    out, rstd = torch.empty(xr.shape, dtype=xr.dtype), torch.empty(xr.shape[0])
    a = _args(xr, w, rstd, eps)
    a.out = targ(out)
    run_kernel("hs_norm_forward", a)
    return out.view(x.shape).to(x.dtype), xr, w, rstd


class _RMSNormCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        out, xr, w, rstd = _forward(x, weight, eps)
        ctx.save_for_backward(xr, w, rstd)
        ctx.meta = (x.shape, x.dtype, weight.dtype, eps)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        xr, w, rstd = ctx.saved_tensors
        shape, x_dtype, w_dtype, eps = ctx.meta
        want_x, want_w = ctx.needs_input_grad[:2]
        dx = torch.empty(xr.shape, dtype=xr.dtype) if want_x else None
        dw = torch.empty(w.shape) if want_w else None
        dr = _rows(dout, xr.shape[1])  # held here: the kernel reads it through a bare pointer
        a = _args(xr, w, rstd, eps)
        a.dout, a.dx, a.dw = targ(dr), targ(dx), ptr(dw)
        run_kernel("hs_norm_backward", a)
        return (None if dx is None else dx.view(shape).to(x_dtype), None if dw is None else dw.to(w_dtype), None)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5, backend: str = "auto") -> Tensor:
    """RMSNorm of x (..., d) with weight (d,); returns x's dtype. ``backend``: as ``selective_scan``'s."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm needs weight ({x.shape[-1]},) for x {tuple(x.shape)}; got {tuple(weight.shape)}")
    if resolve_backend(backend, x) == "cpu" and x.numel():
        if x.device.type != "cpu" or weight.device.type != "cpu":
            raise ValueError("the cpu RMSNorm needs CPU tensors")
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _RMSNormCpu.apply(x, weight, float(eps))
        return _forward(x, weight, float(eps))[0]
    return rms_norm_reference(x, weight, eps)


__all__ = ["rms_norm", "rms_norm_reference"]
