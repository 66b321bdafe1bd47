"""kernels.linear (oneDNN on fp32 CPU tensors) against F.linear: outputs and every gradient."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from hybridsearch.kernels import linear

# `hybridsearch.kernels.linear` as an attribute is the function (re-exported), so fetch the module by name.
lin = importlib.import_module("hybridsearch.kernels.linear")


@pytest.fixture(params=["onednn", "torch"])
def path(request, monkeypatch):
    """Both matmul paths whatever the CPU (``linear`` prefers oneDNN only on AMD CPUs with AVX-512, and takes the
    narrow products only on AMD ones)."""
    if request.param == "onednn" and not lin.available():
        pytest.skip("oneDNN's linear does not run here")
    monkeypatch.setitem(lin._state, "amd", True)
    monkeypatch.setitem(lin._state, "use", request.param == "onednn")
    return request.param


def test_preferred_only_on_amd_with_avx512():
    assert lin.on_amd() == (lin.cpu_vendor() == "AuthenticAMD")
    assert lin.preferred() == (lin.on_amd() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
                               and lin.available())


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", None])
def test_cpu_vendor_read_from_cpuinfo(tmp_path, vendor):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + (f"vendor_id\t: {vendor}\n" if vendor else "") + "flags\t\t: fpu sse\n")
    assert lin.cpu_vendor(str(info)) == (vendor or "")
    assert lin.cpu_vendor(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("K", [4, 64], ids=["narrow", "wide"])
def test_other_vendors_take_f_linear(monkeypatch, K):
    """Off AMD (MKL on its own fast paths) every projection is ``F.linear`` itself, gradients included."""
    monkeypatch.setitem(lin._state, "amd", False)
    monkeypatch.setitem(lin._state, "use", True)  # even were oneDNN preferred
    x, w = torch.randn(5, K, requires_grad=True), torch.randn(3, K, requires_grad=True)
    out = linear(x, w)
    assert type(out.grad_fn).__name__ != "_LinearBackward"
    assert torch.equal(out, F.linear(x, w))


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
# K = 5: a narrow weight (the transposed backward products); K = 24: a wide one
@pytest.mark.parametrize("shape", [(7, 5), (3, 11, 5), (2, 3, 4, 5), (3, 11, 24), (2, 3, 4, 24)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_matches_f_linear(path, shape, bias, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    if layout == "transposed" and x.dim() == 3:  # a channels-innermost view, as the mixers pass x_proj's input
        x = torch.randn(shape[0], shape[2], shape[1], generator=g).transpose(1, 2)
    x.requires_grad_()
    w = torch.randn(6, shape[-1], generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True) if bias else None
    out, want = linear(x, w, b), F.linear(x, w, b)
    # oneDNN, or a narrow weight, go through the module's own autograd function; the rest is F.linear itself
    assert (type(out.grad_fn).__name__ == "_LinearBackward") == (path == "onednn" or shape[-1] <= lin.NARROW)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    gout = torch.randn(want.shape, generator=g)
    inputs = [t for t in (x, w, b) if t is not None]
    for a, e in zip(torch.autograd.grad((out * gout).sum(), inputs), torch.autograd.grad((want * gout).sum(), inputs)):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [128, 4], ids=["wide", "narrow"])
def test_frozen_weight_and_deterministic(path, K):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 17, K, generator=g, requires_grad=True)
    w = torch.randn(20, K, generator=g)  # frozen: no weight gradient is computed
    runs = [torch.autograd.grad(linear(x, w).square().sum(), [x])[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[0], torch.autograd.grad(F.linear(x, w).square().sum(), [x])[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_take_f_linear(dtype):
    x, w = torch.randn(3, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype)
    assert torch.equal(linear(x, w), F.linear(x, w))


def test_narrow_without_gradients_is_f_linear(monkeypatch):
    monkeypatch.setitem(lin._state, "amd", True)
    monkeypatch.setitem(lin._state, "use", False)
    x, w = torch.randn(3, 4), torch.randn(5, 4)  # narrow, but nothing asks for a gradient
    assert torch.equal(linear(x, w), F.linear(x, w))
    assert type(linear(x, w.requires_grad_()).grad_fn).__name__ == "_LinearBackward"


def test_unavailable_onednn_falls_back(monkeypatch):
    monkeypatch.setattr(lin, "_state", {"ok": False})  # preferred() then says no whatever the CPU
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    assert torch.equal(linear(x, w), F.linear(x, w))
