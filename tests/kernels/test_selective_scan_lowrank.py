"""The low-rank delta (``delta_proj``, Mamba's dt_proj fused into the scan) against the float64 loop.

The ``cpu`` kernel forms delta = dt_proj(dt) per block and position and returns the gradients of dt and of the
weight instead of delta's; every other backend takes the dense product. Whole models (which now always pass the
low-rank form) are compared across backends in tests/models/test_cpu_backend.py.
"""

from __future__ import annotations

import importlib
import os
import shutil

import pytest
import torch

from hybridsearch.kernels import ScanDirection, selective_scan, selective_scan_bidirectional
from hybridsearch.kernels.selective_scan.naive import naive_selective_scan

ref = importlib.import_module("hybridsearch.kernels.selective_scan.reference")

HAS_COMPILER = bool(os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++")))
pytestmark = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the cpu backend cannot be built")

NAMES = ("u", "dt", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "W")


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("HYBRIDSEARCH_SCAN_BACKEND", raising=False)


def inputs(batch, dim, L, N, R, groups, dtype=torch.float32, seed=0, model_layout=True):
    """dt as the mixer passes it: the first R columns of a (batch, L, R + 2N) x_proj output, transposed."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    x_dbl = rnd(batch, L, R + 2 * N, scale=0.7)
    dt = x_dbl[..., :R].transpose(1, 2) if model_layout else x_dbl[..., :R].transpose(1, 2).contiguous()
    bc = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    x = {"u": rnd(batch, dim, L), "dt": dt, "A": -(torch.rand(dim, N, generator=g) * 1.5 + 0.1),
         "B": rnd(*bc), "C": rnd(*bc), "D": rnd(dim, dt=torch.float32), "z": rnd(batch, dim, L),
         "delta_bias": rnd(dim, scale=0.1, dt=torch.float32), "initial_state": rnd(batch, dim, N, dt=torch.float32),
         "W": rnd(dim, R, scale=R**-0.5)}
    return {k: v.detach().requires_grad_() for k, v in x.items()}


def scan(x, reverse, backend=None, fn=selective_scan):
    kw = {} if backend is None else {"backend": backend}
    return fn(x["u"], x["dt"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, True,
              initial_state=x["initial_state"], reverse=reverse, delta_proj=x["W"], **kw)


def naive(x, reverse):
    return naive_selective_scan(x["u"], ref.dense_delta(x["dt"], x["W"]), x["A"], x["B"], x["C"], x["D"], x["z"],
                                x["delta_bias"], True, True, initial_state=x["initial_state"], reverse=reverse)


def grads(x, out, last, seed=1):
    g = torch.Generator().manual_seed(seed)
    gout, glast = torch.randn(out.shape, generator=g), torch.randn(last.shape, generator=g)
    loss = (out * gout.to(out.dtype)).sum() + (last * glast.to(last.dtype)).sum()
    return torch.autograd.grad(loss, [x[k] for k in NAMES])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(("batch", "dim", "L", "N", "R", "groups"), [
    (2, 40, 17, 8, 4, 0),     # vim-proxy's kind: a partial last block of channels
    (2, 300, 33, 16, 8, 0),   # several parts per group: d(dt) summed over the parts' partials
    (3, 64, 70, 5, 3, 2),     # groups, an N with no compiled path, several checkpoint chunks
    (1, 24, 1, 4, 1, 0),      # L 1, rank 1
], ids=["vim", "parts", "groups", "L1"])
def test_matches_float64(batch, dim, L, N, R, groups, reverse):
    x = inputs(batch, dim, L, N, R, groups)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    out, last = scan(x, reverse, "cpu")
    want_out, want_last = naive(x64, reverse)

    def close(a, b, what):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{what}: {m}")

    close(out, want_out, "out")
    close(last, want_last, "last_state")
    for k, got, want in zip(NAMES, grads(x, out, last), grads(x64, want_out, want_last)):
        assert got.shape == x[k].shape and got.dtype == x[k].dtype, k
        close(got, want, f"grad {k}")


def test_half_inputs_stay_in_their_dtype():
    x = inputs(2, 40, 13, 8, 4, 0, dtype=torch.bfloat16)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    out, last = scan(x, False, "cpu")
    want_out, want_last = naive(x64, False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), want_out, rtol=2e-2, atol=2e-2)
    for k, got, want in zip(NAMES, grads(x, out, last), grads(x64, want_out, want_last)):
        assert got.dtype == x[k].dtype, k
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * max(1.0, want.abs().max().item()))


def test_other_backends_take_the_dense_product():
    x = inputs(2, 40, 9, 8, 4, 0)
    out, last = scan(x, True, "reference")
    plain = selective_scan(x["u"], ref.dense_delta(x["dt"], x["W"]), x["A"], x["B"], x["C"], x["D"], x["z"],
                           x["delta_bias"], True, True, initial_state=x["initial_state"], reverse=True,
                           backend="reference")
    assert torch.equal(out, plain[0]) and torch.equal(last, plain[1])
    assert ref.dense_delta(x["dt"], None) is x["dt"]


def test_no_grad_path_and_gradients_reach_dt_and_the_weight_only_where_asked():
    x = inputs(2, 40, 17, 8, 4, 0)
    with torch.no_grad():
        out = scan(x, False, "cpu")[0]
    torch.testing.assert_close(out, scan(x, False, "reference")[0], rtol=1e-5, atol=1e-5)
    out, _ = scan(x, False, "cpu")
    gdt, gw = torch.autograd.grad(out.sum(), [x["dt"], x["W"]])
    want = torch.autograd.grad(scan(x, False, "reference")[0].sum(), [x["dt"], x["W"]])
    torch.testing.assert_close(gdt, want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, want[1], rtol=1e-4, atol=1e-5)
    x["W"].requires_grad_(False)  # the weight frozen: only dt's gradient
    (gdt_only,) = torch.autograd.grad(scan(x, False, "cpu")[0].sum(), [x["dt"]])
    assert torch.equal(gdt_only, gdt)


def test_bitwise_deterministic_for_any_thread_count():
    x = inputs(3, 300, 40, 16, 8, 0)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            out, last = scan(x, True, "cpu")
            results.append((out, last, *grads(x, out, last)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bidirectional_equals_the_average_of_two_scans():
    xf, xb = inputs(3, 136, 17, 8, 4, 0, seed=1), inputs(3, 136, 17, 8, 4, 0, seed=2)
    xb["z"] = xf["z"]
    dirs = [ScanDirection(x["u"], x["dt"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], x["initial_state"],
                          x["W"]) for x in (xf, xb)]
    fused = selective_scan_bidirectional(*dirs, xf["z"], True, backend="cpu")
    plain = (scan(xf, False, "cpu")[0] + scan(xb, True, "cpu")[0]) / 2
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    leaves = [x[k] for x in (xf, xb) for k in NAMES if not (x is xb and k == "z")]
    gout = torch.randn(fused.shape, generator=torch.Generator().manual_seed(3))
    for a, b in zip(torch.autograd.grad(fused, leaves, gout), torch.autograd.grad(plain, leaves, gout)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_shapes_name_the_argument():
    x = inputs(2, 40, 9, 8, 4, 0)
    with pytest.raises(ValueError, match="delta_proj must be"):
        selective_scan(x["u"], x["dt"], x["A"], x["B"], x["C"], delta_proj=x["W"][:30], backend="cpu")
    with pytest.raises(ValueError, match="delta_proj must be"):  # rank 0: nothing for the kernel to read
        selective_scan(x["u"], x["dt"][:, :0], x["A"], x["B"], x["C"], delta_proj=x["W"][:, :0], backend="cpu")
    with pytest.raises(ValueError, match="delta must be"):
        selective_scan(x["u"], x["dt"][:, :3], x["A"], x["B"], x["C"], delta_proj=x["W"], backend="cpu")
    f = ScanDirection(x["u"], x["dt"], x["A"], x["B"], x["C"], delta_proj=x["W"])
    b = ScanDirection(x["u"], ref.dense_delta(x["dt"], x["W"]), x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="both be low-rank"):
        selective_scan_bidirectional(f, b, x["z"], True, backend="cpu")
