"""``kernels.rms_norm``: the cpu backend's fused kernel against the PyTorch expression and float64."""

from __future__ import annotations

import shutil

import pytest
import torch

from hybridsearch.kernels import rms_norm
from hybridsearch.kernels.rms_norm import rms_norm_reference
from hybridsearch.models.layers import RMSNorm

needs_kernel = pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                                  reason="no C++ compiler: the cpu backend cannot be built")


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_()
    w = (torch.randn(shape[-1], generator=g) + 1).requires_grad_()
    gout = torch.randn(shape, generator=g).to(dtype)
    return x, w, gout


def _run(x, w, gout, backend):
    y = rms_norm(x, w, 1e-5, backend=backend)
    want = [t for t in (x, w) if t.requires_grad]
    return (y, *torch.autograd.grad(y, want, gout)) if want else (y,)


# d 37: not a whole number of vectors; 130 x 128: three row tasks whose weight-gradient partials are summed
@needs_kernel
@pytest.mark.parametrize("shape", [(64, 17, 64), (3, 5, 37), (130, 128), (1, 8)], ids=str)
def test_matches_float64(shape):
    x, w, gout = _inputs(shape, torch.float32)
    got = _run(x, w, gout, "cpu")
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = _run(x64, w64, gout.double(), "reference")
    for a, b, what in zip(got, want, ("out", "dx", "dw")):
        assert a.dtype == torch.float32 and a.shape == b.shape, what
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()),
                                   msg=lambda m, what=what: f"{what}: {m}")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_other_dtypes_keep_theirs(dtype):
    """Half inputs are read and written in place (fp32 arithmetic); other dtypes go through fp32."""
    x, w, gout = _inputs((4, 9, 40), dtype)
    got, want = _run(x, w, gout, "cpu"), _run(x, w, gout, "reference")
    tol = 1e-5 if dtype == torch.float64 else 2e-2
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


@needs_kernel
def test_views_and_gradient_subsets():
    x, _, gout = _inputs((6, 32, 5), torch.float32)
    w = _inputs((32,), torch.float32)[1]
    xt = x.transpose(1, 2)  # (6, 5, 32) with d strided: read through a contiguous copy
    for need_x, need_w in ((True, False), (False, True), (False, False)):
        xi, wi = xt.detach().requires_grad_(need_x), w.detach().requires_grad_(need_w)
        got, want = _run(xi, wi, gout.transpose(1, 2), "cpu"), _run(xi, wi, gout.transpose(1, 2), "reference")
        assert len(got) == len(want) == 1 + need_x + need_w
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_bitwise_deterministic_for_any_thread_count():
    x, w, gout = _inputs((300, 64), torch.float32)
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_run(x, w, gout, "cpu"))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_other_backends_run_the_expression():
    x, w, _ = _inputs((2, 3, 16), torch.float32)
    assert torch.equal(rms_norm(x, w, 1e-5, backend="reference"), rms_norm_reference(x, w, 1e-5))
    norm = RMSNorm(16)
    norm.backend = "reference"
    assert torch.equal(norm(x), rms_norm_reference(x, norm.weight, norm.eps))


def test_a_weight_of_the_wrong_size_is_refused():
    x, w, _ = _inputs((2, 3, 16), torch.float32)
    with pytest.raises(ValueError, match=r"weight \(16,\)"):
        rms_norm(x, w[:8])
