"""The Mamba mixer's depthwise causal conv1d with its SiLU, the step before the selective scan.

    out[b, d, t] = silu(bias[d] + sum_k weight[d, k] * x[b, d, t - K + 1 + k])      (x = 0 before position 0)

``reverse=True`` is the same conv of the flipped sequence, flipped back (taps read x[t + K - 1 - k]): the
backward scan of Vim without a flipped copy. ``causal_conv1d`` (in ``__init__``) resolves the backend as the
scan's: ``cpu`` runs the fused C++ kernel of ``cpu.cpp`` (one pass forward, one pass backward, vectorised over
channels, deterministic weight gradients), everything else ``F.conv1d``. The same C++ library serves both, so one build.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cpu import ConvArgs, empty_like_layout, grad_like, ptr, readable, run_kernel, targ


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


def _params(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    return weight.detach().float().contiguous(), None if bias is None else bias.detach().float().contiguous()


def _forward_args(xr: Tensor, w: Tensor, b: Tensor | None, silu: bool, reverse: bool) -> tuple[ConvArgs, Tensor]:
    out = empty_like_layout(xr)
    a = _args(xr, w, b, silu, reverse)
    a.out = targ(out)
    return a, out


def _forward(xr: Tensor, w: Tensor, b: Tensor | None, silu: bool, reverse: bool) -> Tensor:
    a, out = _forward_args(xr, w, b, silu, reverse)
    run_kernel("hs_conv_forward", a)
    return out


def _backward_args(xr: Tensor, w: Tensor, b: Tensor | None, silu: bool, reverse: bool, dout: Tensor,
                   needs: tuple[bool, bool, bool], dx: Tensor | None = None) -> tuple[ConvArgs, tuple]:
    """The kernel arguments and (dx, dw, db) for the output's gradient ``dout``; given ``dx``, x's gradient is
    added onto it in place."""
    dout = readable(dout)
    accumulate = dx is not None
    if dx is None and needs[0]:
        dx = grad_like(xr)
    dw = torch.empty(w.shape) if needs[1] else None
    db = torch.empty(w.shape[0]) if b is not None and needs[2] else None
    a = _args(xr, w, b, silu, reverse)
    a.dout, a.dx, a.dw, a.dbias, a.accumulate = targ(dout), targ(dx), ptr(dw), ptr(db), accumulate
    a.keep = dout  # alive until the kernel has run
    return a, (dx, dw, db)


def _backward(xr: Tensor, w: Tensor, b: Tensor | None, silu: bool, reverse: bool, dout: Tensor,
              needs: tuple[bool, bool, bool], dx: Tensor | None = None) -> tuple[Tensor | None, ...]:
    """(dx, dw, db) for the output's gradient ``dout``; given ``dx``, x's gradient is added onto it in place."""
    a, grads = _backward_args(xr, w, b, silu, reverse, dout, needs, dx)
    run_kernel("hs_conv_backward", a)
    return grads


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    return None if t is None or dtype is None else t.to(dtype)


class _CausalConv1dCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, reverse):
        xr, (w, b) = readable(x), _params(weight, bias)
        out = _forward(xr, w, b, silu, reverse)
        ctx.save_for_backward(xr, w, b)
        ctx.flags = (silu, reverse, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.set_materialize_grads(False)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        xr, w, b = ctx.saved_tensors
        silu, reverse, x_dtype, w_dtype, b_dtype = ctx.flags
        if dout is None:
            return None, None, None, None, None
        dx, dw, db = _backward(xr, w, b, silu, reverse, dout, ctx.needs_input_grad[:3])
        return _cast(dx, x_dtype), _cast(dw, w_dtype), _cast(db, b_dtype), None, None


class _CausalConv1dPairCpu(torch.autograd.Function):
    """Vim's two directions' convs of one x, (conv, reverse conv): one node, one kernel call each way (each task
    reads its x once for both directions; the backward sums their x gradients in the kernel)."""

    @staticmethod
    def forward(ctx, x, weight_f, bias_f, weight_b, bias_b, silu):
        xr = readable(x)
        (wf, bf), (wb, bb) = _params(weight_f, bias_f), _params(weight_b, bias_b)
        (af, out_f), (ab, out_b) = _forward_args(xr, wf, bf, silu, False), _forward_args(xr, wb, bb, silu, True)
        run_kernel("hs_conv_forward", af, ab)
        ctx.save_for_backward(xr, wf, bf, wb, bb)
        ctx.flags = (silu, x.dtype, *(None if t is None else t.dtype for t in (weight_f, bias_f, weight_b, bias_b)))
        ctx.set_materialize_grads(False)
        return out_f.to(x.dtype), out_b.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout_f, dout_b):
        xr, wf, bf, wb, bb = ctx.saved_tensors
        silu, x_dtype, *dtypes = ctx.flags
        needs = ctx.needs_input_grad
        if dout_f is not None and dout_b is not None:
            af, (dx, dwf, dbf) = _backward_args(xr, wf, bf, silu, False, dout_f, (needs[0], needs[1], needs[2]))
            # b adds onto a's dx: what a library without the pair entry point does when it runs them in turn
            ab, (_, dwb, dbb) = _backward_args(xr, wb, bb, silu, True, dout_b, (needs[0], needs[3], needs[4]), dx)
            run_kernel("hs_conv_backward", af, ab)
            grads = [dwf, dbf, dwb, dbb]
        else:
            dx, grads = None, []
            for (w, b), reverse, dout, nw, nb in (((wf, bf), False, dout_f, needs[1], needs[2]),
                                                   ((wb, bb), True, dout_b, needs[3], needs[4])):
                if dout is None:
                    grads += [None, None]
                    continue
                dx, dw, db = _backward(xr, w, b, silu, reverse, dout, (needs[0], nw, nb), dx=dx)
                grads += [dw, db]
        return (_cast(dx, x_dtype), *(_cast(g, dt) for g, dt in zip(grads, dtypes)), None)


def causal_conv1d_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                      reverse: bool = False) -> Tensor:
    """The fused C++ kernel (CPU tensors); weight (dim, K). Returns x's dtype, in x's layout (channels innermost
    when x is a channels-innermost view)."""
    if any(t is not None and t.device.type != "cpu" for t in (x, weight, bias)):
        raise ValueError("the cpu causal conv1d needs CPU tensors")
    return _CausalConv1dCpu.apply(x, weight, bias, bool(silu), bool(reverse))


def causal_conv1d_bidirectional_cpu(x: Tensor, weight_f: Tensor, bias_f: Tensor | None, weight_b: Tensor,
                                    bias_b: Tensor | None, silu: bool = True) -> tuple[Tensor, Tensor]:
    """(the conv of x, the reverse conv of x) on the fused kernel, as one autograd node; weights (dim, K)."""
    if any(t is not None and t.device.type != "cpu" for t in (x, weight_f, bias_f, weight_b, bias_b)):
        raise ValueError("the cpu causal conv1d needs CPU tensors")
    return _CausalConv1dPairCpu.apply(x, weight_f, bias_f, weight_b, bias_b, bool(silu))


__all__ = ["causal_conv1d_bidirectional_cpu", "causal_conv1d_cpu", "causal_conv1d_reference"]
