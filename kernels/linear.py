"""``linear``: ``F.linear`` for the mixers' fp32 CPU projections (the cpu backend), with faster matmuls on AMD CPUs.

torch's CPU ``F.linear`` calls MKL's sgemm, whose fast code paths are for Intel processors. On AMD ones it does two
things slowly, and ``linear`` takes other routes there (on every other CPU it is ``F.linear`` itself):

* **Narrow weights' gradients.** When the weight has few input features K (dt_proj: K = dt_rank, 4 or 8 in the
  proxies), autograd computes dx = g w (M x N by N x K) and dW = g^T x (N x M by M x K): matrices with K columns,
  which MKL's sgemm fills at 6-12 GFLOP/s against 90 for wide ones. The same products transposed, dx = (w^T g^T)^T
  and dW = (x^T g)^T, have K rows and run 4-10x faster (measured on an AMD EPYC with AVX2, one thread: 1.6 and
  3.3 ms against 0.46 and 0.36 ms for the language proxy's dt_proj on 4800 tokens). The results are transposed
  views; nothing downstream needs them contiguous.
* **AVX-512.** MKL takes its AVX2 code path on AMD processors; oneDNN picks its kernels by the CPU's instruction
  set. Measured on an AMD EPYC with AVX-512, one thread: 190-220 against 80-95 GFLOP/s for the language proxy's
  (4800 x 128) x (128 x 512) projection and its input gradient, 1.4x for the weight gradient; mamba-proxy training
  1.26x faster in all (benchmarks/RESULTS.md). Without AVX-512 both libraries run AVX2 code and MKL's was the
  faster (an AMD EPYC with AVX2: vim-proxy and mamba-proxy training 5-9 % faster with ``F.linear``), so oneDNN is
  used only with AVX-512.

On an Intel Xeon with AVX-512 both routes were slower than ``F.linear`` (one thread, forward + backward: vim-proxy's
in_proj 1.14 ms on oneDNN against 0.71, its dt_proj 0.27 ms with the transposed products against 0.13), hence the
vendor test.

``torch.ops.mkldnn._linear_pointwise`` is the op inductor uses for oneDNN; it is private, so it is checked once
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


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...; "" where the system does not say)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("vendor_id")), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()


def on_amd() -> bool:
    """Whether MKL's sgemm runs off its fast paths here (an AMD CPU): only then does ``linear`` leave ``F.linear``."""
    if "amd" not in _state:
        _state["amd"] = cpu_vendor() == "AuthenticAMD"
    return _state["amd"]


def preferred() -> bool:
    """Whether ``linear`` takes oneDNN for fp32 CPU tensors: an AMD CPU with AVX-512, and oneDNN runs here."""
    if "use" not in _state:
        _state["use"] = (on_amd() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
                         and available())
    return _state["use"]


NARROW = 16  # weights with at most this many input features take the transposed products in the backward


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool) -> Tensor:
        x2 = x.detach().reshape(-1, x.shape[-1])
        w = weight.detach()
        if onednn:
            x2 = x2.contiguous()
            y = _matmul(x2, w)
            if bias is not None:
                y.add_(bias.detach())
        else:
            y = F.linear(x2, w, None if bias is None else bias.detach())
        ctx.save_for_backward(x2, weight)
        ctx.x_shape, ctx.has_bias, ctx.onednn = x.shape, bias is not None, onednn
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x2, weight = ctx.saved_tensors
        w = weight.detach()
        g2 = g.reshape(-1, g.shape[-1])
        narrow = w.shape[1] <= NARROW
        if ctx.onednn and not narrow and not g2.is_contiguous():
            g2 = g2.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if narrow:
                dx = torch.mm(w.t(), g2.t()).t()  # (K, N) @ (N, M), transposed: K rows, not K columns
            elif ctx.onednn:
                dx = _matmul(g2, w.t().contiguous())
            else:
                dx = torch.mm(g2, w)
            dx = dx.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if narrow:
                dw = torch.mm(x2.t(), g2).t()  # (K, M) @ (M, N), transposed
            elif ctx.onednn:
                dw = _matmul(g2.t(), x2.t())  # (N, M) @ (M, K): oneDNN reads the transposed views in place
            else:
                dw = torch.mm(g2.t(), x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db, None


def _needs_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; on an AMD CPU, for fp32 CPU tensors, through oneDNN where it is ``preferred``
    and with the transposed backward products when the weight has at most ``NARROW`` input features."""
    if (not on_amd() or x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
            or x.dim() < 2 or x.numel() == 0 or weight.shape[1] == 0):
        return F.linear(x, weight, bias)
    onednn = preferred()
    if not onednn and (weight.shape[1] > NARROW or not _needs_grad(x, weight, bias)):
        return F.linear(x, weight, bias)  # the narrow path changes only the backward
    return _Linear.apply(x, weight, bias, onednn)


__all__ = ["available", "cpu_vendor", "linear", "on_amd", "preferred"]
