"""``linear``: ``F.linear`` whose fp32 CPU matmuls go through oneDNN (the mixers' projections on the cpu backend).

Why: torch's CPU ``F.linear`` calls MKL's sgemm, which takes its AVX2 code path on AMD processors; oneDNN picks
its kernels by the CPU's instruction set. Measured on the CI machine kind (AMD EPYC, AVX-512, one thread):
190-220 against 80-95 GFLOP/s for the language proxy's (4800 x 128) x (128 x 512) projection and its input
gradient, 1.4x for the weight gradient; mamba-proxy training 1.26x faster in all (benchmarks/RESULTS.md).

``torch.ops.mkldnn._linear_pointwise`` is the op inductor uses for this; it is private, so it is checked once
against ``F.linear`` on a small input and every failure falls back to ``F.linear``. Anything but fp32 CPU
tensors, or a torch without the op, takes ``F.linear`` directly.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_state: dict[str, bool] = {}
_lock = threading.Lock()


def _matmul(a: Tensor, w: Tensor) -> Tensor:
    """a (M, K) @ w (N, K)^T through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")


def available() -> bool:
    """Whether oneDNN's linear runs here and agrees with ``F.linear`` (checked once per process)."""
    if "ok" not in _state:
        with _lock:
            if "ok" not in _state:
                try:
                    g = torch.Generator().manual_seed(0)
                    a, w = torch.randn(5, 7, generator=g), torch.randn(3, 7, generator=g)
                    ok = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                        _matmul(a, w), F.linear(a, w), rtol=1e-5, atol=1e-5)
                    ok = ok and torch.allclose(_matmul(a.t().contiguous().t(), w), F.linear(a, w), rtol=1e-5,
                                               atol=1e-5)
                except Exception:
                    ok = False
                _state["ok"] = ok
    return _state["ok"]


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.detach().reshape(-1, x.shape[-1]).contiguous()
        y = _matmul(x2, weight.detach())
        if bias is not None:
            y.add_(bias.detach())
        ctx.save_for_backward(x2, weight)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x2, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        g2 = g2 if g2.is_contiguous() else g2.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _matmul(g2, weight.detach().t().contiguous()).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            dw = _matmul(g2.t(), x2.t())  # (N, M) @ (M, K): oneDNN reads the transposed views in place
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; fp32 CPU tensors through oneDNN when it is available."""
    if (x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
            or x.dim() < 2 or x.numel() == 0 or weight.shape[1] == 0 or not available()):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


__all__ = ["available", "linear"]
